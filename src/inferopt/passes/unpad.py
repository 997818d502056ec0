"""Remove padding (`unpad`): a transformer's per-token work runs on the real tokens only.

In a padded batch most rows can be padding: 32 sentences of median 18 tokens padded to 128
are 86% padding, and every projection, feed-forward and normalization still runs on them.
Only attention mixes positions; everything between two attention nodes works token by token
("row-wise": MatMul with a constant weight, layer normalization, GELU, bias and residual
adds). This pass gathers the real tokens, those where the model's attention mask marks a
real position, into a [tokens, hidden] matrix before that row-wise work, and scatters them
back into a zero-filled [batch, seq, hidden] tensor where attention (or anything that is not
row-wise, such as mean pooling) needs the padded layout. The same idea as FasterTransformer's
"remove padding" and ONNX Runtime's CUDA-only PackedAttention, written with standard ONNX ops
(NonZero, Gather, ScatterND) so it runs on any execution provider.

Exact for real tokens: a row-wise op gives a token the same answer whatever its neighbours.
Padded positions come back as the zeros scattered there instead of what the model computed
for them, so a model whose attention does not mask padding would change; the verification
every pass gets (every row alone, and in padded batches) refuses such a model.

Pattern: a mask input (IOSpec role "mask", shape [batch, seq]) and fused `Attention` or
`MultiHeadAttention` nodes, whose input and output seed the token stream. Check: each
row-wise node's other inputs are constants of rank 0 or 1 (or a 2-D MatMul weight), and the
per-token statistics outputs of layer normalizations are unused. Rewrite: the packed nodes,
a Gather where the stream enters the packed region, a ScatterND where it leaves. It runs on
float graphs, after `fuse` and before any precision change."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from inferopt.iospec import TensorSpec
from inferopt.model import Model
from inferopt.passes import attention
from inferopt.passes.attention import MS_DOMAIN
from inferopt.passes.base import Pass, PassContext, PassResult, copy_proto, float_matrices
from inferopt.passes.quantize import unchanged

PREFIX = "unpad"
SEEDS = ("Attention", "MultiHeadAttention")  # com.microsoft: their input and output are tokens
# Row-wise ops by the inputs that carry tokens; the rest must be small constants.
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Relu", "Tanh", "Sigmoid", "Erf", "Sqrt", "Gelu"}
CONTRIB = {
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
}
NORMS = {"LayerNormalization", "SimplifiedLayerNormalization"}
# Outputs that are per-token statistics (mean, inverse std) rather than tokens.
STATISTICS = {
    "LayerNormalization": (1, 2),
    "SimplifiedLayerNormalization": (1,),
    "SkipLayerNormalization": (1, 2),
    "SkipSimplifiedLayerNormalization": (1, 2),
}


@dataclass
class _Plan:
    """Which nodes run packed, and the values that carry tokens."""

    packed: set[int] = field(default_factory=set)  # node indices
    stream: set[str] = field(default_factory=set)  # [batch, seq, ...] token values
    matmuls: int = 0


@dataclass(frozen=True)
class Unpad(Pass):
    """No options. Raises nothing of its own: a model without the pattern is returned as it
    was, with a note saying why."""

    name = "unpad"

    def run(self, model: Model, context: PassContext) -> PassResult:
        masks = _masks(model)
        if len(masks) != 1:
            return unchanged(model, context, f"pass 'unpad' changed nothing: {_why_no_mask(masks)}")
        # Split fused Attention (exact in float) so its Q/K/V projection, the largest MatMul,
        # runs on the real tokens too; a node that cannot be split stays whole.
        split = attention.split_attention(model.proto)
        proto = split.proto if split.projections else model.proto
        plan = _plan(proto)
        if plan.matmuls == 0:
            return unchanged(
                model,
                context,
                "pass 'unpad' changed nothing: no MatMul with a constant weight between fused "
                "attention nodes (run it after 'fuse', on a transformer encoder)",
            )
        rewritten = _rewrite(proto, plan, masks[0].name, masks[0].pad_value)
        report = {
            "packed_nodes": len(plan.packed),
            "packed_matmuls": plan.matmuls,
            "attention_split": sorted(split.projections),
            "attention_kept": split.kept,
        }
        return PassResult(rewritten, report)


def applies(model: Model) -> bool:
    """Whether `model` has what the pass needs before fusion: one [batch, seq] mask input and
    a MatMul with a constant weight (fused attention appears only after `fuse`)."""
    weights = float_matrices(model.proto)
    return len(_masks(model)) == 1 and any(
        n.op_type == "MatMul" and n.input[1] in weights for n in model.proto.graph.node
    )


def _masks(model: Model) -> list[TensorSpec]:
    """The model's [batch, seq] mask inputs (IOSpec role "mask")."""
    return [s for s in model.io.inputs if s.role == "mask" and len(s.shape) == 2]


def _why_no_mask(masks: list[TensorSpec]) -> str:
    if not masks:
        return "the model has no [batch, seq] attention mask input to find the real tokens"
    return "the model has more than one [batch, seq] mask input; which marks the tokens is unclear"


def _constants(proto: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Shapes of the initializers and Constant nodes' tensors, by name."""
    shapes = {i.name: tuple(i.dims) for i in proto.graph.initializer}
    for node in proto.graph.node:
        tensor = [a.t for a in node.attribute if a.type == onnx.AttributeProto.TENSOR]
        if node.op_type == "Constant" and tensor:
            shapes[node.output[0]] = tuple(tensor[0].dims)
    return shapes


def _plan(proto: onnx.ModelProto) -> _Plan:
    """The packable nodes, in one pass over the graph in topological order."""
    constants = _constants(proto)
    weights = float_matrices(proto)
    plan = _Plan()
    used = {i for n in proto.graph.node for i in n.input} | {o.name for o in proto.graph.output}
    plan.stream.update(_seeds(proto))
    for index, node in enumerate(proto.graph.node):
        if _row_wise(node, plan.stream, constants, weights, used):
            plan.packed.add(index)
            plan.stream.update(_token_outputs(node))
            plan.matmuls += node.op_type == "MatMul"
    return plan


def _seeds(proto: onnx.ModelProto) -> set[str]:
    """Values known to carry tokens: each attention node's output and its input, where a
    split attention's input is the one its Q/K/V projection MatMul reads (passes/attention.py:
    MatMul -> Split -> MultiHeadAttention)."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    seeds: set[str] = set()
    for node in proto.graph.node:
        if node.domain != MS_DOMAIN or node.op_type not in SEEDS:
            continue
        seeds.update([node.input[0], node.output[0]])
        split = producer.get(node.input[0])
        projection = producer.get(split.input[0]) if split and split.op_type == "Split" else None
        if projection is not None and projection.op_type == "MatMul":
            seeds.add(projection.input[0])
    return seeds


def _row_wise(
    node: onnx.NodeProto,
    stream: set[str],
    constants: dict[str, tuple[int, ...]],
    weights: set[str],
    used: set[str],
) -> bool:
    """The check: a row-wise op whose token inputs are in the stream and whose other inputs
    are constants that broadcast along the last axis only (a MatMul's: its 2-D weight)."""
    if node.domain == "" and node.op_type == "MatMul":
        return node.input[0] in stream and node.input[1] in weights
    kinds = ELEMENTWISE | NORMS if node.domain == "" else CONTRIB
    if node.domain not in ("", MS_DOMAIN) or node.op_type not in kinds:
        return False
    inputs = [i for i in node.input if i]
    others = [i for i in inputs if i not in stream]
    if len(others) == len(inputs) or not all(_broadcasts_per_row(i, constants) for i in others):
        return False
    if node.op_type in NORMS and _axis(node) not in (-1, None):
        return False
    statistics = STATISTICS.get(node.op_type, ())
    return not any(i < len(node.output) and node.output[i] in used for i in statistics)


def _broadcasts_per_row(name: str, constants: dict[str, tuple[int, ...]]) -> bool:
    """A constant of rank <= 1: the same for every token, so packing rows cannot change it.
    Values computed at run time (absent from `constants`) are refused."""
    return name in constants and len(constants[name]) <= 1


def _axis(node: onnx.NodeProto) -> int | None:
    for a in node.attribute:
        if a.name == "axis":
            return int(a.i)
    return None


def _token_outputs(node: onnx.NodeProto) -> list[str]:
    statistics = STATISTICS.get(node.op_type, ())
    return [o for i, o in enumerate(node.output) if o and i not in statistics]


class _Builder:
    """The nodes and constants the rewrite adds, named under PREFIX so they never collide."""

    def __init__(self, mask: str, pad_value: float) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[onnx.TensorProto] = []
        self._count = 0
        flat = self._node("Reshape", [mask, self._int64("flat", [-1])])
        real = self._node("Cast", [flat], to=onnx.TensorProto.BOOL)
        if pad_value != 0:  # True marks padding (PyTorch's key_padding_mask)
            real = self._node("Not", [real])
        found = self._node("NonZero", [real])  # [1, tokens]
        self.index = self._node("Reshape", [found, self._int64("flat1", [-1])])  # [tokens]
        self.rows = self._node("Transpose", [found], perm=[1, 0])  # [tokens, 1]
        self.total = self._node("Reshape", [self._node("Size", [mask]), self._int64("one", [1])])
        self.padded_shape = self._node("Shape", [mask])  # [batch, seq]

    def _name(self, what: str) -> str:
        self._count += 1
        return f"{PREFIX}/{what}_{self._count}"

    def _int64(self, what: str, values: list[int]) -> str:
        name = self._name(what)
        self.constants.append(numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    def _node(self, op: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        out = output or self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def pack(self, value: str) -> str:
        """[batch, seq, width] -> [tokens, width]: the real tokens' rows."""
        rows = self._node("Flatten", [value], axis=2)
        return self._node("Gather", [rows, self.index], f"{value}/{PREFIX}", axis=0)

    def unpack(self, packed: str, value: str) -> None:
        """[tokens, width] -> [batch, seq, width] named `value`, zeros at padded positions."""
        width = self._node("Shape", [packed], start=1)
        flat_shape = self._node("Concat", [self.total, width], axis=0)
        zero = numpy_helper.from_array(np.zeros(1, np.float32))
        zeros = self._node("ConstantOfShape", [flat_shape], value=zero)
        flat = self._node("ScatterND", [zeros, self.rows, packed])
        shape = self._node("Concat", [self.padded_shape, width], axis=0)
        self._node("Reshape", [flat, shape], value)

    def take(self) -> list[onnx.NodeProto]:
        nodes, self.nodes = self.nodes, []
        return nodes


def _rewrite(proto: onnx.ModelProto, plan: _Plan, mask: str, pad_value: float) -> onnx.ModelProto:
    """The graph with the planned nodes on packed tokens, Gather where the token stream
    enters them and ScatterND where a value leaves for a node that needs the padded layout."""
    out = copy_proto(proto)
    nodes = list(out.graph.node)
    outside = _needed_outside(nodes, plan.packed, {o.name for o in out.graph.output})
    build = _Builder(mask, pad_value)
    result = build.take()
    packed: dict[str, str] = {}
    for index, node in enumerate(nodes):
        if index not in plan.packed:
            result.append(node)
            continue
        for k, name in enumerate(node.input):
            if name in plan.stream:
                if name not in packed:
                    packed[name] = build.pack(name)
                node.input[k] = packed[name]
        result += build.take()
        tokens = set(_token_outputs(node))
        for k, name in enumerate(node.output):
            if name in tokens:
                packed[name] = node.output[k] = f"{name}/{PREFIX}"
        result.append(node)
        for name in tokens & outside:
            build.unpack(packed[name], name)
        result += build.take()
    del out.graph.node[:]
    out.graph.node.extend(result)
    out.graph.initializer.extend(build.constants)
    return out


def _needed_outside(
    nodes: Iterable[onnx.NodeProto], packed: set[int], graph_outputs: set[str]
) -> set[str]:
    """Values read by a node that is not packed, or returned by the graph."""
    return graph_outputs | {
        name for i, n in enumerate(nodes) if i not in packed for name in n.input if name
    }
