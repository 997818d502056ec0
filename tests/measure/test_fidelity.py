import json
import math
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
    retrieval_scores,
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


def _brute_force(ref: np.ndarray, got: np.ndarray, k: int) -> dict[str, list[float]]:
    """retrieval_scores' definition, one query and one document at a time."""
    from scipy.stats import spearmanr

    def cos(x: np.ndarray, i: int, j: int) -> float:
        return float(x[i] @ x[j] / (np.linalg.norm(x[i]) * np.linalg.norm(x[j])))

    n = len(ref)
    out: dict[str, list[float]] = {"ndcg": [], "recall": [], "spearman": []}
    for q in range(n):
        others = [j for j in range(n) if j != q]
        ref_sims = [cos(ref, q, j) for j in others]
        got_sims = [cos(got, q, j) for j in others]
        ref_top = [others[i] for i in sorted(range(n - 1), key=lambda i: -ref_sims[i])[:k]]
        got_top = [others[i] for i in sorted(range(n - 1), key=lambda i: -got_sims[i])[:k]]
        gain = {doc: k - rank for rank, doc in enumerate(ref_top)}  # k for the nearest
        dcg = sum(gain.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(got_top))
        ideal = sum((k - rank) / math.log2(rank + 2) for rank in range(k))
        out["ndcg"].append(dcg / ideal)
        out["recall"].append(len(set(ref_top) & set(got_top)) / k)
        out["spearman"].append(float(spearmanr(ref_sims, got_sims).statistic))
    return out


def test_retrieval_scores_match_a_brute_force_loop() -> None:
    pytest.importorskip("scipy")
    rng = np.random.default_rng(5)
    ref = rng.standard_normal((30, 8))
    got = ref + 0.4 * rng.standard_normal(ref.shape)
    fast, slow = retrieval_scores(ref, got, k=5), _brute_force(ref, got, 5)
    assert fast["ndcg@5"] == pytest.approx(slow["ndcg"], abs=1e-12)
    assert fast["recall@5"] == pytest.approx(slow["recall"], abs=1e-12)
    assert fast["spearman"] == pytest.approx(slow["spearman"], abs=1e-12)
    assert 0.3 < fast["ndcg@5"].mean() < 0.99  # perturbed: some neighbours lost, not all


def test_retrieval_scores_are_exactly_one_against_itself() -> None:
    ref = np.random.default_rng(0).standard_normal((200, 16)).astype(np.float32)
    scores = retrieval_scores(ref, ref.copy())
    assert set(scores) == {"ndcg@10", "recall@10", "spearman"}
    for values in scores.values():
        assert values.shape == (200,) and values.dtype == np.float64
        assert np.all(values == 1.0)


def test_retrieval_drops_when_neighbours_move() -> None:
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((100, 16))
    got = ref.copy()
    got[0] = -got[0]  # one text now sits far from all of its neighbours
    scores = retrieval_scores(ref, got)
    assert scores["ndcg@10"][0] < 0.2 and scores["spearman"][0] < 0
    assert scores["ndcg@10"][1:].min() < 1.0  # it also left the others' lists
    tiny = ref + 1e-9 * rng.standard_normal(ref.shape)  # rounding noise: rankings unmoved
    assert retrieval_scores(ref, tiny)["ndcg@10"].mean() > 0.999


def test_retrieval_scores_nonfinite_rows_zero_and_never_retrieved() -> None:
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((50, 8))
    got = ref.copy()
    got[3, 2] = np.nan
    got[7] = np.inf
    scores = retrieval_scores(ref, got)
    for values in scores.values():
        assert values[3] == 0.0 and values[7] == 0.0 and np.all(np.isfinite(values))
    assert scores["recall@10"][[0, 1, 2]].max() <= 1.0


def test_retrieval_scores_refuse_bad_shapes() -> None:
    ref = np.zeros((4, 3))
    with pytest.raises(ValueError, match="one shape"):
        retrieval_scores(ref, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="n >= 2"):
        retrieval_scores(ref[:1], ref[:1])
    capped = retrieval_scores(ref + np.eye(4, 3), ref + np.eye(4, 3), k=10)  # k above n - 1
    assert set(capped) == {"ndcg@10", "recall@10", "spearman"}  # keys as asked


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
