"""Per-output, per-channel fidelity of a candidate's outputs against a reference's, with intervals.

One cosine over a whole output cannot see a channel far smaller than its neighbours: a detection
head's box coordinates (~300) and objectness logits (~0.5) share a tensor, static INT8 zeroes the
logits, and the whole-tensor cosine stays 0.999999. Here every channel is judged on its own
scale, decisions (argmax, sign) are counted where they flip, NaN/Inf is never agreement, and
every figure carries a bootstrap interval over samples (`interval.py`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from inferopt.measure.fidelity import (
    Basis,
    ChannelFigure,
    DecisionFigure,
    DecisionKind,
    OutputFigure,
    OutputsComparison,
)
from inferopt.measure.interval import (
    LEVEL,
    RESAMPLES,
    Interval,
    bootstrap_sums,
    ratio,
    resample_counts,
)

# A channel whose squared deviations from its mean are at most this share of its squares has no
# spread to speak of: float32 rounding alone leaves ~1e-14, so 1e-12 means "constant but for
# rounding" (a std about 1e-6 of the channel's RMS).
DEGENERATE = 1e-12
ZERO_ATOL = 1e-12  # a candidate channel "is zero" within this, where the reference is exactly 0
CHUNK = 1 << 22  # resamples x channels per bootstrap block: 32 MB per float64 array


@dataclass
class _Sums:
    """Per-sample sufficient statistics of one output: [n] or [n, channels] float64. Values are
    taken as deviations from `shift` (a first look at each channel's mean), so that the spread
    s2 - s1^2/m does not cancel away for a channel like box coordinates ~300 +- 0.01."""

    elements: np.ndarray  # [n] elements per channel in each sample
    s1: np.ndarray  # sum(r - shift)
    s2: np.ndarray  # sum((r - shift)^2)
    e2: np.ndarray  # sum((g - r)^2)
    candidate_nonzero: np.ndarray  # 1 where any |g| > ZERO_ATOL
    shift: np.ndarray  # [channels]
    reference_nonzero: np.ndarray  # [channels] bool: any r != 0
    nonfinite: np.ndarray  # [channels] bool: any NaN/Inf in reference or candidate
    nonfinite_reference: int  # counts over the whole output
    nonfinite_candidate: int
    size: int


def compare_outputs(
    reference: Sequence[Mapping[str, np.ndarray]],
    candidate: Sequence[Mapping[str, np.ndarray]],
    *,
    channel_axes: Mapping[str, int | None] | None = None,
    decisions: Mapping[str, DecisionKind] | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> OutputsComparison:
    """Compare a candidate's outputs with a reference's over the same samples, channel by channel.

    `reference[i]` and `candidate[i]` map every output name to sample i's array, with a leading
    batch axis of size 1; the two arrays of one sample must match in shape, and arrays of one
    output may differ between samples along other axes (sequence length), never in channels.
    Channels: the axis `channel_axes[name]` (of the array with its batch axis; None: the whole
    output is one channel); by default the last axis where a sample is at least rank 2, else
    one channel (a vector per sample, e.g. logits or an embedding, is one signal on one scale).

    For channel c over all its elements in all samples, NMSE_c = sum((g - r)^2) / sum((r -
    mean_c(r))^2): the error on the channel's own scale. SQNR_c = -10 log10(NMSE_c) dB. The
    drop is min(NMSE_c / 2, 1), because for a zero-mean signal r and an error e uncorrelated
    with it (quantisation noise roughly is: Widrow & Kollar, Quantization Noise, 2008), cosine =
    1 / sqrt(1 + |e|^2/|r|^2) ~= 1 - |e|^2 / (2 |r|^2): 1 - cosine ~= NMSE / 2, so one budget
    means the same for a whole output's cosine and for one channel. A channel zeroed by the
    candidate reads 0.5 (SQNR 0 dB); a sign-inverted one 1.

    Bases (`ChannelFigure.basis`): "spread" as above; "magnitude" where the reference channel
    has (almost) no spread (squared deviations <= DEGENERATE x its squares): the error over
    sum(r^2) instead; "zero" where the reference channel is exactly 0: drop 0 if the candidate is
    within ZERO_ATOL of 0 everywhere, else 1; "nonfinite" where either holds a NaN or Inf: drop 1,
    never agreement (the output figure records both shares).

    `decisions[name]`: "argmax" counts positions whose argmax over the channel axis (the last
    axis for a one-channel output) changes; "sign" counts elements whose `x > 0` (a logit's
    decision, sigmoid(x) > 0.5) changes, per channel, reporting the worst. A position holding
    NaN/Inf in either model counts as changed. The flip rate is a drop in [0, 1].

    Intervals: paired percentile bootstrap over samples at `level`, `resamples` resamples from
    `seed` (interval.py), vectorised over channels. Raises ValueError for no samples, mismatched
    sample counts, names, shapes or channel counts, a missing batch axis, an axis or a name in
    `channel_axes` / `decisions` that does not exist, or an argmax over fewer than 2 entries.
    """
    names = _output_names(reference, candidate)
    channel_axes = dict(channel_axes or {})
    decisions = dict(decisions or {})
    for given, what in ((channel_axes, "channel_axes"), (decisions, "decisions")):
        if unknown := sorted(set(given) - set(names)):
            raise ValueError(f"{what} names outputs that do not exist: {unknown}")
    counts = resample_counts(len(reference), resamples, seed)
    figures = []
    for name in names:
        pairs = _pairs(name, reference, candidate)
        axis = channel_axis(name, pairs[0][0].ndim, channel_axes)
        sums = _channel_sums(name, pairs, axis)
        kind = decisions.get(name)
        decision = None if kind is None else _decision(name, kind, pairs, axis, counts, level)
        figures.append(
            OutputFigure(
                name=name,
                channel_axis=axis,
                channels=_channel_figures(name, sums, axis, counts, level),
                decision=decision,
                nonfinite_reference=sums.nonfinite_reference / max(sums.size, 1),
                nonfinite_candidate=sums.nonfinite_candidate / max(sums.size, 1),
            )
        )
    return OutputsComparison(tuple(figures), len(reference), level)


def _output_names(
    reference: Sequence[Mapping[str, np.ndarray]], candidate: Sequence[Mapping[str, np.ndarray]]
) -> list[str]:
    if not reference:
        raise ValueError("compare_outputs needs at least one sample")
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference samples but {len(candidate)} candidate ones")
    names = list(reference[0])
    for i, (ref, cand) in enumerate(zip(reference, candidate, strict=True)):
        if set(ref) != set(names) or set(cand) != set(names):
            raise ValueError(
                f"sample {i}: outputs {sorted(ref)} (reference) and {sorted(cand)} (candidate), "
                f"expected {sorted(names)}"
            )
    return names


def _pairs(
    name: str,
    reference: Sequence[Mapping[str, np.ndarray]],
    candidate: Sequence[Mapping[str, np.ndarray]],
) -> list[tuple[np.ndarray, np.ndarray]]:
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    for i, (ref, cand) in enumerate(zip(reference, candidate, strict=True)):
        r, g = np.asarray(ref[name]), np.asarray(cand[name])
        if r.shape != g.shape:
            raise ValueError(f"output {name!r} sample {i}: shapes {r.shape} and {g.shape} differ")
        if r.ndim == 0 or r.shape[0] != 1:
            raise ValueError(f"output {name!r} sample {i}: needs a batch axis of 1, got {r.shape}")
        if pairs and r.ndim != pairs[0][0].ndim:
            raise ValueError(f"output {name!r} sample {i}: rank {r.ndim}, not {pairs[0][0].ndim}")
        pairs.append((r, g))
    return pairs


def channel_axis(name: str, ndim: int, given: Mapping[str, int | None]) -> int | None:
    if name not in given:
        return ndim - 1 if ndim >= 3 else None
    axis = given[name]
    if axis is None:
        return None
    if not -ndim <= axis < ndim or axis % ndim == 0:
        raise ValueError(f"output {name!r}: channel axis {axis} is not a non-batch axis of {ndim}")
    return axis % ndim


def _rows(array: np.ndarray, axis: int | None) -> np.ndarray:
    """One sample's output as float64 [elements, channels]."""
    if axis is None:
        return array.reshape(-1, 1).astype(np.float64)
    channels = array.shape[axis]
    return np.moveaxis(array, axis, -1).reshape(-1, channels).astype(np.float64)


def _channel_sums(name: str, pairs: list[tuple[np.ndarray, np.ndarray]], axis: int | None) -> _Sums:
    channels = _rows(pairs[0][0], axis).shape[1]
    if channels == 0:
        raise ValueError(f"output {name!r}: its channel axis is empty")
    shift: np.ndarray | None = None
    columns: dict[str, list[np.ndarray]] = {k: [] for k in ("m", "s1", "s2", "e2", "nz")}
    ref_nonzero = np.zeros(channels, bool)
    nonfinite = np.zeros(channels, bool)
    bad_ref = bad_cand = size = 0
    for i, (r_array, g_array) in enumerate(pairs):
        r, g = _rows(r_array, axis), _rows(g_array, axis)
        if r.shape[1] != channels:
            raise ValueError(f"output {name!r} sample {i}: {r.shape[1]} channels, not {channels}")
        r_bad, g_bad = ~np.isfinite(r), ~np.isfinite(g)
        bad_ref, bad_cand, size = bad_ref + r_bad.sum(), bad_cand + g_bad.sum(), size + r.size
        bad = r_bad | g_bad
        nonfinite |= bad.any(axis=0)
        # Zeroed so the sums stay finite; those channels are judged apart ("nonfinite").
        r, g = np.where(bad, 0.0, r), np.where(bad, 0.0, g)
        if shift is None and r.shape[0]:
            shift = r.mean(axis=0)
        d = r - (shift if shift is not None else 0.0)
        ref_nonzero |= (r != 0).any(axis=0)
        columns["m"].append(np.asarray(r.shape[0], np.float64))
        columns["s1"].append(d.sum(axis=0))
        columns["s2"].append(np.square(d).sum(axis=0))
        columns["e2"].append(np.square(g - r).sum(axis=0))
        columns["nz"].append((np.abs(g) > ZERO_ATOL).any(axis=0).astype(np.float64))
    stacked = {k: np.stack(v) for k, v in columns.items()}
    return _Sums(
        elements=stacked["m"],
        s1=stacked["s1"],
        s2=stacked["s2"],
        e2=stacked["e2"],
        candidate_nonzero=stacked["nz"],
        shift=shift if shift is not None else np.zeros(channels),
        reference_nonzero=ref_nonzero,
        nonfinite=nonfinite,
        nonfinite_reference=int(bad_ref),
        nonfinite_candidate=int(bad_cand),
        size=size,
    )


def _moments(
    m: np.ndarray, s1: np.ndarray, s2: np.ndarray, shift: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(spread, squares) per channel from totals: sum((r - mean(r))^2) and sum(r^2). m [B, 1]
    (or a scalar), s1 and s2 [B, channels] (deviations from `shift`, [channels])."""
    spread = s2 - s1 * ratio(s1, m)
    squares = s2 + 2 * shift * s1 + m * shift**2
    return spread, squares


def _bases(sums: _Sums) -> np.ndarray:
    """Each channel's basis (object array of str), fixed from all samples: a resample keeps its
    channel's basis, so that the interval is of one quantity."""
    spread, squares = _moments(
        np.asarray(sums.elements.sum()), sums.s1.sum(axis=0), sums.s2.sum(axis=0), sums.shift
    )
    basis = np.where(spread > DEGENERATE * squares, "spread", "magnitude").astype(object)
    basis[~sums.reference_nonzero] = "zero"
    basis[sums.nonfinite] = "nonfinite"
    return basis


def _nmse(
    m: np.ndarray,
    s1: np.ndarray,
    s2: np.ndarray,
    e2: np.ndarray,
    nonzero: np.ndarray,
    *,
    shift: np.ndarray,
    basis: np.ndarray,
) -> np.ndarray:
    """NMSE per channel from totals: m [B], the others [B, channels]; shift and basis
    [channels]. inf where there is error but nothing to measure it against (a resample whose
    channel has no spread; an all-zero reference with a non-zero candidate)."""
    spread, squares = _moments(m[:, None], s1, s2, shift)
    denominator = np.where(basis == "spread", spread, squares)
    nmse = np.full(e2.shape, np.inf)
    np.divide(e2, denominator, out=nmse, where=denominator > 0)
    nmse[e2 == 0] = 0.0
    return np.where(basis == "zero", np.where(nonzero > 0, np.inf, 0.0), nmse)


def _channel_figures(
    name: str, sums: _Sums, axis: int | None, counts: np.ndarray, level: float
) -> tuple[ChannelFigure, ...]:
    basis = _bases(sums)
    per_sample = (sums.elements, sums.s1, sums.s2, sums.e2, sums.candidate_nonzero)
    ones = np.ones((1, len(sums.elements)))
    point = _nmse(
        *(np.tensordot(ones, a, axes=1) for a in per_sample), shift=sums.shift, basis=basis
    )
    lows, highs = [], []
    block = max(1, CHUNK // len(counts))
    for start in range(0, len(basis), block):
        cols = slice(start, start + block)
        stat = partial(_nmse, shift=sums.shift[cols], basis=basis[cols])
        low, high = bootstrap_sums(
            stat, sums.elements, *(a[:, cols] for a in per_sample[1:]), counts=counts, level=level
        )
        lows.append(low)
        highs.append(high)
    low_all, high_all = np.concatenate(lows), np.concatenate(highs)
    return tuple(
        _channel_figure(name, None if axis is None else c, basis[c], point[0, c], low, high, level)
        for c, (low, high) in enumerate(zip(low_all, high_all, strict=True))
    )


def _channel_figure(
    name: str, channel: int | None, basis: Basis, nmse: float, low: float, high: float, level: float
) -> ChannelFigure:
    if basis == "nonfinite":
        return ChannelFigure(name, channel, 1.0, Interval(1.0, 1.0, level), None, None, basis)
    return ChannelFigure(
        output=name,
        channel=channel,
        drop=_drop(nmse),
        interval=Interval(_drop(low), _drop(high), level),
        sqnr_db=_sqnr(nmse),
        sqnr_interval=Interval(_sqnr(high), _sqnr(low), level),
        basis=basis,
    )


def _drop(nmse: float) -> float:
    return min(float(nmse) / 2, 1.0)


def _sqnr(nmse: float) -> float:
    if nmse == 0:
        return math.inf
    return -math.inf if math.isinf(nmse) else -10 * math.log10(nmse)


def _decision(
    name: str,
    kind: DecisionKind,
    pairs: list[tuple[np.ndarray, np.ndarray]],
    axis: int | None,
    counts: np.ndarray,
    level: float,
) -> DecisionFigure:
    if kind == "argmax":
        return _argmax_flips(
            name, pairs, pairs[0][0].ndim - 1 if axis is None else axis, counts, level
        )
    if kind == "sign":
        return _sign_flips(name, pairs, axis, counts, level)
    raise ValueError(f"output {name!r}: decision kind {kind!r} is not 'argmax' or 'sign'")


def _argmax_flips(
    name: str,
    pairs: list[tuple[np.ndarray, np.ndarray]],
    axis: int,
    counts: np.ndarray,
    level: float,
) -> DecisionFigure:
    flips, positions = [], []
    for r, g in pairs:
        if r.ndim < 2 or r.shape[axis] < 2:
            raise ValueError(f"output {name!r}: argmax over {r.shape} has fewer than 2 entries")
        bad = ~(np.isfinite(r) & np.isfinite(g))
        changed = (np.argmax(r, axis=axis) != np.argmax(g, axis=axis)) | bad.any(axis=axis)
        flips.append(float(changed.sum()))
        positions.append(float(changed.size))
    f, p = np.array(flips), np.array(positions)
    low, high = bootstrap_sums(ratio, f, p, counts=counts, level=level)
    rate = float(ratio(np.asarray(f.sum()), np.asarray(p.sum())))
    return DecisionFigure(
        name, "argmax", rate, Interval(float(low), float(high), level), None, int(p.sum())
    )


def _sign_flips(
    name: str,
    pairs: list[tuple[np.ndarray, np.ndarray]],
    axis: int | None,
    counts: np.ndarray,
    level: float,
) -> DecisionFigure:
    flips, elements = [], []
    for r_array, g_array in pairs:
        r, g = _rows(r_array, axis), _rows(g_array, axis)
        bad = ~(np.isfinite(r) & np.isfinite(g))
        flips.append((((r > 0) != (g > 0)) | bad).sum(axis=0).astype(np.float64))
        elements.append(float(r.shape[0]))
    f, m = np.stack(flips), np.array(elements)
    low, high = bootstrap_sums(
        lambda tf, tm: ratio(tf, tm[:, None]), f, m, counts=counts, level=level
    )
    rates = ratio(f.sum(axis=0), np.asarray(m.sum()))
    worst = max(range(len(rates)), key=lambda c: (rates[c], high[c]))
    return DecisionFigure(
        output=name,
        kind="sign",
        flip_rate=float(rates[worst]),
        interval=Interval(float(low[worst]), float(high[worst]), level),
        channel=None if axis is None else worst,
        positions=int(m.sum()),
    )
