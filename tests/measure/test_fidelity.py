import numpy as np
import pytest

from inferopt.measure.fidelity import mean_cosine, nearest_neighbour_agreement, top1


def test_top1() -> None:
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert top1(logits, np.array([1, 0, 0])) == pytest.approx(2 / 3)


def test_cosine_is_scale_invariant_and_detects_rotation() -> None:
    ref = np.random.default_rng(0).standard_normal((8, 16))
    assert mean_cosine(ref, 3 * ref) == pytest.approx(1.0)
    assert mean_cosine(ref, -ref) == pytest.approx(-1.0)


def test_nearest_neighbour_agreement() -> None:
    ref = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert nearest_neighbour_agreement(ref, ref) == 1.0
    swapped = np.array([[1.0, 0.0], [0.1, 0.9], [0.0, 1.0], [0.9, 0.1]])
    assert nearest_neighbour_agreement(ref, swapped) < 1.0
    with pytest.raises(ValueError, match="at least 2 rows"):
        nearest_neighbour_agreement(ref[:1], ref[:1])
