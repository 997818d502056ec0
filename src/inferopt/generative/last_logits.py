"""Logits of the last position only: a rewrite of a decoder graph for serving.

A decoder's graph computes logits for every position it is fed, [batch, seq, vocab]. A prefill
of n prompt tokens then multiplies n rows by the lm_head, [hidden, vocab], and writes n * vocab
floats, although generation reads only the last row. On smollm2-135m the lm_head holds a fifth
of the weights (576 x 49152), so it is about a fifth of every prefill's arithmetic; on small
models with large vocabularies it is most of it. vLLM computes the lm_head on each sequence's
last prompt token only, for the same reason.

Pattern: the lm_head subgraph between the last normalization (its output 0, the final hidden
state [batch, seq, hidden]) and the graph output `logits`. Check: the walk back from `logits`
meets exactly one normalization within a few nodes, and no attention or graph input on the
way. Rewrite: a Gather of position -1 on axis 1 after the normalization, read by the lm_head
nodes instead, so `logits` becomes [batch, 1, vocab]. Decoding feeds one position, so it is
unchanged; a prefill's last row is the same numbers as before.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from inferopt.errors import InputError

NORMS = frozenset({
    "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "LayerNormalization",
    "SkipLayerNormalization", "RMSNormalization",
})  # fmt: skip
_MAX_HEAD_NODES = 16  # the lm_head subgraphs we write (MatMul, MatMulNBits planes, offsets)
_GATHERED = "last_position/hidden"
_INDEX = "last_position/index"


def last_position_logits(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose `logits` output is [batch, 1, vocab], the last position's.

    Weights are not copied from external data: the returned proto still refers to the same
    files (load it with create_session(..., data_dir=folder)).

    Raises:
        InputError: no `logits` output, or the lm_head does not start at one normalization
            (the message says what the walk found).
    """
    graph = model.graph
    head, hidden = _lm_head(graph)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = out.graph.node
    for index in head:
        node = nodes[index]
        node.input[:] = [_GATHERED if name == hidden else name for name in node.input]
    gather = helper.make_node("Gather", [hidden, _INDEX], [_GATHERED], name="last_position",
                              axis=1)  # fmt: skip
    nodes.insert(min(head), gather)  # before its first reader: nodes stay in topological order
    out.graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), _INDEX))
    logits = next(o for o in out.graph.output if o.name == "logits")
    dims = logits.type.tensor_type.shape.dim
    if len(dims) == 3:
        dims[1].Clear()
        dims[1].dim_value = 1
    return out


def _lm_head(graph: onnx.GraphProto) -> tuple[set[int], str]:
    """Indices of the nodes between the last normalization and `logits`, and the normalization's
    output they read. Raises InputError (see last_position_logits)."""
    if "logits" not in {o.name for o in graph.output}:
        raise InputError("the graph has no output named logits")
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output}
    initializers = {i.name for i in graph.initializer}
    head: set[int] = set()
    hidden: set[str] = set()
    todo = ["logits"]
    while todo:
        name = todo.pop()
        index = producer.get(name)
        if index is None:
            if name and name not in initializers:
                raise InputError(f"the lm_head reads graph input {name!r} before any norm")
            continue
        node = graph.node[index]
        if node.op_type in NORMS:
            if list(node.output).index(name) != 0:
                raise InputError(f"the lm_head reads output {name!r}, not a normalized state")
            hidden.add(name)
            continue
        if "Attention" in node.op_type or len(head) >= _MAX_HEAD_NODES:
            raise InputError(f"no normalization within {len(head)} nodes before logits")
        if index not in head:
            head.add(index)
            todo.extend(node.input)
    if len(hidden) != 1:
        raise InputError(f"the lm_head reads {len(hidden)} normalizations, not one")
    return head, hidden.pop()
