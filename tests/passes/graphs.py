"""Small hand-built ONNX graphs for pass tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from inferopt.model import Model, Provenance, from_proto

OPSET = [helper.make_opsetid("", 17)]


def model_of(proto: onnx.ModelProto, name: str = "test") -> Model:
    return from_proto(proto, Provenance(name, "onnx"))


def _init(name: str, values: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(values.astype(np.float32), name)


def mlp(hidden: int = 32, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
        helper.make_node("Relu", ["hb"], ["a"], name="relu"),
        helper.make_node("MatMul", ["a", "w2"], ["y"], name="fc2"),
    ]
    inits = [
        _init("w1", rng.standard_normal((16, hidden)) * 0.3),
        _init("b1", rng.standard_normal(hidden) * 0.1),
        _init("w2", rng.standard_normal((hidden, 4)) * 0.3),
    ]
    graph = helper.make_graph(nodes, "mlp", [x], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=OPSET)


def conv_bn(share_conv_output: bool = False) -> onnx.ModelProto:
    """Conv -> BatchNormalization -> Relu; optionally the conv output is also a graph output,
    which must stop the fusion (the unfused value is still needed)."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 6, 6])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"], name="bn"),
        helper.make_node("Relu", ["n"], ["y"], name="relu"),
    ]
    inits = [
        _init("w", rng.standard_normal((4, 2, 3, 3))),
        _init("g", rng.uniform(0.5, 1.5, 4)),
        _init("b", rng.standard_normal(4)),
        _init("m", rng.standard_normal(4)),
        _init("v", rng.uniform(0.5, 1.5, 4)),
    ]
    outputs = [y]
    if share_conv_output:
        outputs.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, ["batch", 4, 6, 6]))
    graph = helper.make_graph(nodes, "convbn", [x], outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=OPSET)


def erf_gelu() -> onnx.ModelProto:
    """x * 0.5 * (1 + erf(x / sqrt(2))), the way exporters spell GELU."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])
    consts = {
        "sqrt2": np.array(np.sqrt(2.0)),
        "one": np.array(1.0),
        "half": np.array(0.5),
    }
    nodes = [
        helper.make_node("Div", ["x", "sqrt2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["a"]),
        helper.make_node("Mul", ["x", "a"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["y"]),
    ]
    inits = [_init(k, v) for k, v in consts.items()]
    graph = helper.make_graph(nodes, "gelu", [x], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=OPSET)


def constant_subgraph() -> onnx.ModelProto:
    """y = x * (c1 + c2): the Add of two constants folds away; a dangling node is dead."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    nodes = [
        helper.make_node("Add", ["c1", "c2"], ["c"], name="const_add"),
        helper.make_node("Mul", ["x", "c"], ["y"], name="mul"),
        helper.make_node("Neg", ["x"], ["unused"], name="dead"),
    ]
    inits = [_init("c1", np.ones(3)), _init("c2", np.full(3, 2.0))]
    graph = helper.make_graph(nodes, "consts", [x], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=OPSET)
