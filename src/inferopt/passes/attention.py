"""Split ONNX Runtime's fused `Attention` into its input projection (a plain MatMul) and the
attention core (`MultiHeadAttention`), so that int8 quantizes the projection and the core keeps
every mask.

Why: ORT's dynamic quantizer turns `Attention` into `QAttention`, copying inputs 0-4 and
dropping the rest without a word. onnxscript's fusion carries the padding mask as
`attention_bias` (input 5), so the quantized model attends to padding: exact at batch 1, but a
row padded beside a longer one drifts (on minilm, down to cosine 0.26 to itself alone).
`QAttention` has no input for an additive bias. The split is exact in float: `Attention` is
MatMul(x, W), plus the bias, split into Q, K and V, then the same core `MultiHeadAttention`
runs, which takes the bias, the key padding mask and the attention bias as they are.

Each node goes through pattern (an `Attention` node) / check (nothing the split cannot carry)
/ rewrite; a node whose check fails is left whole and the reason is returned, so the caller
keeps it in float and says why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

MS_DOMAIN = "com.microsoft"
# Attention's inputs by position (ORT contrib op schema).
INPUT, WEIGHTS, BIAS, MASK_INDEX, PAST, ATTENTION_BIAS, PAST_SEQUENCE_LENGTH = range(7)
# Attributes MultiHeadAttention understands the same way; any other set attribute stops the split.
CARRIED = ("num_heads", "scale", "mask_filter_value", "unidirectional")
# Attributes that are harmless at their default value.
DEFAULTS = {"do_rotary": 0, "past_present_share_buffer": 0, "rotary_embedding_dim": 0}
# Raw masks (batch, total_seq) and (batch, seq, total_seq) mean the same in both ops; the 1-D
# index forms and the 4-D form are read differently or not at all by MultiHeadAttention.
MASK_RANKS = (2, 3)


@dataclass(frozen=True)
class Split:
    """The rewritten model; `projections` maps each split Attention node to the name of its new
    projection MatMul (the node int8 quantizes); `kept` maps each Attention node left whole to
    the reason."""

    proto: onnx.ModelProto
    projections: dict[str, str] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)


def is_attention(node: onnx.NodeProto) -> bool:
    """The pattern: ORT's fused Attention op."""
    return node.op_type == "Attention" and node.domain == MS_DOMAIN


def _input(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _section_sizes(node: onnx.NodeProto, weights: tuple[int, ...]) -> list[int] | str:
    """Q, K and V widths (columns of the weights, shape `weights`), or why they cannot be had."""
    if len(weights) != 2:
        return f"weights of shape {list(weights)} are not a matrix"
    sizes = _attributes(node).get("qkv_hidden_sizes")
    if sizes is not None:
        widths = [int(s) for s in sizes]
        if len(widths) != 3 or widths[0] != widths[1] or sum(widths) != weights[1]:
            return f"qkv_hidden_sizes {widths} do not split {weights[1]} columns as Q = K, V"
        return widths
    if weights[1] % 3:
        return f"weights of shape {list(weights)} are not (in, 3 * hidden)"
    return [weights[1] // 3] * 3


def check(
    node: onnx.NodeProto, weights: tuple[int, ...] | None, ranks: dict[str, int], opset: int
) -> str | None:
    """None when the node can be split exactly; else the reason it cannot. `weights` is the
    shape of its constant weights (None when computed), `ranks` the known ranks of graph
    values, `opset` the model's default-domain opset."""
    if weights is None:
        return "its weights are computed, not constant: there is nothing to quantize"
    if opset < 13:
        return f"the model's opset {opset} is below 13 (Split takes its sizes as an input from 13)"
    if _input(node, PAST) or _input(node, PAST_SEQUENCE_LENGTH):
        return "it carries a past key/value state, which MultiHeadAttention lays out differently"
    if any(node.output[1:]):
        return "its present (key/value cache) output is used"
    for name, value in _attributes(node).items():
        if name not in CARRIED and name != "qkv_hidden_sizes" and value != DEFAULTS.get(name):
            return f"attribute {name}={value} has no MultiHeadAttention equivalent"
    mask = _input(node, MASK_INDEX)
    if mask and ranks.get(mask) not in MASK_RANKS:
        rank = ranks.get(mask)
        form = "of unknown rank" if rank is None else f"of rank {rank}"
        return f"its mask_index {mask!r} is {form}; only 2-D and 3-D raw masks carry over"
    sizes = _section_sizes(node, weights)
    return sizes if isinstance(sizes, str) else None


def rewrite(
    node: onnx.NodeProto, sizes: list[int]
) -> tuple[list[onnx.NodeProto], onnx.TensorProto]:
    """MatMul -> Split -> MultiHeadAttention computing what `node` did, and the Split's sizes."""
    base = node.name or node.output[0]
    projected, sections = f"{base}/qkv", [f"{base}/{part}" for part in "qkv"]
    split_sizes = numpy_helper.from_array(np.array(sizes, dtype=np.int64), f"{base}/qkv_sizes")
    attributes = {k: v for k, v in _attributes(node).items() if k in CARRIED}
    core_inputs = [
        *sections,
        _input(node, BIAS),
        _input(node, MASK_INDEX),
        _input(node, ATTENTION_BIAS),
    ]
    nodes = [
        helper.make_node(
            "MatMul",
            [node.input[INPUT], node.input[WEIGHTS]],
            [projected],
            name=f"{base}/projection",
        ),
        helper.make_node(
            "Split", [projected, split_sizes.name], sections, name=f"{base}/split", axis=-1
        ),
        helper.make_node(
            "MultiHeadAttention",
            _trim(core_inputs),
            [node.output[0]],
            name=f"{base}/core",
            domain=MS_DOMAIN,
            **attributes,
        ),
    ]
    return nodes, split_sizes


def _trim(inputs: list[str]) -> list[str]:
    while inputs and not inputs[-1]:
        inputs.pop()
    return inputs


def _ranks(proto: onnx.ModelProto) -> dict[str, int]:
    """Known ranks of graph values (inputs, initializers, and what shape inference finds)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # contrib ops or a >2 GB model: fall back to declared shapes
        inferred = proto
    ranks = {i.name: len(i.dims) for i in proto.graph.initializer}
    for info in (*inferred.graph.input, *inferred.graph.value_info):
        if info.type.tensor_type.HasField("shape"):
            ranks[info.name] = len(info.type.tensor_type.shape.dim)
    return ranks


def _default_opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def split_attention(proto: onnx.ModelProto) -> Split:
    """Split every Attention node that passes `check`; `proto` is left unchanged."""
    if not any(is_attention(n) for n in proto.graph.node):
        return Split(proto)
    new = onnx.ModelProto()
    new.CopyFrom(proto)
    del new.graph.node[:]
    shapes = {i.name: tuple(i.dims) for i in proto.graph.initializer}
    ranks = _ranks(proto) if any(_input(n, MASK_INDEX) for n in proto.graph.node) else {}
    opset = _default_opset(proto)
    projections: dict[str, str] = {}
    kept: dict[str, str] = {}
    for node in proto.graph.node:
        if not is_attention(node):
            new.graph.node.append(node)
            continue
        result = _split_one(node, shapes.get(node.input[WEIGHTS]), ranks, opset)
        if isinstance(result, str):
            kept[node.name] = result
            new.graph.node.append(node)
            continue
        replacement, split_sizes = result
        new.graph.node.extend(replacement)
        new.graph.initializer.append(split_sizes)
        projections[node.name] = replacement[0].name
    return Split(new, projections, kept)


def _split_one(
    node: onnx.NodeProto, weights: tuple[int, ...] | None, ranks: dict[str, int], opset: int
) -> tuple[list[onnx.NodeProto], onnx.TensorProto] | str:
    """The rewrite of one Attention node, or the reason its check failed."""
    reason = check(node, weights, ranks, opset)
    if reason is not None or weights is None:  # (weights: the check already said so)
        return reason or "no constant weights"
    sizes = _section_sizes(node, weights)
    return sizes if isinstance(sizes, str) else rewrite(node, sizes)
