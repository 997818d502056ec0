"""The model's graph at one concrete input shape, with every intermediate tensor's shape known.

FLOP counts and the memory estimate need the shape of each tensor at the batch size and
sequence length being measured. ONNX's own shape inference loses track of shapes computed at run
time (Shape -> Slice -> Reshape chains, common in exported transformers), so we first fix the
input shapes and fold those chains into constants with onnxscript's constant folder, which runs
ONNX shape inference node by node as it goes. What is folded away costs nothing at run time
(ONNX Runtime folds it too), so the counts describe the graph that actually runs.
"""

from __future__ import annotations

import math

import onnx_ir as ir
import onnxscript.optimizer

from inferopt import compat, external
from inferopt.model import Model


def shaped_graph(model: Model, batch: int, seq: int | None) -> ir.Graph:
    """The model's main graph with inputs fixed to (batch, seq), constants folded, and the shape
    of every value inferred where the graph allows it."""
    # A fresh IR (folding mutates it), without map types, which onnx-ir cannot read (ZipMap).
    proto = model.proto
    hidden = compat.map_types(proto)
    ir_model = external.to_ir(compat.without_types(proto, hidden) if hidden else proto)
    for value in ir_model.graph.inputs:
        spec = model.io.input(value.name or "")
        value.shape = ir.Shape(model.io.concrete_shape(spec, batch, seq or 1))
    # Drop the exporter's symbolic shapes (e.g. "batch"): inference does not overwrite them.
    # Static ones stay: they hold at any input shape, and they are all we know of the outputs
    # of ops that ONNX shape inference does not cover (ONNX Runtime's contrib ops).
    for value in (*(o for n in ir_model.graph for o in n.outputs), *ir_model.graph.outputs):
        if value.shape is not None and not value.shape.is_static():
            value.shape = None
    onnxscript.optimizer.fold_constants(ir_model, onnx_shape_inference=True)
    graph: ir.Graph = ir_model.graph
    return graph


def static_dims(value: ir.Value | None) -> tuple[int, ...] | None:
    """The value's shape as ints, or None when unknown or symbolic."""
    if value is None or value.shape is None or not value.shape.is_static():
        return None
    return tuple(d for d in value.shape.dims if isinstance(d, int))  # all are, being static


def numel(value: ir.Value | None) -> int | None:
    dims = static_dims(value)
    return None if dims is None else math.prod(dims)


def nbytes(value: ir.Value | None) -> int | None:
    """Bytes of the tensor, or None when its shape or dtype is unknown."""
    count = numel(value)
    if value is None or count is None or value.dtype is None:
        return None
    return math.ceil(count * value.dtype.itemsize)  # itemsize is fractional for 4-bit types


def is_weight(value: ir.Value) -> bool:
    """Initializers and folded constants: read by the model but not computed per run."""
    return value.const_value is not None or value.is_initializer()


def weight_bytes(graph: ir.Graph) -> int:
    """Bytes of initializers and constants in the graph (each counted once)."""
    seen: set[int] = set()
    total = 0
    for node in graph:
        for value in node.inputs:
            if value is not None and is_weight(value) and id(value) not in seen:
                seen.add(id(value))
                total += nbytes(value) or 0
    return total


def peak_live_activation_bytes(graph: ir.Graph) -> tuple[int, bool]:
    """The most activation bytes alive at once when nodes run in graph order and each tensor is
    freed after its last reader, as ONNX Runtime's memory planner does; and whether every size
    was known (False: the figure is a lower bound).

    Weights are excluded; graph inputs and outputs are included."""
    nodes = list(graph)
    last_read: dict[int, int] = {}
    for index, node in enumerate(nodes):
        for value in node.inputs:
            if value is not None:
                last_read[id(value)] = index
    known = True
    live = sum(nbytes(v) or 0 for v in graph.inputs)
    peak = live
    for index, node in enumerate(nodes):
        for out in node.outputs:
            size = nbytes(out)
            known = known and size is not None
            live += 0 if is_weight(out) else size or 0
        peak = max(peak, live)
        unique_inputs = {id(v): v for v in node.inputs if v is not None}
        for value in unique_inputs.values():
            if _freed_after(value, index, last_read):
                live -= nbytes(value) or 0
    return peak, known


def _freed_after(value: ir.Value, index: int, last_read: dict[int, int]) -> bool:
    if is_weight(value) or value.is_graph_output() or value.is_graph_input():
        return False
    return last_read.get(id(value)) == index and value.producer() is not None
