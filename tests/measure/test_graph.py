"""Shapes at a concrete point and the live-activation memory estimate."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from inferopt.measure.graph import peak_live_activation_bytes, shaped_graph, weight_bytes
from inferopt.model import Model, Provenance, from_proto


def _chain(ops: list[tuple[str, list[str], str]], weights: dict[str, np.ndarray]) -> Model:
    nodes = [helper.make_node(op, inputs, [out]) for op, inputs, out in ops]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 100])],
        [helper.make_tensor_value_info(ops[-1][2], TensorProto.FLOAT, ["batch", 100])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    return from_proto(proto, Provenance(source="chain", kind="onnx"))


def test_tensors_are_freed_after_their_last_reader() -> None:
    # x -> a -> b -> c -> y, 400 B each at batch 1. Alive at most: x, one intermediate being
    # read and the one being written = 1200 B (a sum of all tensors would say 2000 B).
    relus = [("Relu", ["x"], "a"), ("Relu", ["a"], "b"), ("Relu", ["b"], "c"), ("Relu", ["c"], "y")]
    graph = shaped_graph(_chain(relus, {}), batch=1, seq=None)
    assert peak_live_activation_bytes(graph) == (1200, True)


def test_a_tensor_read_later_stays_alive_and_batch_scales_it() -> None:
    # a is read by the last node, so x, a, b and y are alive together: 4 x 400 B per batch item.
    ops = [("Relu", ["x"], "a"), ("Relu", ["a"], "b"), ("Add", ["a", "b"], "y")]
    model = _chain(ops, {})
    assert peak_live_activation_bytes(shaped_graph(model, 1, None)) == (1600, True)
    assert peak_live_activation_bytes(shaped_graph(model, 8, None)) == (8 * 1600, True)


def test_weights_are_counted_once_and_not_as_activations() -> None:
    ops = [("Add", ["x", "w"], "a"), ("Add", ["a", "w"], "y")]
    graph = shaped_graph(_chain(ops, {"w": np.ones(100, np.float32)}), 1, None)
    assert weight_bytes(graph) == 400
    assert peak_live_activation_bytes(graph) == (1200, True)  # x, a, y


def test_symbolic_shapes_are_replaced_by_the_point() -> None:
    graph = shaped_graph(_chain([("Relu", ["x"], "y")], {}), batch=5, seq=None)
    (out,) = graph.outputs
    assert out.shape is not None and list(out.shape.dims) == [5, 100]
