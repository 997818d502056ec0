from itertools import islice

import numpy as np
import pytest

from inferopt.loadgen.schedule import arrivals


def test_constant_arrivals_are_evenly_spaced() -> None:
    offsets = list(islice(arrivals(50.0, "constant"), 1000))
    assert offsets[0] == 0.0
    np.testing.assert_allclose(np.diff(offsets), 0.02, rtol=1e-9)
    assert offsets[-1] == pytest.approx(999 / 50.0)


def test_poisson_arrivals_have_the_mean_rate_and_exponential_gaps() -> None:
    offsets = np.array(list(islice(arrivals(200.0, "poisson", seed=7), 20_000)))
    gaps = np.diff(offsets)
    assert np.all(gaps >= 0)
    assert len(offsets) / offsets[-1] == pytest.approx(200.0, rel=0.03)
    # Exponential gaps: the standard deviation equals the mean (constant gaps would give 0).
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)


def test_poisson_arrivals_repeat_with_the_seed_and_differ_without() -> None:
    first = list(islice(arrivals(10.0, "poisson", seed=1), 50))
    assert first == list(islice(arrivals(10.0, "poisson", seed=1), 50))
    assert first != list(islice(arrivals(10.0, "poisson", seed=2), 50))


@pytest.mark.parametrize("rate", [0.0, -5.0, float("nan")])
def test_a_rate_that_is_not_positive_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="rate must be > 0"):
        arrivals(rate, "constant")


def test_an_unknown_arrival_process_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown arrival"):
        arrivals(1.0, "bursty")  # type: ignore[arg-type]
