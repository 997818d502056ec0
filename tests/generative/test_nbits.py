"""The MatMulNBits forms of generative/nbits.py: each gives the product of the weights it
stands for, in ONNX Runtime, at fp32 and int8 compute."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inferopt.generative.nbits import (
    max_abs_blocks,
    nibble_planes,
    offset_form,
    pack,
    quantize_blocks,
)
from inferopt.runtime import create_session


def _q4_1_grid(k: int, n: int, block: int, seed: int) -> np.ndarray:
    """float32 [K, N] on a grid d*q + m per block of K (GGUF's Q4_1), min at 0, max at 15."""
    rng = np.random.default_rng(seed)
    blocks = -(-k // block)
    q = rng.integers(0, 16, (n, blocks, block))
    q[..., 0], q[..., 1] = 0, 15
    d = rng.uniform(0.01, 0.1, (n, blocks, 1))
    m = rng.uniform(-1, 0, (n, blocks, 1))
    return (d * q + m).reshape(n, -1)[:, :k].T.astype(np.float32)


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], k: int,
           outputs: dict[str, int]) -> onnx.ModelProto:  # fmt: skip
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, k])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, [2, 3, n])
         for y, n in outputs.items()],
        inits,
    )  # fmt: skip
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )


def test_min_max_blocks_reproduce_a_4bit_affine_grid_exactly() -> None:
    k, n, block = 96, 5, 32
    weight = _q4_1_grid(k, n, block, seed=0)
    packed, scales, zeros = quantize_blocks(weight, 4, block)
    low, high = packed & 0x0F, packed >> 4
    codes = np.stack([low, high], axis=-1).reshape(n, k // block, block).astype(np.float32)
    back = (codes - zeros.reshape(n, -1, 1)) * scales.reshape(n, -1, 1)
    np.testing.assert_allclose(back.reshape(n, k).T, weight, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("level", "k"), [(1, 80), (4, 80), (1, 1088), (4, 1088)])
def test_offset_form_gives_the_grid_weights_product(level: int, k: int) -> None:
    """Two weights reading one x (one block sum between them). K = 80 is not a whole number
    of blocks (2.5 x 32); K = 1088 is 34 blocks, so at level 4 the offsets fold into the
    integer kernel with block sums over two padded blocks. fp32 compute gives x @ W to float
    rounding; int8 compute within its activation quantization."""
    block = 32
    weights = {"a": _q4_1_grid(k, 24, block, seed=1), "b": _q4_1_grid(k, 8, block, seed=2)}
    model = _model(
        [helper.make_node("MatMul", ["x", f"w{y}"], [y], name=f"mm{y}") for y in weights],
        [numpy_helper.from_array(w, f"w{y}") for y, w in weights.items()],
        k, {y: w.shape[1] for y, w in weights.items()},
    )  # fmt: skip
    model = offset_form(model, {"mma", "mmb"}, 4, block, level)
    ops = [n.op_type for n in model.graph.node]
    folded = level == 4 and k % block == 0
    if folded:  # 1 block sum and its Concat, no offset MatMul or Add
        assert ops.count("MatMul") == 1 and ops.count("Concat") == 1 and "Add" not in ops
    else:  # 1 block sum, 2 offsets, 2 Adds
        assert ops.count("MatMul") == 3 and ops.count("Add") == 2
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 2 and all(len(n.input) == 3 for n in nbits)  # ORT's integer kernel
    extra = 2 * 64 if folded else 0  # 34 block sums take 2 blocks, twice
    assert {a.i for n in nbits for a in n.attribute if a.name == "K"} == {k + extra}
    x = np.random.default_rng(3).standard_normal((2, 3, k)).astype(np.float32)
    found = dict(zip(weights, create_session(model).run(list(weights), {"x": x}), strict=True))
    for y, w in weights.items():
        error = np.abs(found[y] - x @ w).max() / np.abs(x @ w).max()
        assert error < (1e-5 if level == 1 else 2e-2), (y, error)


def _eight_bit(k: int, n: int, block: int, level: int, zero_points: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(4)
    blocks = k // block
    codes = rng.integers(0, 256, (n, blocks, block)).astype(np.uint8)
    inits = [
        numpy_helper.from_array(codes, "b"),
        numpy_helper.from_array(rng.uniform(1e-3, 1e-2, n * blocks).astype(np.float32), "s"),
    ]
    inputs = ["x", "b", "s"]
    if zero_points:
        inits.append(numpy_helper.from_array(rng.integers(0, 256, n * blocks).astype(np.uint8),
                                             "z"))  # fmt: skip
        inputs.append("z")
    node = helper.make_node("MatMulNBits", inputs, ["y"], name="mm", domain="com.microsoft",
                            K=k, N=n, bits=8, block_size=block, accuracy_level=level)  # fmt: skip
    return _model([node], inits, k, {"y": n})


@pytest.mark.parametrize("zero_points", [False, True])
def test_nibble_planes_give_the_8bit_product(zero_points: bool) -> None:
    k, n, block = 64, 40, 32
    model = _eight_bit(k, n, block, 1, zero_points)
    x = np.random.default_rng(5).standard_normal((2, 3, k)).astype(np.float32)
    (eight,) = create_session(model).run(None, {"x": x})
    planes = nibble_planes(onnx.ModelProto.FromString(model.SerializeToString()))
    nbits = [node for node in planes.graph.node if node.op_type == "MatMulNBits"]
    assert [[a.i for a in node.attribute if a.name == "bits"] for node in nbits] == [[4], [4]]
    (split,) = create_session(planes).run(None, {"x": x})
    np.testing.assert_allclose(split, eight, rtol=1e-5, atol=1e-5 * np.abs(eight).max())


def test_nibble_planes_leave_int8_compute_alone() -> None:
    model = _eight_bit(64, 8, 32, 4, zero_points=True)
    assert nibble_planes(model).graph.node[0].op_type == "MatMulNBits"
    assert len(model.graph.node) == 1


def test_pack_puts_the_low_nibble_first() -> None:
    assert pack(np.array([1, 2, 15, 0], np.uint8), 4).tolist() == [0x21, 0x0F]


def test_max_abs_blocks_reproduce_a_q8_0_grid_exactly() -> None:
    """GGUF's Q8_0: per block of 32, d = amax/127 and w = d*q, q in [-127, 127]."""
    k, n, block = 96, 5, 32
    rng = np.random.default_rng(5)
    q = rng.integers(-127, 128, (n, k // block, block))
    q[..., 0] = 127  # the block's max-abs code, as Q8_0 writes it
    d = rng.uniform(1e-3, 1e-2, (n, k // block, 1)).astype(np.float32)
    weight = (d * q).reshape(n, k).T.astype(np.float32)
    codes, scales = max_abs_blocks(weight, 8, block)
    back = (codes.astype(np.float32) - 128) * scales.reshape(n, -1, 1)
    np.testing.assert_array_equal(codes.astype(np.int64) - 128, q)
    np.testing.assert_allclose(back.reshape(n, k).T, weight, rtol=1e-6, atol=0)
