"""FLOPs and MACs of a graph at concrete input shapes, per op type, plus the ops not counted.

Conventions (docs/profile.md has the full table):
- A multiply-accumulate (MAC) is 2 FLOPs. MatMul-like ops and convolutions count their MACs; a
  bias add counts 1 FLOP per output element; alpha/beta scalings are not counted.
- Attention ops count both products (Q.K^T and P.V) as MACs, and 6 FLOPs per score for the
  scaling and the numerically stable softmax.
- Elementwise ops count their cost per output element from the table below (a transcendental
  such as exp or erf counts as 1); reductions count per input element; pooling per window element.
- Ops that only move or reshape data (Reshape, Transpose, Gather, ...) are 0 FLOPs by definition.
- Everything else, and any node whose shapes stay unknown, is "not counted" and listed, so a
  reader knows what the total leaves out.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import onnx_ir as ir

from inferopt.measure.graph import is_weight, nbytes, numel, static_dims, weight_bytes
from inferopt.report.schema import Compute, OpCount

MS = "com.microsoft"  # ONNX Runtime's contrib-op domain (fused ops in optimized graphs)


@dataclass(frozen=True)
class NodeCost:
    macs: int
    flops: int
    integer: bool = False  # MACs on quantized (integer) operands


CostFn = Callable[[ir.Node], NodeCost | None]  # None: a needed shape is unknown


def _names(words: str) -> tuple[str, ...]:
    """Op names from a space-separated list: long tables read better as words than quotes."""
    return tuple(words.split())


# FLOPs per output element. Composite ops are costed as their usual decomposition:
# Softmax = max, subtract, exp, sum, divide; LayerNormalization = mean, subtract, square,
# mean, normalize, scale, shift; Gelu = divide, erf, add, multiply, multiply.
PER_OUTPUT_ELEMENT: dict[str, int] = {
    **dict.fromkeys(
        _names(
            "Add Sub Mul Div Pow Sqrt Reciprocal Neg Abs Exp Log Erf Tanh Sigmoid Relu LeakyRelu "
            "Clip Max Min Mean Sum Where Equal Less Greater LessOrEqual GreaterOrEqual And Or Not "
            "Xor IsNaN IsInf Sign Floor Ceil Round Mod Sin Cos Elu Selu Softplus PRelu HardSigmoid "
            "ThresholdedRelu Celu Mish BitShift"
        ),
        1,
    ),
    "HardSwish": 3,
    "QuickGelu": 3,
    "BatchNormalization": 4,  # inference form: subtract, scale by 1/sqrt(var), scale, shift
    "Softmax": 5,
    "LogSoftmax": 5,
    "Gelu": 5,
    "BiasGelu": 6,
    "FastGelu": 8,  # tanh approximation
    "LayerNormalization": 7,
    "SkipLayerNormalization": 8,  # plus the residual add
    "SimplifiedLayerNormalization": 4,  # RMS norm: square, mean, normalize, scale
    "RMSNormalization": 4,
    "SkipSimplifiedLayerNormalization": 5,
    "InstanceNormalization": 7,
    "GroupNormalization": 7,
    "QuantizeLinear": 2,
    "DequantizeLinear": 2,
    "DynamicQuantizeLinear": 4,
}
# FLOPs per input element (one accumulation each; L2 and sum-of-squares also square).
PER_INPUT_ELEMENT: dict[str, int] = {
    **dict.fromkeys(
        _names(
            "ReduceSum ReduceMean ReduceMax ReduceMin ReduceProd ReduceL1 ReduceLogSumExp "
            "ArgMax ArgMin GlobalAveragePool GlobalMaxPool"
        ),
        1,
    ),
    "ReduceL2": 2,
    "ReduceSumSquare": 2,
}
ZERO_FLOP = frozenset(
    _names(
        "Reshape Transpose Gather GatherND GatherElements Slice Concat Split Squeeze Unsqueeze "
        "Expand Shape Size Identity Cast CastLike Constant ConstantOfShape Flatten Pad Tile Range "
        "Dropout ScatterND ScatterElements DepthToSpace SpaceToDepth OneHot NonZero Trilu "
        "EyeLike"
    )
)


def _out(node: ir.Node, index: int = 0) -> ir.Value | None:
    return node.outputs[index] if len(node.outputs) > index else None


def _in(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if len(node.inputs) > index else None


def _matmul(a: int, b: int, integer: bool = False) -> CostFn:
    """MatMul-like: every output element is a dot product over A's last axis (K)."""

    def count(node: ir.Node) -> NodeCost | None:
        a_dims, out = static_dims(_in(node, a)), numel(_out(node))
        if a_dims is None or out is None or static_dims(_in(node, b)) is None:
            return None
        trans_a = node.attributes.get_int("transA", 0)  # FusedMatMul's transposed A
        k = a_dims[-2] if trans_a and len(a_dims) > 1 else a_dims[-1]
        return NodeCost(out * k, 2 * out * k, integer)

    return count


def _gemm(node: ir.Node) -> NodeCost | None:
    a_dims, out = static_dims(_in(node, 0)), numel(_out(node))
    if a_dims is None or out is None:
        return None
    k = a_dims[0] if node.attributes.get_int("transA", 0) else a_dims[1]
    bias = out if _in(node, 2) is not None else 0
    return NodeCost(out * k, 2 * out * k + bias)


def _conv(w: int, bias: int | None, integer: bool = False) -> CostFn:
    """Conv: each output element sums (C_in / group) x kernel products; W is (C_out,
    C_in/group, k...), so that count is the product of W's dims after the first."""

    def count(node: ir.Node) -> NodeCost | None:
        w_dims, out = static_dims(_in(node, w)), numel(_out(node))
        if w_dims is None or out is None:
            return None
        macs = out * math.prod(w_dims[1:])
        has_bias = bias is not None and _in(node, bias) is not None
        return NodeCost(macs, 2 * macs + (out if has_bias else 0), integer)

    return count


def _conv_transpose(node: ir.Node) -> NodeCost | None:
    """ConvTranspose scatters each input element through (C_out / group) x kernel weights; W is
    (C_in, C_out/group, k...)."""
    x_count, w_dims, out = numel(_in(node, 0)), static_dims(_in(node, 1)), numel(_out(node))
    if x_count is None or w_dims is None or out is None:
        return None
    macs = x_count * math.prod(w_dims[1:])
    return NodeCost(macs, 2 * macs + (out if _in(node, 2) is not None else 0))


def _attention_cost(q_count: int, y_count: int, head_dim: int, kv_len: int) -> NodeCost:
    """Q.K^T has (scores x head_dim) MACs, P.V (output elements x kv_len); scores =
    (Q elements / head_dim) x kv_len get a scale and a softmax (6 FLOPs each)."""
    scores = q_count // head_dim * kv_len
    macs = scores * head_dim + y_count * kv_len
    return NodeCost(macs, 2 * macs + 6 * scores)


def _onnx_attention(node: ir.Node) -> NodeCost | None:
    """ONNX Attention (opset 23): Q (B, Hq, S, D) or (B, S, Hq*D); K likewise, with past_key
    (input 4) prepended along the sequence."""
    q, k, y = static_dims(_in(node, 0)), static_dims(_in(node, 1)), static_dims(_out(node))
    if q is None or k is None or y is None:
        return None
    heads = node.attributes.get_int("q_num_heads", 1) if len(q) == 3 else q[1]
    head_dim = q[-1] // heads if len(q) == 3 else q[-1]
    kv_len = k[-2] if len(k) == 4 else k[1]
    past = static_dims(_in(node, 4))
    kv_len += past[-2] if past is not None else 0
    return _attention_cost(math.prod(q), math.prod(y), head_dim, kv_len)


def _ms_multihead_attention(node: ir.Node) -> NodeCost | None:
    """com.microsoft MultiHeadAttention with separate 3-D query (B, S, D) and key (B, L, D)."""
    q, k, y = static_dims(_in(node, 0)), static_dims(_in(node, 1)), static_dims(_out(node))
    if q is None or k is None or y is None or len(q) != 3 or len(k) != 3:
        return None  # packed QKV layouts: not counted rather than guessed
    heads = node.attributes.get_int("num_heads", 1)
    return _attention_cost(math.prod(q), math.prod(y), q[-1] // heads, k[1])


def _ms_attention(node: ir.Node) -> NodeCost | None:
    """com.microsoft Attention: input (B, S, Din) projected by weights (Din, 3*D), then self-
    attention over the same S positions."""
    x, w, y = static_dims(_in(node, 0)), static_dims(_in(node, 1)), static_dims(_out(node))
    if x is None or w is None or y is None or _in(node, 4) is not None:
        return None  # with a past state the key length is not the query's
    heads = node.attributes.get_int("num_heads", 1)
    projection = math.prod(x) * w[1]
    q_count = math.prod(y)  # the query has the output's shape (B, S, D)
    core = _attention_cost(q_count, q_count, y[-1] // heads, x[1])
    return NodeCost(core.macs + projection, core.flops + 2 * projection)


def _pool(node: ir.Node) -> NodeCost | None:
    out = numel(_out(node))
    kernel = node.attributes.get_ints("kernel_shape", None)
    if out is None or kernel is None:
        return None
    return NodeCost(0, out * math.prod(kernel))


COUNTERS: dict[tuple[str, str], CostFn] = {
    ("", "MatMul"): _matmul(0, 1),
    ("", "Gemm"): _gemm,
    ("", "Conv"): _conv(1, 2),
    ("", "ConvTranspose"): _conv_transpose,
    ("", "MatMulInteger"): _matmul(0, 1, integer=True),
    ("", "QLinearMatMul"): _matmul(0, 3, integer=True),
    ("", "ConvInteger"): _conv(1, None, integer=True),
    ("", "QLinearConv"): _conv(3, 8, integer=True),
    ("", "Attention"): _onnx_attention,
    ("", "MaxPool"): _pool,
    ("", "AveragePool"): _pool,
    ("", "LpPool"): _pool,
    (MS, "FusedMatMul"): _matmul(0, 1),
    (MS, "MatMulIntegerToFloat"): _matmul(0, 1, integer=True),
    (MS, "DynamicQuantizeMatMul"): _matmul(0, 1, integer=True),
    (MS, "MultiHeadAttention"): _ms_multihead_attention,
    (MS, "Attention"): _ms_attention,
}


def node_cost(node: ir.Node) -> NodeCost | None:
    """The node's cost, or None when it is not counted (no formula, or shapes unknown)."""
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    counter = COUNTERS.get((domain, node.op_type))
    if counter is not None:
        return counter(node)
    if node.op_type in ZERO_FLOP:
        return NodeCost(0, 0)
    if node.op_type in PER_OUTPUT_ELEMENT:
        out = numel(_out(node))
        return None if out is None else NodeCost(0, PER_OUTPUT_ELEMENT[node.op_type] * out)
    if node.op_type in PER_INPUT_ELEMENT:
        count = numel(_in(node, 0))
        return None if count is None else NodeCost(0, PER_INPUT_ELEMENT[node.op_type] * count)
    return None


def count_compute(graph: ir.Graph, batch: int, seq: int | None) -> Compute:
    """FLOPs and MACs per op type over the graph's nodes, at the shapes `graph` was built for."""
    nodes: Counter[str] = Counter()
    flops: Counter[str] = Counter()
    macs: Counter[str] = Counter()
    not_counted: Counter[str] = Counter()
    int_macs = 0
    for node in graph:
        cost = node_cost(node)
        if cost is None:
            not_counted[node.op_type] += 1
            continue
        nodes[node.op_type] += 1
        flops[node.op_type] += cost.flops
        macs[node.op_type] += cost.macs
        int_macs += cost.macs if cost.integer else 0
    by_type = sorted(
        (OpCount(op, nodes[op], flops[op], macs[op]) for op in nodes),
        key=lambda c: (-c.flops, c.op_type),
    )
    total_macs = sum(macs.values())
    return Compute(
        batch=batch,
        seq=seq,
        total_flops=sum(flops.values()),
        total_macs=total_macs,
        float_macs=total_macs - int_macs,
        int_macs=int_macs,
        traffic_bytes=traffic_bytes(graph),
        by_op_type=tuple(by_type),
        not_counted=dict(sorted(not_counted.items())),
    )


def traffic_bytes(graph: ir.Graph) -> int:
    """A no-cache estimate of memory traffic per run: weights read once, graph inputs read once,
    every computed tensor written once and read once. A table read only by Gather (an
    embedding) counts as the rows gathered, which are its output, not the whole table."""
    computed = sum(nbytes(out) or 0 for node in graph for out in node.outputs if not is_weight(out))
    inputs = sum(nbytes(v) or 0 for v in graph.inputs)
    return weight_bytes(graph) - _gathered_table_bytes(graph) + inputs + 2 * computed


def _gathered_table_bytes(graph: ir.Graph) -> int:
    tables: dict[int, ir.Value] = {}
    for node in graph:
        table = _in(node, 0)
        if node.op_type == "Gather" and table is not None and is_weight(table):
            tables[id(table)] = table
    return sum(
        nbytes(t) or 0
        for t in tables.values()
        if all(use.node.op_type == "Gather" and use.idx == 0 for use in t.uses())
    )
