import math

import numpy as np
import pytest

from inferopt.measure.interval import (
    Interval,
    bootstrap,
    bootstrap_sums,
    percentile_interval,
    ratio,
    resample_counts,
    resample_indices,
    resolution,
    samples_needed,
)


def test_interval_rejects_reversed_nan_and_bad_levels() -> None:
    assert Interval(0.1, 0.3).half_width == pytest.approx(0.1)
    assert Interval(0.1, 0.3).contains(0.2) and not Interval(0.1, 0.3).contains(0.31)
    with pytest.raises(ValueError, match="low <= high"):
        Interval(0.3, 0.1)
    with pytest.raises(ValueError, match="low <= high"):
        Interval(math.nan, 0.1)
    with pytest.raises(ValueError, match="level"):
        Interval(0.0, 1.0, level=1.0)
    assert Interval(-math.inf, 3.0).to_json() == {"low": None, "high": 3.0, "level": 0.95}


def test_counts_are_the_same_resamples_as_the_indices() -> None:
    indices = resample_indices(7, resamples=50, seed=3)
    counts = resample_counts(7, resamples=50, seed=3)
    assert counts.shape == (50, 7) and np.all(counts.sum(axis=1) == 7)
    for row, count in zip(indices, counts, strict=True):
        assert np.array_equal(np.bincount(row, minlength=7), count)
    with pytest.raises(ValueError, match="at least one sample"):
        resample_counts(0)


def test_vectorised_ratio_matches_the_generic_bootstrap() -> None:
    rng = np.random.default_rng(0)
    errors = rng.exponential(size=40)
    spread = errors + rng.exponential(size=40)
    generic = bootstrap(lambda e, s: e.sum() / s.sum(), errors, spread, resamples=300, seed=5)
    low, high = bootstrap_sums(ratio, errors, spread, counts=resample_counts(40, 300, seed=5))
    assert float(low) == pytest.approx(generic.low, rel=1e-12)
    assert float(high) == pytest.approx(generic.high, rel=1e-12)
    assert generic.contains(errors.sum() / spread.sum())


def test_bootstrap_sums_is_per_column_and_checks_sample_counts() -> None:
    rng = np.random.default_rng(1)
    flips = rng.integers(0, 5, size=(30, 3)).astype(float)
    flips[:, 2] = 0.0
    positions = np.full(30, 10.0)
    low, high = bootstrap_sums(
        lambda f, p: ratio(f, p[:, None]), flips, positions, counts=resample_counts(30)
    )
    assert low.shape == (3,) and low[2] == high[2] == 0.0
    assert np.all(low[:2] < flips[:, :2].sum(0) / 300) and np.all(
        high[:2] > flips[:, :2].sum(0) / 300
    )
    with pytest.raises(ValueError, match="differ in sample count"):
        bootstrap_sums(ratio, flips, positions[:5], counts=resample_counts(30))
    with pytest.raises(ValueError, match="counts must be"):
        bootstrap_sums(ratio, flips[:, 0], positions, counts=resample_counts(31))


def test_width_shrinks_as_one_over_root_n() -> None:
    def width(n: int) -> float:
        rng = np.random.default_rng(n)
        values = rng.exponential(size=n)
        low, high = bootstrap_sums(
            ratio, values, np.ones(n), counts=resample_counts(n, 2000, seed=1)
        )
        return float(high - low)

    # 16x the samples: a quarter of the width (seeded, so it cannot flake; margins for the
    # spread of the two samples' own standard deviations).
    assert 3.0 < width(100) / width(1600) < 5.3


def test_percentile_interval_survives_infinite_replicates() -> None:
    replicates = np.array([[0.0, 1.0], [np.inf, 2.0], [np.inf, 3.0], [np.inf, 4.0]])
    low, high = percentile_interval(replicates, level=0.5)
    # Order statistics, not interpolation: inf stays inf, never inf - inf = NaN.
    assert low.tolist() == [0.0, 1.0]
    assert high.tolist() == [np.inf, 4.0]


def test_resolution_and_samples_needed() -> None:
    assert resolution(Interval(0.0, 0.004), budget=0.01).verdict == "within"
    assert resolution(Interval(0.02, 0.03), budget=0.01).verdict == "over"
    coarse = resolution(Interval(0.0, 0.04), budget=0.01, samples=100)
    assert coarse.verdict == "unresolved" and not coarse.resolvable
    assert coarse.samples_needed == 400  # half-width 0.02 -> 0.01: (2)^2 = 4x the samples
    assert "finer than the data can resolve" in coarse.describe()
    assert resolution(Interval(0.0, 0.0), budget=1e-9).resolvable
    assert samples_needed(500, 0.005, 0.01) == 125
    assert samples_needed(10, 0.0, 0.01) == 1
    with pytest.raises(ValueError, match="budget"):
        resolution(Interval(0.0, 0.1), budget=0.0)
    with pytest.raises(ValueError, match="half_width"):
        samples_needed(10, -1.0, 0.1)
