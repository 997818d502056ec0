"""The median's confidence interval: known ranks, and coverage on simulated latencies."""

from __future__ import annotations

import numpy as np
import pytest

from inferopt.measure.stats import ci_halfwidth_pct, latency_stats, median_ci


def test_ranks_for_100_samples_are_40_and_61() -> None:
    # Tabulated (Conover): for n = 100 the 95% interval is [x(40), x(61)], 1-based.
    low, high = median_ci(np.arange(1, 101, dtype=float))
    assert (low, high) == (40.0, 61.0)


def test_interval_brackets_the_median_and_narrows_with_more_runs() -> None:
    rng = np.random.default_rng(0)
    small = rng.lognormal(0.0, 0.3, 50)
    large = rng.lognormal(0.0, 0.3, 5000)
    for sample in (small, large):
        low, high = median_ci(sample)
        assert low <= np.median(sample) <= high
    assert ci_halfwidth_pct(large) < ci_halfwidth_pct(small) / 5


@pytest.mark.parametrize("n", [10, 60, 400])
def test_coverage_is_about_95_percent_on_skewed_latencies(n: int) -> None:
    # Log-normal "latencies" with a known median of exp(0) = 1.0.
    rng = np.random.default_rng(n)
    trials = 2000
    hits = 0
    for _ in range(trials):
        low, high = median_ci(rng.lognormal(0.0, 0.5, n))
        hits += low <= 1.0 <= high
    assert 0.93 <= hits / trials <= 0.99


def test_latency_stats_in_milliseconds() -> None:
    seconds = [0.001 * v for v in range(1, 101)]  # 1..100 ms
    stats = latency_stats(
        seconds, warmup_runs=3, stop_reason="ci-target", measured_s=1.0, target_ci_pct=25.0
    )
    assert stats.runs == 100 and stats.warmup_runs == 3
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p99_ms == pytest.approx(99.01)
    assert (stats.ci95_low_ms, stats.ci95_high_ms) == pytest.approx((40.0, 61.0))
    assert stats.ci95_halfwidth_pct == pytest.approx(100 * 10.5 / 50.5)
    assert stats.stable and len(stats.samples_ms) == 100
    # ±20.8% is outside a ±20% target, whatever stopped the loop.
    tight = latency_stats(
        seconds, warmup_runs=0, stop_reason="ci-target", measured_s=1.0, target_ci_pct=20.0
    )
    assert not tight.stable


def test_one_sample_has_no_spread() -> None:
    stats = latency_stats([0.002], warmup_runs=0, stop_reason="time-cap", measured_s=0.0)
    assert stats.std_ms == 0.0 and stats.ci95_low_ms == stats.ci95_high_ms == pytest.approx(2.0)
