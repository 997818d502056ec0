"""Sibling MatMuls packed into one (generative/packing.py): the same outputs in ONNX Runtime,
and the same quantized model, with fewer nodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inferopt.generative import weightonly
from inferopt.generative.fidelity import _prefill
from inferopt.generative.generate import Generator
from inferopt.generative.packing import PACKED, pack_siblings
from inferopt.generative.weightonly import WeightOnly, weight_matmuls
from inferopt.runtime import create_session

K = 16


def _model(opset: int = 17) -> onnx.ModelProto:
    """x [2, 3, K] read by MatMuls a, b (N 8 and 4) and c (a weight Gather also reads); y = a's
    output read by d; outputs a+b, c, d."""
    rng = np.random.default_rng(0)
    shapes = {"wa": (K, 8), "wb": (K, 4), "wc": (K, 4), "wd": (8, 3)}
    weights = {w: rng.standard_normal(shape).astype(np.float32) for w, shape in shapes.items()}
    nodes = [
        helper.make_node("MatMul", ["x", "wa"], ["a"], name="a"),
        helper.make_node("MatMul", ["x", "wb"], ["b"], name="b"),
        helper.make_node("MatMul", ["x", "wc"], ["c"], name="c"),
        helper.make_node("Gather", ["wc", "index"], ["row"], name="g", axis=0),
        helper.make_node("MatMul", ["a", "wd"], ["d"], name="d"),
        helper.make_node("Add", ["b", "row"], ["b_row"], name="add"),
    ]
    inits = [numpy_helper.from_array(w, name) for name, w in weights.items()]
    inits.append(numpy_helper.from_array(np.array(1, np.int64), "index"))
    outputs = {"b_row": 4, "c": 4, "d": 3, "a": 8}
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, K])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, [2, 3, n])
         for y, n in outputs.items()],
        inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model: onnx.ModelProto) -> list[np.ndarray]:
    x = np.random.default_rng(1).standard_normal((2, 3, K)).astype(np.float32)
    return list(create_session(model).run(None, {"x": x}))


def test_siblings_become_one_matmul_and_a_split_with_the_same_outputs() -> None:
    model = _model()
    before = _run(model)
    packed, names = pack_siblings(_model(), ["a", "b", "c", "d"])
    onnx.checker.check_model(packed)  # still in topological order
    ops = [n.op_type for n in packed.graph.node]
    assert ops.count("MatMul") == 3 and ops.count("Split") == 1  # a+b, c, d
    # c's weight is also gathered from: packing would copy it, so c stays whole
    assert names == {"a" + PACKED, "c", "d"}
    for found, expected in zip(_run(packed), before, strict=True):
        np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-5)


def test_only_the_named_nodes_are_packed_and_old_opsets_are_left_alone() -> None:
    _, names = pack_siblings(_model(), ["a", "d"])
    assert names == {"a", "d"}
    model, names = pack_siblings(_model(opset=12), ["a", "b"])
    assert names == {"a", "b"}
    assert [n.op_type for n in model.graph.node].count("Split") == 0


@pytest.mark.parametrize("algorithm", ["rtn", "rtn-float"])
def test_a_packed_quantization_gives_the_unpacked_logits(
    zoo_tiny_llama_artifact: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    algorithm: str,
) -> None:
    """Quantizers work per column in blocks along K, so packing changes no code or scale:
    the tiny Llama's gate and up projections packed give the logits they give apart."""
    pass_ = WeightOnly(algorithm=algorithm)  # type: ignore[arg-type]
    packed = pass_.apply(zoo_tiny_llama_artifact, tmp_path / "packed")
    monkeypatch.setattr(weightonly, "pack_siblings", lambda model, nodes: (model, set(nodes)))
    apart = pass_.apply(zoo_tiny_llama_artifact, tmp_path / "apart")

    def nbits(folder: Path) -> int:
        graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
        return [n.op_type for n in graph.node].count("MatMulNBits")

    source = onnx.load(str(zoo_tiny_llama_artifact / "model.onnx"))
    assert nbits(apart) == len(weight_matmuls(source)) > nbits(packed)
    ids = np.array([[5, 17, 42, 99, 7, 3]], dtype=np.int64)
    logits = [_prefill(Generator(f), ids) for f in (packed, apart)]
    np.testing.assert_allclose(logits[0], logits[1], rtol=0, atol=1e-4)
