"""How close a candidate model's outputs are to the task's truth or to a reference model's.

Whole-output figures (top1, mean_cosine, nearest_neighbour_agreement); what an output's name and
values say about how it is decided on (decision_kind) and its NaN/Inf (nonfinite_share); and the
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
