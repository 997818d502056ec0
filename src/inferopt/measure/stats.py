"""Summary statistics of repeated timings, with a confidence interval for the median.

The median (not the mean) is the headline: run times on a shared machine have a long right tail
(preemption, page faults), which moves the mean but hardly the median.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from inferopt.report.schema import LatencyStats, StopReason

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal
EXACT_LIMIT = 1000  # sample counts up to this use the exact binomial ranks


def median_ci(samples: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """A distribution-free 95% confidence interval of the median: the order statistics x(r)
    and x(n+1-r), with r the largest rank such that P(Binomial(n, 1/2) < r) <= 2.5% (Conover,
    Practical Nonparametric Statistics, 3rd ed., section 3.2).

    Written here because numpy has none and scipy is not a dependency. It assumes nothing
    about the shape of the distribution, which for latencies is skewed and often multi-modal.
    With fewer than 6 samples no rank qualifies and the interval is [min, max].
    """
    ordered = np.sort(np.asarray(samples, dtype=np.float64))
    n = len(ordered)
    if n == 0:
        raise ValueError("median_ci needs at least one sample")
    rank = _lower_rank(n)
    return float(ordered[rank - 1]), float(ordered[n - rank])


def _lower_rank(n: int) -> int:
    if n > EXACT_LIMIT:  # the normal approximation is exact to a rank or two here
        return max(1, math.floor(n / 2 - Z95 * math.sqrt(n) / 2))
    # Exact: accumulate Binomial(n, 1/2) probabilities as integers over 2**n.
    threshold = 0.025 * 2**n
    term, cdf, k = 1, 0, 0
    while True:
        cdf += term  # 2**n * P(B <= k)
        if cdf > threshold:
            return max(k, 1)
        term = term * (n - k) // (k + 1)
        k += 1


def ci_halfwidth_pct(samples: Sequence[float] | np.ndarray) -> float:
    """Half the width of the median's 95% CI, in percent of the median."""
    low, high = median_ci(samples)
    median = float(np.median(samples))
    return 100.0 * (high - low) / 2 / median if median > 0 else math.inf


def latency_stats(
    seconds: Sequence[float],
    *,
    warmup_runs: int,
    stop_reason: StopReason,
    measured_s: float,
    target_ci_pct: float | None = None,
    keep_samples: bool = True,
) -> LatencyStats:
    """LatencyStats (milliseconds) from per-run wall times in seconds. Stable: the median's
    CI is within `target_ci_pct` (judged per record: interleaved runs stop together when the
    widest interval is narrow enough, or at the time cap)."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    low, high = median_ci(ms)
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    halfwidth_pct = 100.0 * (high - low) / 2 / p50 if p50 > 0 else 0.0
    return LatencyStats(
        runs=len(ms),
        warmup_runs=warmup_runs,
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        mean_ms=float(ms.mean()),
        std_ms=float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
        min_ms=float(ms.min()),
        max_ms=float(ms.max()),
        ci95_low_ms=low,
        ci95_high_ms=high,
        ci95_halfwidth_pct=halfwidth_pct,
        stable=target_ci_pct is not None and halfwidth_pct <= target_ci_pct,
        stop_reason=stop_reason,
        measured_s=measured_s,
        # Rounded to 0.1 us: finer digits are clock noise and only bloat the JSON.
        samples_ms=tuple(round(float(v), 4) for v in ms) if keep_samples else (),
    )
