import itertools
import sys
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from inferopt.data import Dataset
from inferopt.model import Provenance, from_proto
from inferopt.search.evaluate import compare_latency, metric_for
from inferopt.search.fidelity import Judge, run_outputs

sys.path.insert(0, str(Path(__file__).parents[1] / "fixtures"))
from switching import Switching


def _linear(scale: float = 1.0, repeat: int = 1):  # type: ignore[no-untyped-def]
    """y = x @ W, computed `repeat` times in a chain (to make a slower model)."""
    w = numpy_helper.from_array(np.eye(64, dtype=np.float32) * scale, "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])
    names = ["x"] + [f"h{i}" for i in range(repeat - 1)] + ["y"]
    nodes = [helper.make_node("MatMul", [a, "w"], [b]) for a, b in itertools.pairwise(names)]
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=[w])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return from_proto(proto, Provenance("linear", "onnx"))


def _data(labels: bool) -> Dataset:
    x = np.random.default_rng(0).standard_normal((40, 64)).astype(np.float32)
    return Dataset.from_arrays({"x": x}, x.argmax(1) if labels else None)


def test_metric_follows_labels_and_output_shape() -> None:
    model = _linear()
    assert metric_for(_data(labels=True), model) == "top1"
    assert metric_for(_data(labels=False), model) == "retrieval"
    assert metric_for(_data(labels=False), model, "agreement") == "agreement"


def test_identical_model_has_perfect_fidelity_and_scaled_logits_keep_top1() -> None:
    data = _data(labels=True)
    reference = run_outputs(_linear(), data)
    judge = Judge("top1", "top1", data.labels)
    fid = judge.measure(run_outputs(_linear(scale=3.0), data), reference)
    assert fid.cosine > 0.9999 and fid.agreement == 1.0
    assert fid.task_score == fid.baseline_task_score == 1.0 and fid.metric_drop == 0.0
    # Scaled logits keep every decision, but every value is off by 3x: the channels see it.
    assert fid.channel_drop > 0.5


def test_embedding_fidelity_detects_a_changed_model() -> None:
    data = _data(labels=False)
    reference = run_outputs(_linear(), data)
    fid = Judge("embedding", "embedding").measure(run_outputs(_linear(scale=-1.0), data), reference)
    assert fid.cosine < -0.99 and fid.drop == 1.0


def test_latency_comparison_sees_a_slower_model() -> None:
    data = _data(labels=False)
    feeds = [data.batch([i]) for i in range(8)]
    fast, slow = _linear(repeat=1), _linear(repeat=40)
    same = compare_latency(fast, _linear(repeat=1), feeds, rounds=5)
    assert 0.5 < same.speedup < 2.0
    slower = compare_latency(fast, slow, feeds, rounds=5)
    assert slower.speedup < 0.5  # the candidate does 40x the work


def test_an_identical_model_compares_as_equal_whatever_runs_first() -> None:
    """The slowness after a switch is settled before each timed round: without it the model
    timed second in a round (2 of 3 rounds for the candidate) read ~1.5x slower."""
    feeds = [{"x": np.zeros(1)}] * 16
    machine: dict[str, object] = {}
    a, b = Switching(machine), Switching(machine)
    for first, second in ((a, b), (b, a)):
        comparison = compare_latency(first, second, feeds, rounds=3, warmup=1)  # type: ignore[arg-type]
        assert 0.9 < comparison.speedup < 1.1
