"""Sibling MatMuls packed into one: the weights that read the same activation (a decoder
layer's query, key and value projections; its gate and up projections) concatenated along N,
one MatMul over them, and a Split giving each consumer its old output.

Why: at batch 1 a decoder's quantized MatMuls are small (SmolLM2's key and value projections
are 576x192), and on a 2-core CPU each ONNX Runtime node costs a fixed few microseconds of
dispatch and thread-pool hand-off on top of its bytes. Packing turns 7 weight MatMuls a layer
into 4. ORT GenAI's model builder packs the same siblings in its quantized graphs.

The values are unchanged: every quantizer here (RTN, the float-zero-point offset form, HQQ,
k-quant, GPTQ) works per output column, in blocks along K, and GPTQ's Hessian comes from the
shared input, so a packed weight quantizes to the same codes and scales as its parts.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

PACKED = "_Packed"  # suffix of a packed MatMul's name
MIN_SPLIT_OPSET = 13  # Split takes its sizes as an input from opset 13 on


def pack_siblings(model: onnx.ModelProto, nodes: Iterable[str]) -> tuple[onnx.ModelProto, set[str]]:
    """`model` with the MatMuls named in `nodes` that share their first input and their K
    packed into one MatMul each (float32 weight [K, sum of N], followed by a Split on the
    last axis into the old outputs). The packed MatMul sits where the first of its siblings
    did, so the graph stays in topological order.

    Returns the model (changed in place) and the names to quantize in place of `nodes`:
    the unpacked ones and the packed ones. A model whose default-domain opset is under 13
    is returned unchanged, and so is a MatMul whose weight another node also reads.
    """
    wanted = set(nodes)
    if _opset(model) < MIN_SPLIT_OPSET:
        return model, wanted
    inits = {i.name: i for i in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    groups: dict[tuple[str, int], list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        # A weight another node also reads (a tied embedding) stays whole: packing would copy it.
        if node.op_type == "MatMul" and node.name in wanted and readers[node.input[1]] == 1:
            groups.setdefault((node.input[0], inits[node.input[1]].dims[0]), []).append(node)
    # Nodes are told apart by their output, unique in an ONNX graph.
    packs = {g[0].output[0]: g for g in groups.values() if len(g) > 1}
    members = {n.output[0] for g in packs.values() for n in g}
    kept: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.output[0] in packs:
            kept.extend(_packed(model, packs[node.output[0]], inits))
        elif not (node.op_type == "MatMul" and node.output[0] in members):
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    packed_names = {_name(g[0]) for g in packs.values()}
    return model, (wanted - {n.name for g in packs.values() for n in g}) | packed_names


def _packed(
    model: onnx.ModelProto, siblings: list[onnx.NodeProto], inits: dict[str, onnx.TensorProto]
) -> list[onnx.NodeProto]:
    weights = [numpy_helper.to_array(inits[n.input[1]]) for n in siblings]
    name = _name(siblings[0])
    model.graph.initializer.extend([
        numpy_helper.from_array(np.concatenate(weights, axis=1), f"{name}_weight"),
        numpy_helper.from_array(np.array([w.shape[1] for w in weights], np.int64), f"{name}_split"),
    ])  # fmt: skip
    return [
        helper.make_node(
            "MatMul", [siblings[0].input[0], f"{name}_weight"], [f"{name}_out"], name=name
        ),
        helper.make_node(
            "Split", [f"{name}_out", f"{name}_split"], [n.output[0] for n in siblings],
            name=f"{name}_Split", axis=-1,
        ),
    ]  # fmt: skip


def _name(first: onnx.NodeProto) -> str:
    """The packed node's name: its first sibling's, or that one's output (always unique) when
    the exporter left nodes unnamed."""
    return (first.name or first.output[0]) + PACKED


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
