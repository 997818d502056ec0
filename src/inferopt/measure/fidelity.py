"""How close a candidate model's outputs are to the task's truth or to a reference model's.

Whole-output figures (top1, mean_cosine, nearest_neighbour_agreement) and per-query retrieval
figures (retrieval_scores: nDCG@10, recall@10, Spearman); what an output's name and values say
about how it is decided on (decision_kind) and its NaN/Inf (nonfinite_share); and the
per-channel result types that `channels.compare_outputs` fills in, with the bootstrap intervals
of `interval`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from inferopt.measure.interval import LEVEL, Interval

Basis = Literal["spread", "magnitude", "zero", "nonfinite"]
DecisionKind = Literal["argmax", "sign"]


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose highest logit is the label."""
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    unit: np.ndarray = flat / np.maximum(norms, 1e-12)
    return unit


def mean_cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean over rows of the cosine similarity between reference and candidate embeddings."""
    return float(np.mean(np.sum(_unit_rows(reference) * _unit_rows(candidate), axis=1)))


def nearest_neighbour_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Fraction of rows whose nearest other row (by cosine) is the same under both models:
    what a retrieval user sees change, which a mean cosine can hide."""
    if reference.shape[0] < 2:
        raise ValueError("nearest-neighbour agreement needs at least 2 rows")

    def neighbours(x: np.ndarray) -> np.ndarray:
        unit = _unit_rows(x)
        sims = unit @ unit.T
        np.fill_diagonal(sims, -np.inf)
        nearest: np.ndarray = np.argmax(sims, axis=1)
        return nearest

    return float(np.mean(neighbours(reference) == neighbours(candidate)))


# Retrieval: how embeddings are used. Each text is a query against the other n - 1 (the corpus
# is the same texts); the reference's ranking is the truth, the candidate's is judged by it.

RETRIEVAL_K = 10
ROW_CHUNK = 512  # queries ranked at once for Spearman: bounds memory to a few [512, n] arrays


def retrieval_scores(
    reference: np.ndarray, candidate: np.ndarray, k: int = RETRIEVAL_K
) -> dict[str, np.ndarray]:
    """Per-query retrieval figures of `candidate` embeddings against `reference` ones, both
    [n, d] floats for the same n texts (n >= 2). Every text is a query against the other n - 1,
    ranked by cosine. Relevance comes from the reference: its top-k neighbours of a query are
    relevant, with graded gain k + 1 - rank (k for its nearest, 1 for its k-th), 0 for the rest.
    Returns float64 arrays [n], one value per query, each in [0, 1] (Spearman in [-1, 1]):
      "ndcg@K": the candidate's top-k ranking's discounted cumulative gain (gain / log2(rank + 1))
        over the reference's own, the ideal (nDCG: Jarvelin & Kekalainen, "Cumulated gain-based
        evaluation of IR techniques", ACM TOIS 20(4), 2002);
      "recall@K": the share of the reference's top-k in the candidate's top-k;
      "spearman": Spearman's rank correlation between the query's reference and candidate
        similarities to all n - 1 others (ordinal ranks: ties, rare between floats, are broken
        by position, not averaged).
    K is k as asked (keys "ndcg@10", "recall@10" by default), capped at n - 1. The reference
    against itself gives exactly 1.0 everywhere. A query whose candidate row is not finite
    scores 0 on all three, and such a row is never retrieved (its similarities count as
    -inf). Memory: two [n, n] float64 arrays (n = 4096: 134 MB each) and [512, n] blocks.
    Raises ValueError for n < 2, differing shapes, or k < 1."""
    if reference.shape != candidate.shape or reference.ndim != 2:
        raise ValueError(
            f"retrieval needs two [n, d] arrays of one shape, got "
            f"{list(reference.shape)} and {list(candidate.shape)}"
        )
    n, named = reference.shape[0], k
    if n < 2 or k < 1:
        raise ValueError(f"retrieval needs n >= 2 and k >= 1, got n={n}, k={k}")
    k = min(k, n - 1)
    finite = np.isfinite(candidate).all(axis=1)
    ref_sims, got_sims = _similarities(reference), _similarities(candidate)
    ref_top, got_top = _top_k(ref_sims, k), _top_k(got_sims, k)
    grades = np.arange(k, 0, -1, dtype=np.float64)  # the reference's rank 1..k: gain k..1
    # Each candidate pick's gain: the grade of the reference's pick it equals, else 0 ([n, k, k]).
    got_gain = (got_top[:, :, None] == ref_top[:, None, :]) @ grades
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    # The ideal the same way as the candidate's, so that the reference scores exactly 1.0.
    ideal = np.sum(np.broadcast_to(grades, got_gain.shape) * discount, axis=1)
    ndcg = np.sum(got_gain * discount, axis=1) / ideal
    recall = (got_gain > 0).sum(axis=1) / k
    spearman = np.concatenate([
        _spearman_rows(_off_diagonal(ref_sims, rows), _off_diagonal(got_sims, rows))
        for rows in range(0, n, ROW_CHUNK)
    ])  # fmt: skip
    zero = np.zeros(n)
    return {
        f"ndcg@{named}": np.where(finite, ndcg, zero),
        f"recall@{named}": np.where(finite, recall, zero),
        "spearman": np.where(finite, spearman, zero),
    }


def _similarities(x: np.ndarray) -> np.ndarray:
    """Cosine of every pair of rows, float64 [n, n]; non-finite entries (from a non-finite row)
    become -inf, so that they rank last; the diagonal is -inf (a text is not its own answer)."""
    unit = _unit_rows(np.where(np.isfinite(x), x, np.nan))
    sims: np.ndarray = unit @ unit.T
    sims[~np.isfinite(sims)] = -np.inf
    np.fill_diagonal(sims, -np.inf)
    return sims


def _top_k(sims: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's k largest, largest first: int64 [n, k]. argpartition finds them in
    O(n) per row; only those k are sorted (stably, so equal inputs give equal outputs)."""
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
    top: np.ndarray = np.take_along_axis(part, order, axis=1)
    return top


def _off_diagonal(sims: np.ndarray, start: int) -> np.ndarray:
    """Rows start .. start + ROW_CHUNK of `sims` without their diagonal entry: [rows, n - 1]."""
    block = sims[start : start + ROW_CHUNK]
    rows, n = block.shape
    keep = np.arange(n)[None, :] != np.arange(start, start + rows)[:, None]
    rest: np.ndarray = block[keep].reshape(rows, n - 1)
    return rest


def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho per row of two [n, m] arrays from ordinal ranks: 1 - 6 sum(d^2) /
    (m (m^2 - 1)), exact for ranks without ties (identical rows give exactly 1.0); 1.0 for m=1."""
    m = a.shape[1]
    if m < 2:
        return np.ones(a.shape[0])
    d = _ranks(a) - _ranks(b)
    rho: np.ndarray = 1.0 - 6.0 * np.sum(d * d, axis=1) / (m * (m * m - 1.0))
    return rho


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(x.shape[1])[None, :], axis=1)
    return ranks.astype(np.float64)


# Non-finite values and decisions: what a comparison (channels.compare_outputs) needs to know
# about one output before comparing it.

PROBABILITY_ATOL = 1e-3  # float16/float32 softmax rows sum to 1 within this
DECISION_WORDS = frozenset(
    {
        *("logit", "logits", "score", "scores", "prob", "probs", "probabilities"),
        *("cls", "class", "classes", "conf", "confidence", "obj", "objectness"),
    }
)


def nonfinite_share(array: np.ndarray) -> float:
    """Share of entries of `array` (any shape, any dtype) that are NaN or +-Inf, in [0, 1]; 0.0
    for an empty array or a dtype that cannot hold them (integers, bool)."""
    values = np.asarray(array)
    if values.size == 0 or not np.issubdtype(values.dtype, np.inexact):
        return 0.0
    return float(np.mean(~np.isfinite(values)))


def decision_kind(
    name: str, per_sample: Sequence[np.ndarray], channel_axis: int | None = None
) -> DecisionKind | None:
    """Propose how an output is decided on, from its name and values; None when neither says.
    `per_sample`: the output's arrays, one per sample with a batch axis of 1; `channel_axis`:
    the axis an argmax would run over (default: the last, for arrays of rank >= 2).
    By name: a word (split at non-letters and camelCase) among DECISION_WORDS (logits, scores,
    probs, cls, conf, objectness, ...) gives "argmax" when that axis has >= 2 entries, else
    "sign" (a single logit), but None for a single value in [0, 1] everywhere: a sigmoid
    probability, whose threshold is 0.5, not the sign. By value: rows that are probability
    vectors (non-negative, summing to 1 within PROBABILITY_ATOL) along >= 2 entries: "argmax"."""
    arrays = [np.asarray(a) for a in per_sample]
    if not arrays:
        return None
    axis = channel_axis if channel_axis is not None else (-1 if arrays[0].ndim >= 2 else None)
    entries = 1 if axis is None else int(arrays[0].shape[axis])
    if DECISION_WORDS & set(_words(name)):
        if entries >= 2:
            return "argmax"
        return None if all(_within_unit(a) for a in arrays) else "sign"
    if axis is not None and entries >= 2 and all(_probability_rows(a, axis) for a in arrays):
        return "argmax"
    return None


def propose_decisions(
    reference: Sequence[Mapping[str, np.ndarray]],
    channel_axes: Mapping[str, int | None] | None = None,
) -> dict[str, DecisionKind]:
    """`decision_kind` for every output of the reference samples, keeping those it proposes:
    a starting `decisions` argument for `compare_outputs`."""
    axes = channel_axes or {}
    proposed: dict[str, DecisionKind] = {}
    for name in reference[0] if reference else ():
        kind = decision_kind(name, [sample[name] for sample in reference], axes.get(name))
        if kind is not None:
            proposed[name] = kind
    return proposed


def _words(name: str) -> list[str]:
    return re.findall(r"[a-z]+", re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name).lower())


def _within_unit(array: np.ndarray) -> bool:
    return bool(array.size) and bool(np.all((array >= 0) & (array <= 1)))


def _probability_rows(array: np.ndarray, axis: int) -> bool:
    if not np.issubdtype(array.dtype, np.floating) or array.size == 0:
        return False
    if not np.all(np.isfinite(array)) or np.any(array < -PROBABILITY_ATOL):
        return False
    return bool(np.all(np.abs(array.sum(axis=axis, dtype=np.float64) - 1) <= PROBABILITY_ATOL))


# Per-channel figures. `channels.compare_outputs` computes them: it imports this module, so the
# result types live here and the computation there.


@dataclass(frozen=True)
class ChannelFigure:
    """One channel of one output, candidate against reference (see channels.compare_outputs).
    `drop`: min(NMSE / 2, 1) in [0, 1], with its bootstrap `interval`; `sqnr_db`: -10 log10(NMSE)
    in dB (+inf when exact, -inf when there is error on an all-zero reference), None for a
    "nonfinite" channel; `basis`: what the error is measured against. `channel`: the index along
    the output's channel axis, None when the whole output is one channel."""

    output: str
    channel: int | None
    drop: float
    interval: Interval
    sqnr_db: float | None
    sqnr_interval: Interval | None
    basis: Basis

    def describe(self) -> str:
        where = f"output {self.output!r}" + (
            "" if self.channel is None else f" channel {self.channel}"
        )
        span = f"[{self.interval.low:.3g}, {self.interval.high:.3g}]"
        if self.basis == "nonfinite":
            return f"{where}: NaN/Inf, drop 1"
        basis = "" if self.basis == "spread" else f" (basis: {self.basis})"
        return (
            f"{where}: SQNR {self.sqnr_db:.1f} dB, drop {self.drop:.3g} {span} "
            f"({self.interval.level:.0%} interval){basis}"
        )


@dataclass(frozen=True)
class DecisionFigure:
    """How often a decision changes: `flip_rate` in [0, 1] (the share of positions, for "argmax",
    or of one channel's elements, for "sign", whose decision differs) with its `interval`.
    `channel`: the worst channel for "sign" over a multi-channel output, else None.
    `positions`: how many decisions were compared (for "sign": per channel)."""

    output: str
    kind: DecisionKind
    flip_rate: float
    interval: Interval
    channel: int | None
    positions: int

    @property
    def drop(self) -> float:
        return self.flip_rate

    def describe(self) -> str:
        verb = "argmax changes" if self.kind == "argmax" else "sign flips"
        where = "" if self.channel is None else f" in channel {self.channel}"
        span = f"[{self.interval.low:.1%}, {self.interval.high:.1%}]"
        return f"{self.output!r} {verb} {self.flip_rate:.1%} {span}{where}"


Figure = ChannelFigure | DecisionFigure


def _rank(figure: Figure) -> tuple[float, float]:
    """Worse is a larger drop, ties broken by the larger upper bound (the less certain of two)."""
    return figure.drop, figure.interval.high


def _worst(figures: Sequence[Figure]) -> Figure:
    return max(figures, key=_rank)


@dataclass(frozen=True)
class OutputFigure:
    """One output: a figure per channel, the decision flip rate where asked for, and the share
    of NaN/Inf among the reference's and the candidate's values (each in [0, 1]).
    `channel_axis`: the axis (of the array with its batch axis) or None for one channel."""

    name: str
    channel_axis: int | None
    channels: tuple[ChannelFigure, ...]
    decision: DecisionFigure | None
    nonfinite_reference: float
    nonfinite_candidate: float

    @property
    def worst_channel(self) -> ChannelFigure:
        return max(self.channels, key=_rank)

    @property
    def worst(self) -> Figure:
        """The worst channel, or the decision when its flip rate is larger."""
        figures: list[Figure] = [self.worst_channel]
        return _worst(figures + ([self.decision] if self.decision else []))


@dataclass(frozen=True)
class OutputsComparison:
    """Every output of a candidate against the reference's over `samples` samples, with
    intervals at `level`. `worst`: the worst channel anywhere, or a decision flip rate if that
    is larger; `drop` and `drop_interval` are the worst's."""

    outputs: tuple[OutputFigure, ...]
    samples: int
    level: float = LEVEL

    @property
    def worst(self) -> Figure:
        return _worst([o.worst for o in self.outputs])

    @property
    def drop(self) -> float:
        return self.worst.drop

    @property
    def drop_interval(self) -> Interval:
        return self.worst.interval

    def describe(self) -> str:
        """One line, e.g. "worst channel: output 'det' channel 4: SQNR 0.1 dB, drop 0.49 [0.47,
        0.51] (95% interval); decisions: 'det' sign flips 32.0% [30.1%, 34.2%] in channel 4"."""
        channel = max((o.worst_channel for o in self.outputs), key=_rank)
        parts = [f"worst channel: {channel.describe()}"]
        if decisions := [o.decision.describe() for o in self.outputs if o.decision]:
            parts.append("decisions: " + ", ".join(decisions))
        nonfinite = [
            f"{o.name!r} reference {o.nonfinite_reference:.2%}, "
            f"candidate {o.nonfinite_candidate:.2%}"
            for o in self.outputs
            if o.nonfinite_reference or o.nonfinite_candidate
        ]
        if nonfinite:
            parts.append("NaN/Inf: " + ", ".join(nonfinite))
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (json.dumps with allow_nan=False accepts it): infinite SQNRs and
        bounds become null. Adds "drop", "drop_interval" and "worst" (with "figure": "channel"
        or "decision")."""
        worst = self.worst
        data = {
            **asdict(self),
            "drop": self.drop,
            "drop_interval": asdict(self.drop_interval),
            "worst": {
                **asdict(worst),
                "figure": "channel" if isinstance(worst, ChannelFigure) else "decision",
            },
        }
        sane: dict[str, Any] = _json_safe(data)
        return sane


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
