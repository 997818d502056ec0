"""FLOP counts of small graphs against values computed by hand (the arithmetic is in comments)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inferopt.measure.flops import count_compute
from inferopt.measure.graph import shaped_graph
from inferopt.model import Model, Provenance, from_proto
from inferopt.report.schema import Compute

F = TensorProto.FLOAT


def _model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[tuple[str, Sequence[int | str]]],
    outputs: Sequence[tuple[str, Sequence[int | str] | None]],
    weights: dict[str, np.ndarray] | None = None,
    opset: int = 21,
    domains: Sequence[str] = (),
) -> Model:
    graph = helper.make_graph(
        list(nodes),
        "g",
        [helper.make_tensor_value_info(n, F, list(s)) for n, s in inputs],
        [helper.make_tensor_value_info(n, F, None if s is None else list(s)) for n, s in outputs],
        [numpy_helper.from_array(v, k) for k, v in (weights or {}).items()],
    )
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    proto = helper.make_model(graph, opset_imports=imports)
    return from_proto(proto, Provenance(source="tiny", kind="onnx"), verify=False)


def _w(*shape: int) -> np.ndarray:
    return np.ones(shape, dtype=np.float32)


def _count(model: Model, batch: int = 1, seq: int | None = None) -> Compute:
    return count_compute(shaped_graph(model, batch, seq), batch, seq)


def _by_type(compute: Compute) -> dict[str, tuple[int, int]]:
    return {c.op_type: (c.macs, c.flops) for c in compute.by_op_type}


@pytest.mark.parametrize("trans_a", [0, 1])
def test_gemm_counts_m_n_k_macs_and_the_bias(trans_a: int) -> None:
    # A is 4x8 (given as 8x4 when transposed), B 8x16, C 16: M=4, N=16, K=8.
    # MACs = 4*16*8 = 512; FLOPs = 2*512 + 4*16 (bias) = 1088.
    a_shape = [8, 4] if trans_a else [4, 8]
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=trans_a)
    model = _model([node], [("a", a_shape)], [("y", None)], {"b": _w(8, 16), "c": _w(16)})
    assert _by_type(_count(model))["Gemm"] == (512, 1088)


def test_conv_counts_grouped_kernels_and_bias() -> None:
    # X 2x4x10x10, W 6x2x3x3 (group 2), pads 1 -> Y 2x6x10x10 = 1200 outputs.
    # Each output sums (4/2 channels) x 3x3 = 18 products: MACs = 21600; FLOPs = 43200 + 1200.
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=2, pads=[1, 1, 1, 1])
    model = _model(
        [node], [("x", [2, 4, 10, 10])], [("y", None)], {"w": _w(6, 2, 3, 3), "b": _w(6)}
    )
    assert _by_type(_count(model))["Conv"] == (21600, 44400)


def test_conv_transpose_scatters_each_input_through_the_kernel() -> None:
    # X 1x3x5x5 (75 inputs), W 3x4x2x2, stride 2 -> Y 1x4x10x10.
    # Each input meets 4 output channels x 2x2 weights: MACs = 75*16 = 1200; FLOPs = 2400.
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])
    model = _model([node], [("x", [1, 3, 5, 5])], [("y", None)], {"w": _w(3, 4, 2, 2)})
    compute = _count(model)
    assert _by_type(compute)["ConvTranspose"] == (1200, 2400)
    assert compute.total_flops == 2400


def test_batched_matmul_multiplies_output_elements_by_k() -> None:
    # A 2x3x5x7 @ B 7x11 -> 2x3x5x11 = 330 outputs, K = 7: MACs = 2310.
    node = helper.make_node("MatMul", ["a", "b"], ["y"])
    model = _model([node], [("a", [2, 3, 5, 7])], [("y", None)], {"b": _w(7, 11)})
    assert _by_type(_count(model))["MatMul"] == (2310, 4620)


def _attention_block() -> Model:
    """scores = Q K^T / sqrt(8); P = softmax(scores); Y = P V, with Q, K, V of 2x4x6x8."""
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"]),
        helper.make_node("Div", ["scores", "scale"], ["scaled"]),
        helper.make_node("Softmax", ["scaled"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    qkv = [(n, [2, 4, 6, 8]) for n in ("q", "k", "v")]
    scale = np.array(np.sqrt(8.0), dtype=np.float32)
    return _model(nodes, qkv, [("y", None)], {"scale": scale})


def test_attention_block_counts_both_products_scale_and_softmax() -> None:
    # Scores: 2*4*6*6 = 288. Q K^T: 288 x 8 = 2304 MACs; P V: 2*4*6*8 = 384 outputs x 6 = 2304.
    # Div: 288 FLOPs; Softmax: 5 x 288 = 1440; Transpose: 0.
    compute = _count(_attention_block())
    ops = _by_type(compute)
    assert ops["MatMul"] == (4608, 9216)
    assert ops["Div"] == (0, 288)
    assert ops["Softmax"] == (0, 1440)
    assert ops["Transpose"] == (0, 0)
    assert compute.total_flops == 9216 + 288 + 1440
    assert compute.not_counted == {}


def test_onnx_attention_op_counts_like_its_decomposition() -> None:
    # Same shapes as the block above: 4608 MACs, plus 6 FLOPs (scale + softmax) x 288 scores.
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"])
    model = _model([node], [(n, [2, 4, 6, 8]) for n in "qkv"], [("y", None)], opset=23)
    assert _by_type(_count(model))["Attention"] == (4608, 9216 + 6 * 288)


def test_contrib_multihead_attention_uses_num_heads() -> None:
    # q, k, v: 2x6x32 with 4 heads of 8. Scores 2*4*6*6 = 288: 288*8 + 384*6 = 4608 MACs.
    node = helper.make_node(
        "MultiHeadAttention", ["q", "k", "v"], ["y"], num_heads=4, domain="com.microsoft"
    )
    model = _model(
        [node], [(n, [2, 6, 32]) for n in "qkv"], [("y", [2, 6, 32])], domains=["com.microsoft"]
    )
    assert _by_type(_count(model))["MultiHeadAttention"] == (4608, 9216 + 6 * 288)


def test_shapes_computed_at_run_time_are_resolved_at_each_point() -> None:
    # Reshape x (batch, seq, 8) to (batch*seq, 8) through Shape/Slice/Concat, then @ 8x4.
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "two"], ["bs"]),
        helper.make_node("ReduceProd", ["bs"], ["rows"], keepdims=1),
        helper.make_node("Concat", ["rows", "eight"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["y"]),
    ]
    ints = {
        k: np.array(v, dtype=np.int64) for k, v in {"zero": [0], "two": [2], "eight": [8]}.items()
    }
    model = _model(nodes, [("x", ["batch", "seq", 8])], [("y", None)], {"w": _w(8, 4), **ints})
    assert model.io.seq_axis == 1
    for batch, seq in ((1, 1), (3, 5), (4, 128)):
        # rows = batch*seq; MACs = rows * 8 * 4.
        assert _by_type(_count(model, batch, seq))["MatMul"][0] == batch * seq * 32


def test_unknown_ops_are_listed_as_not_counted() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Mystery", ["r"], ["y"], domain="example.custom"),
    ]
    model = _model(nodes, [("x", [2, 3])], [("y", None)], domains=["example.custom"])
    compute = _count(model)
    assert compute.not_counted == {"Mystery": 1}
    assert _by_type(compute)["Relu"] == (0, 6)


def test_quantized_matmul_counts_integer_macs() -> None:
    node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
    graph = helper.make_graph(
        [node],
        "q",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
        [numpy_helper.from_array(np.ones((8, 2), np.int8), "b")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model = from_proto(proto, Provenance(source="q", kind="onnx"), verify=False)
    compute = _count(model)
    assert (compute.int_macs, compute.float_macs) == (64, 0)  # 4*2 outputs x K=8


def test_traffic_counts_only_gathered_rows_of_an_embedding_table() -> None:
    # Table 1000x16 float32 (64000 B) read by Gather of 3 ids: traffic = 3 rows written and read
    # (2 * 3*16*4 = 384 B) + the ids input (3 * 8 B); the whole table is not read.
    node = helper.make_node("Gather", ["table", "ids"], ["y"])
    graph = helper.make_graph(
        [node],
        "e",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("y", F, None)],
        [numpy_helper.from_array(_w(1000, 16), "table")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model = from_proto(proto, Provenance(source="e", kind="onnx"), verify=False)
    assert _count(model).traffic_bytes == 384 + 24
