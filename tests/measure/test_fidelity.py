import json
from dataclasses import replace

import numpy as np
import pytest

from inferopt.measure.fidelity import (
    ChannelFigure,
    DecisionFigure,
    OutputFigure,
    OutputsComparison,
    mean_cosine,
    nearest_neighbour_agreement,
    top1,
)
from inferopt.measure.interval import Interval


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


def channel(index: int, drop: float, low: float, high: float) -> ChannelFigure:
    return ChannelFigure("y", index, drop, Interval(low, high), 3.0, Interval(2.0, 4.0), "spread")


def test_worst_breaks_ties_by_upper_bound_and_takes_a_larger_flip_rate() -> None:
    channels = (channel(0, 0.1, 0.05, 0.2), channel(1, 0.1, 0.05, 0.3), channel(2, 0.05, 0, 0.4))
    output = OutputFigure("y", 2, channels, None, 0.0, 0.0)
    assert output.worst is channels[1]  # same drop, wider upper bound: the less certain
    flips = DecisionFigure("y", "sign", 0.25, Interval(0.2, 0.3), 2, 100)
    result = OutputsComparison((replace(output, decision=flips),), samples=100)
    assert result.worst is flips and result.drop == 0.25
    assert result.drop_interval == Interval(0.2, 0.3)
    assert result.describe() == (
        "worst channel: output 'y' channel 1: SQNR 3.0 dB, drop 0.1 [0.05, 0.3] (95% interval); "
        "decisions: 'y' sign flips 25.0% [20.0%, 30.0%] in channel 2"
    )
    data = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert data["worst"] == {**data["outputs"][0]["decision"], "figure": "decision"}
    assert data["drop_interval"] == {"low": 0.2, "high": 0.3, "level": 0.95}
