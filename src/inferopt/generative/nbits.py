"""Two ways of writing MatMulNBits weights so ONNX Runtime's CPU runs its fast kernels, with no
change to the weights' values.

1. **Offset form** for blocks with a float zero point (a min-max grid: w = scale*q + low, as in
   GGUF's Q4_1). ORT takes float zero points but runs them on a slow path: measured here with
   ORT 1.32, 1.44 ms per call against 11 µs for integer ones on a 576x1536 weight. Instead
   w = scale*(q - 2^(bits-1)) + offset with offset = low + 2^(bits-1)*scale, so

       x @ W = MatMulNBits(x; q, scale, default zero point) + blocksum(x) @ offsets

   where blocksum(x) [..., K/block] sums x over each block (a MatMul by a 0/1 matrix, shared
   by every weight reading the same x) and offsets is float32 [K/block, N]. The integer part
   takes ORT's fast symmetric kernel; the offsets read 1 extra bit per weight.
   At accuracy_level 4, where the activations are rounded to int8 anyway, the offsets go into
   the integer kernel too (the *folded* form): x' = [x, blocksum(x), blocksum(x)] (each block
   sum part padded to whole blocks) and K' = K + 2P rows, the extra ones holding the offsets
   as 8-bit codes c = 16*hi + lo split over two 4-bit blocks with scales 16s and s, as in 2.
   One MatMulNBits per weight and one Concat per input instead of a MatMul and an Add per
   weight: 4% faster decode on SmolLM2-135M (rtn-float, 11 interleaved rounds), the offsets
   within max|offset|/238 of their value, same-top-1 0.952 against 0.954.
2. **Nibble planes** for 8-bit blocks computed in fp32 (accuracy_level 0 or 1). ORT 1.32's
   CPU kernel for that case dequantizes the whole weight per call: 67 ms on the 576x49152
   lm_head of SmolLM2, against 0.6 ms for 4 bits. An 8-bit code q = 16*hi + lo (and its zero
   point z = 16*zh + zl) gives s*(q - z) = 16s*(hi - zh) + s*(lo - zl): two 4-bit MatMulNBits
   of the same bytes in all, whose sum is the 8-bit product.

Layout (MatMulNBits, ORT's ContribOperators.md): B uint8 [N, K/block, block*bits/8], element
k of a block in byte k*bits//8, low bits first; scales float32 [N*K/block]; zero points uint8,
packed like B per row of N, default 2^(bits-1) when absent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

# Suffixes of the node names written here: weight_matmuls and weight_traffic recognise them.
BLOCKSUM, OFFSETS, LOW_PLANE = "_BlockSum", "_Offsets", "_LowPlane"
FOLDED_LEVEL = 4  # the accuracy_level whose int8 activations the folded form joins


def quantize_blocks(
    weight: np.ndarray, bits: int, block: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A MatMul weight (float32 [K, N]) as min-max blocks with float zero points.

    Returns (codes uint8 [N, ceil(K/block), block*bits/8] packed as MatMulNBits' B, scales
    float32 [N*blocks], zero_points float32 [N*blocks]); w = (q - zero_point) * scale. K is
    padded to whole blocks with codes 0, outside the min-max of the block's real weights."""
    k, n = weight.shape
    blocks = -(-k // block)
    padded = np.full((blocks * block, n), np.nan, dtype=np.float32)
    padded[:k] = weight
    grouped = padded.T.reshape(n, blocks, block)  # [N, blocks, block]: blocks run along K
    low, high = np.nanmin(grouped, axis=2), np.nanmax(grouped, axis=2)
    levels = 2**bits - 1
    scales = (high - low) / levels
    scales[scales == 0] = 1.0  # a constant block: any scale is exact, keep it finite
    zeros = -low / scales
    q = np.clip(np.rint(grouped / scales[..., None] + zeros[..., None]), 0, levels)
    return (
        pack(np.nan_to_num(q).astype(np.uint8), bits),
        scales.reshape(-1).astype(np.float32),
        zeros.reshape(-1).astype(np.float32),
    )


def max_abs_blocks(weight: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """A MatMul weight (float32 [K, N]) as symmetric blocks: scale = max|w| / (2^(bits-1) - 1)
    per block, code = round(w / scale) + 2^(bits-1), so w = (code - 2^(bits-1)) * scale with
    MatMulNBits' default zero point. At 8 bits this is GGUF's Q8_0 grid (d = amax/127), which
    it reproduces exactly.

    Returns (codes uint8 [N, ceil(K/block), block*bits/8] packed as MatMulNBits' B, scales
    float32 [N*blocks]). K is padded to whole blocks with code 2^(bits-1), the value 0."""
    k, n = weight.shape
    blocks = -(-k // block)
    padded = np.zeros((blocks * block, n), dtype=np.float32)
    padded[:k] = weight
    grouped = padded.T.reshape(n, blocks, block)
    top, middle = 2 ** (bits - 1) - 1, 2 ** (bits - 1)
    scales = np.abs(grouped).max(axis=2) / top
    scales[scales == 0] = 1.0  # an all-zero block: any scale is exact, keep it finite
    q = np.clip(np.rint(grouped / scales[..., None]), -top, top) + middle
    return pack(q.astype(np.uint8), bits), scales.reshape(-1).astype(np.float32)


def max_abs_form(
    model: onnx.ModelProto, nodes: set[str], bits: int, block: int, level: int
) -> onnx.ModelProto:
    """The MatMul `nodes` of `model` (float32 weights [K, N]) as symmetric max-abs blocks
    (max_abs_blocks) in MatMulNBits with no zero point; `level` is their accuracy_level."""

    def rewrite(node: onnx.NodeProto, weight: np.ndarray, kept: list[onnx.NodeProto]) -> None:
        k, n = weight.shape
        codes, scales = max_abs_blocks(weight, bits, block)
        base = node.input[1]
        model.graph.initializer.extend([
            numpy_helper.from_array(codes, f"{base}_Q{bits}"),
            numpy_helper.from_array(scales, f"{base}_scales"),
        ])  # fmt: skip
        inputs = [node.input[0], f"{base}_Q{bits}", f"{base}_scales"]
        kept.append(_nbits(node.name, inputs, node.output[0], k, n, bits, block, level))

    return _rewrite_weights(model, nodes, rewrite)


def _rewrite_weights(
    model: onnx.ModelProto,
    nodes: set[str],
    rewrite: Callable[[onnx.NodeProto, np.ndarray, list[onnx.NodeProto]], None],
) -> onnx.ModelProto:
    """`model` with each MatMul named in `nodes` replaced, in graph order, by what
    `rewrite(node, weight float32 [K, N], kept)` appends to `kept` (the graph's nodes so far,
    so it may also add nodes its replacement reads); every other node kept as it is."""
    inits = {i.name: i for i in model.graph.initializer}
    kept: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.name in nodes:
            rewrite(node, numpy_helper.to_array(inits[node.input[1]]).astype(np.float32), kept)
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes [..., n] (each < 2**bits) packed low bits first; n even at 4 bits."""
    if bits == 4:
        codes = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return np.ascontiguousarray(codes.astype(np.uint8))


def offset_form(
    model: onnx.ModelProto, nodes: set[str], bits: int, block: int, level: int
) -> onnx.ModelProto:
    """The MatMul `nodes` of `model` (float32 weights [K, N]) as min-max blocks of `bits`
    written in the offset form; `level` is the accuracy_level of their MatMulNBits."""
    sums: dict[tuple[str, int], str] = {}  # (input, K) -> its block sums

    def rewrite(node: onnx.NodeProto, weight: np.ndarray, kept: list[onnx.NodeProto]) -> None:
        k, n = weight.shape
        codes, scales, zeros = quantize_blocks(weight, bits, block)
        base, x, y = node.input[1], node.input[0], node.output[0]
        offsets = ((2 ** (bits - 1) - zeros) * scales).reshape(n, -1).T  # [K/block, N]
        if level == FOLDED_LEVEL and bits == 4 and k % block == 0:
            if (x, k) not in sums:
                sums[x, k] = _extended(model, kept, x, k, block)
            kept.append(_folded(model, node, sums[x, k], codes, scales, offsets, block))
            return
        if (x, k) not in sums:
            sums[x, k] = _block_sum(model, kept, x, k, block)
        model.graph.initializer.extend([
            numpy_helper.from_array(codes, f"{base}_Q{bits}"),
            numpy_helper.from_array(scales, f"{base}_scales"),
            numpy_helper.from_array(np.ascontiguousarray(offsets, np.float32), f"{base}_offsets"),
        ])  # fmt: skip
        kept.extend([
            _nbits(node.name, [x, f"{base}_Q{bits}", f"{base}_scales"], f"{y}_grid",
                   k, n, bits, block, level),
            helper.make_node("MatMul", [sums[x, k], f"{base}_offsets"], [f"{y}_offset"],
                             name=node.name + OFFSETS),
            helper.make_node("Add", [f"{y}_grid", f"{y}_offset"], [y], name=f"{node.name}_Add"),
        ])  # fmt: skip

    return _rewrite_weights(model, nodes, rewrite)


def _extended(
    model: onnx.ModelProto, kept: list[onnx.NodeProto], x: str, k: int, block: int
) -> str:
    """Append x' = [x, s, s], s = x @ E (E float32 [K, P]: 1 where row k is in block k//block,
    P the block count padded to whole blocks, its padding columns 0): [..., K + 2P]."""
    shared = _indicator(model, k, block, block * -(-(k // block) // block))
    name = f"{x}_blocks{block}"
    kept.extend([
        helper.make_node("MatMul", [x, shared], [f"{name}_sum"], name=name + BLOCKSUM),
        helper.make_node("Concat", [x, f"{name}_sum", f"{name}_sum"], [f"{name}_extended"],
                         name=f"{name}_Extend", axis=-1),
    ])  # fmt: skip
    return f"{name}_extended"


def _folded(
    model: onnx.ModelProto,
    node: onnx.NodeProto,
    extended: str,
    codes: np.ndarray,
    scales: np.ndarray,
    offsets: np.ndarray,
    block: int,
) -> onnx.NodeProto:
    """One 4-bit MatMulNBits over x' = [x, s, s] (_extended): codes and scales [N, K/block]
    for x, then per column the offsets [K/block] as 8-bit codes c with scale t, value
    t*(c - 136) = 16t*(hi - 8) + t*(lo - 8): hi nibbles in the first s part (scale 16t), lo
    nibbles in the second (scale t); padding rows take code 8, value 0."""
    n, blocks = codes.shape[0], codes.shape[1]
    padded = block * -(-blocks // block)
    columns = offsets.T  # [N, K/block]
    t = np.abs(columns).max(axis=1) / 119.0  # c - 136 in [-119, 119]
    t[t == 0] = 1.0
    c = (np.rint(columns / t[:, None]) + 136).astype(np.uint8)
    hi, lo = np.full((2, n, padded), 8, dtype=np.uint8)
    hi[:, :blocks], lo[:, :blocks] = c >> 4, c & 15
    extra = pack(np.concatenate([hi, lo], axis=1).reshape(n, -1, block), 4)
    parts = padded // block
    all_scales = np.concatenate(
        [scales.reshape(n, blocks), np.repeat(16 * t[:, None], parts, 1),
         np.repeat(t[:, None], parts, 1)], axis=1,
    )  # fmt: skip
    base = node.input[1]
    model.graph.initializer.extend([
        numpy_helper.from_array(np.concatenate([codes, extra], axis=1), f"{base}_Q4"),
        numpy_helper.from_array(all_scales.reshape(-1).astype(np.float32), f"{base}_scales"),
    ])  # fmt: skip
    k = blocks * block + 2 * padded
    inputs = [extended, f"{base}_Q4", f"{base}_scales"]
    return _nbits(node.name, inputs, node.output[0], k, n, 4, block, FOLDED_LEVEL)


def _block_sum(
    model: onnx.ModelProto, kept: list[onnx.NodeProto], x: str, k: int, block: int
) -> str:
    """Append x @ E (E float32 [K, K/block], 1 where row k is in block k//block): the sum of
    x over each block, [..., ceil(K/block)]. One MatMul, so any leading shape passes."""
    shared = _indicator(model, k, block, -(-k // block))
    name = f"{x}_blocks{block}"
    kept.append(helper.make_node("MatMul", [x, shared], [f"{name}_sum"],
                                 name=name + BLOCKSUM))  # fmt: skip
    return f"{name}_sum"


def _indicator(model: onnx.ModelProto, k: int, block: int, columns: int) -> str:
    """The name of E float32 [K, columns], 1 where row k is in block k//block (columns past
    the last block all 0), added to `model` once per shape: every block sum of that shape
    reads the same E, which then stays in the CPU's cache."""
    name = f"BlockIndicator_{k}x{columns}"
    if name not in {i.name for i in model.graph.initializer}:
        indicator = np.zeros((k, columns), dtype=np.float32)
        indicator[np.arange(k), np.arange(k) // block] = 1.0
        model.graph.initializer.append(numpy_helper.from_array(indicator, name))
    return name


def nibble_planes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every 8-bit MatMulNBits computed in fp32 (accuracy_level 0 or 1) rewritten as two 4-bit
    planes plus an Add, the same products. Skipped: float16 scales, a g_idx or bias input, and
    weights another node also reads (the tied embedding reads the lm_head's B)."""
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    inits = {i.name: i for i in model.graph.initializer}
    kept: list[onnx.NodeProto] = []
    for node in model.graph.node:
        attrs = {a.name: a.i for a in node.attribute}
        if (
            node.op_type != "MatMulNBits"
            or attrs.get("bits") != 8
            or attrs.get("accuracy_level", 0) > 1
            or len(node.input) > 4
            or readers[node.input[1]] > 1
            or inits[node.input[2]].data_type != onnx.TensorProto.FLOAT
        ):
            kept.append(node)
            continue
        kept.extend(_split(model, node, inits, attrs))
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def _split(
    model: onnx.ModelProto,
    node: onnx.NodeProto,
    inits: dict[str, onnx.TensorProto],
    attrs: dict[str, int],
) -> list[onnx.NodeProto]:
    codes = numpy_helper.to_array(inits[node.input[1]])  # [N, blocks, block]
    scales = numpy_helper.to_array(inits[node.input[2]])
    n, blocks, _ = codes.shape
    if len(node.input) > 3 and node.input[3]:
        zeros = numpy_helper.to_array(inits[node.input[3]]).reshape(n, blocks)
    else:
        zeros = np.full((n, blocks), 128, dtype=np.uint8)
    base, y = node.input[1], node.output[0]
    made = []
    for plane, code, zero, scale in (
        ("high", codes >> 4, zeros >> 4, scales * 16),
        ("low", codes & 15, zeros & 15, scales),
    ):
        padded = np.zeros((n, blocks + blocks % 2), dtype=np.uint8)
        padded[:, :blocks] = zero
        model.graph.initializer.extend([
            numpy_helper.from_array(pack(code, 4), f"{base}_{plane}"),
            numpy_helper.from_array(scale.astype(np.float32), f"{base}_{plane}_scales"),
            numpy_helper.from_array(pack(padded, 4), f"{base}_{plane}_zero_points"),
        ])  # fmt: skip
        name = node.name + (LOW_PLANE if plane == "low" else "_HighPlane")
        made.append(_nbits(
            name,
            [node.input[0], f"{base}_{plane}", f"{base}_{plane}_scales",
             f"{base}_{plane}_zero_points"],
            f"{y}_{plane}", attrs["K"], attrs["N"], 4, attrs["block_size"],
            attrs.get("accuracy_level", 0),
        ))  # fmt: skip
    made.append(helper.make_node("Add", [f"{y}_high", f"{y}_low"], [y], name=f"{node.name}_Add"))
    return made


def _nbits(
    name: str, inputs: list[str], output: str, k: int, n: int, bits: int, block: int, level: int
) -> onnx.NodeProto:
    attrs: dict[str, Any] = {"K": k, "N": n, "bits": bits, "block_size": block}
    if level:
        attrs["accuracy_level"] = level
    return helper.make_node(
        "MatMulNBits", inputs, [output], name=name, domain="com.microsoft", **attrs
    )
