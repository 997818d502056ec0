"""Percentile-bootstrap intervals over samples, and what an interval says about a budget.

The bootstrap resamples whole samples (inputs) with replacement, so every figure computed from one
resample sees the same inputs: the resampling is paired across reference and candidate, across
channels and across outputs. The interval is the percentile interval (Efron & Tibshirani, An
Introduction to the Bootstrap, 1993, ch. 13): the (1 - level)/2 and (1 + level)/2 quantiles of
the statistic over the resamples. It needs no assumption about the statistic's distribution,
which for a ratio of error sums is skewed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95

Verdict = Literal["within", "over", "unresolved"]


@dataclass(frozen=True)
class Interval:
    """A two-sided interval [low, high] at confidence `level` (0.95: a 95% interval). Bounds may
    be infinite (an SQNR of a perfect channel); never NaN. Raises ValueError when low > high."""

    low: float
    high: float
    level: float = LEVEL

    def __post_init__(self) -> None:
        if not self.low <= self.high:  # also catches NaN
            raise ValueError(f"interval needs low <= high, got [{self.low}, {self.high}]")
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"interval level must be in (0, 1), got {self.level}")

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict; an infinite bound becomes null."""
        return {"low": _finite(self.low), "high": _finite(self.high), "level": self.level}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def resample_indices(n: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """Indices of `resamples` bootstrap resamples of n samples: int64 [resamples, n], drawn with
    replacement from a seeded numpy Generator (the same seed gives the same resamples)."""
    if n < 1:
        raise ValueError(f"the bootstrap needs at least one sample, got {n}")
    if resamples < 1:
        raise ValueError(f"the bootstrap needs at least one resample, got {resamples}")
    indices: np.ndarray = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    return indices


def resample_counts(n: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """How often each sample appears in each resample: float64 [resamples, n], rows summing to n.
    The same resamples as `resample_indices(n, resamples, seed)`, so a statistic of sums gives
    the same replicates either way."""
    indices = resample_indices(n, resamples, seed)
    # One bincount over (row, sample) pairs instead of a Python loop over rows.
    flat = (indices + n * np.arange(resamples)[:, None]).ravel()
    counts = np.bincount(flat, minlength=resamples * n).reshape(resamples, n)
    return counts.astype(np.float64)


def percentile_interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, ...]:
    """The percentile interval of bootstrap replicates [resamples, ...] along axis 0: (low, high),
    each of shape [...]. The bounds are order statistics (the lower one rounded down, the upper
    one rounded up), not interpolated: slightly conservative, and exact for infinite replicates
    (an interpolation between inf and inf is NaN). Raises ValueError for a level outside (0, 1)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"interval level must be in (0, 1), got {level}")
    tail = (1.0 - level) / 2
    low = np.quantile(replicates, tail, axis=0, method="lower")
    high = np.quantile(replicates, 1.0 - tail, axis=0, method="higher")
    return np.asarray(low), np.asarray(high)


def bootstrap(
    statistic: Callable[..., float],
    *per_sample: np.ndarray,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> Interval:
    """Paired percentile bootstrap of any statistic. `per_sample` arrays share their first axis
    (one row per sample); each resample picks the same rows from all of them, and
    `statistic(*rows)` returns a float. One Python call per resample: for a statistic that is a
    function of per-sample sums, `bootstrap_sums` gives the same interval in one matrix product.
    Raises ValueError when the arrays' sample counts differ or there are none."""
    n = _samples(per_sample)
    replicates = np.array(
        [statistic(*(a[rows] for a in per_sample)) for rows in resample_indices(n, resamples, seed)]
    )
    low, high = percentile_interval(replicates, level)
    return Interval(float(low), float(high), level)


def bootstrap_sums(
    statistic: Callable[..., np.ndarray],
    *per_sample: np.ndarray,
    counts: np.ndarray,
    level: float = LEVEL,
) -> tuple[np.ndarray, ...]:
    """Vectorised percentile bootstrap of a function of sums over samples. Each array in
    `per_sample` is [n, ...] (a sufficient statistic per sample, e.g. a squared-error sum per
    channel); `counts` [resamples, n] comes from `resample_counts`. The resampled totals are one
    product counts @ array, [resamples, ...]; `statistic(*totals)` maps them to replicates
    [resamples, ...]. Returns (low, high) over the trailing shape [...]. Memory: a few arrays of
    resamples x (trailing size) float64 (1000 x 300 channels: 2.4 MB each). Raises ValueError
    when a sample count differs from counts' second axis."""
    n = _samples(per_sample)
    if counts.ndim != 2 or counts.shape[1] != n:
        raise ValueError(f"counts must be [resamples, {n}], got {list(counts.shape)}")
    totals = [np.tensordot(counts, a.astype(np.float64, copy=False), axes=1) for a in per_sample]
    return percentile_interval(statistic(*totals), level)


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator elementwise, 0 where the denominator is 0 (no positions, no
    flips: a resample that saw nothing to compare reports no change)."""
    out = np.zeros(np.broadcast_shapes(numerator.shape, denominator.shape))
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _samples(per_sample: tuple[np.ndarray, ...]) -> int:
    if not per_sample:
        raise ValueError("the bootstrap needs at least one per-sample array")
    lengths = {len(a) for a in per_sample}
    if len(lengths) != 1:
        raise ValueError(f"per-sample arrays differ in sample count: {sorted(lengths)}")
    return lengths.pop()


@dataclass(frozen=True)
class Resolution:
    """What a drop's interval says about a budget. `verdict`: "within" (the whole interval is at
    or under the budget), "over" (the whole interval is above it), "unresolved" (it straddles).
    `resolvable`: the interval's half-width is at most the budget; when not, the budget is finer
    than these samples can resolve, and `samples_needed` (when the sample count was given)
    estimates how many would."""

    verdict: Verdict
    budget: float
    half_width: float
    resolvable: bool
    samples_needed: int | None = None

    def describe(self) -> str:
        text = (
            f"{self.verdict} budget {self.budget:.3g} (interval half-width {self.half_width:.3g})"
        )
        if self.resolvable:
            return text
        more = f"; about {self.samples_needed} samples would" if self.samples_needed else ""
        return f"{text}: the budget is finer than the data can resolve{more}"


def resolution(interval: Interval, budget: float, samples: int | None = None) -> Resolution:
    """Judge a drop interval against a budget (same units: a drop in [0, 1]). `samples`: how many
    samples the interval came from, to estimate how many a resolvable budget needs. Raises
    ValueError for a budget <= 0."""
    if not budget > 0:
        raise ValueError(f"budget must be > 0, got {budget}")
    verdict: Verdict = (
        "within" if interval.high <= budget else "over" if interval.low > budget else "unresolved"
    )
    half_width = interval.half_width
    resolvable = half_width <= budget
    needed = None if samples is None or resolvable else samples_needed(samples, half_width, budget)
    return Resolution(verdict, budget, half_width, resolvable, needed)


def samples_needed(n: int, half_width: float, budget: float) -> int:
    """Samples for an interval's half-width to shrink to `budget`: ceil(n * (half_width /
    budget)^2), at least 1. Why: the standard error of a mean over independent samples, and so
    the width of its interval, falls as 1/sqrt(n) (central limit theorem; a ratio of sums
    behaves so too, by the delta method), so going from half-width h to b needs (h / b)^2 times
    the samples. An estimate: it assumes the spread between samples stays as it was. Raises
    ValueError for n < 1, half_width < 0 or budget <= 0."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not half_width >= 0:
        raise ValueError(f"half_width must be >= 0, got {half_width}")
    if not budget > 0:
        raise ValueError(f"budget must be > 0, got {budget}")
    return max(1, math.ceil(n * (half_width / budget) ** 2))
