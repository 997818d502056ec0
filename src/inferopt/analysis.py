"""What a model's graph tells about its inputs, before anything runs: which integer inputs
index a constant table (and how many rows it has), which scalars are compared with which
constants, which inputs are recurrent states or images, and each input's batch axis. The
first guesses `inferopt.discovery` confirms by running the model."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import onnx
from onnx import numpy_helper

from inferopt.iospec import IOSpec, TensorSpec

# Ops that carry an id through unchanged (its value still indexes the same table).
_PASS_THROUGH = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand"}
_PASS_THROUGH |= {"Transpose", "Slice", "Concat", "Tile", "Clip"}
_COMPARISONS = {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"}
_STATE_WORDS = ("state", "past", "cache", "h0", "c0")


class Graph:
    """Who consumes each value (subgraphs of If/Loop/Scan included: they read outer values)
    and the constant tensors, for tracing inputs to the ops that use them."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.constants: dict[str, onnx.TensorProto] = {}
        self._walk(proto.graph)

    def _walk(self, graph: onnx.GraphProto) -> None:
        for init in graph.initializer:
            self.constants[init.name] = init
        for node in graph.node:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
            for name in node.output:
                self.producer[name] = node
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = node.attribute[0].t
            for attr in node.attribute:
                for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                    self._walk(sub)

    def shape_of_constant(self, name: str) -> tuple[int, ...] | None:
        """The shape of a constant, seen through Cast and DequantizeLinear (a bf16 or int8
        table is still the table)."""
        for _ in range(4):
            if name in self.constants:
                return tuple(self.constants[name].dims)
            node = self.producer.get(name)
            if node is None or node.op_type not in ("Cast", "DequantizeLinear", "Identity"):
                return None
            name = node.input[0]
        return None

    def scalar_constant(self, name: str) -> float | None:
        tensor = self.constants.get(name)
        if tensor is None:
            return None
        values = numpy_helper.to_array(tensor)
        return float(values.reshape(-1)[0]) if values.size == 1 else None

    def reach(self, start: str) -> Iterator[tuple[str, onnx.NodeProto]]:
        """(value, consumer) for `start` and every value it flows into unchanged."""
        seen, queue = {start}, [start]
        while queue:
            value = queue.pop()
            for node in self.consumers.get(value, []):
                yield value, node
                if node.op_type in _PASS_THROUGH:
                    for out in node.output:
                        if out not in seen:
                            seen.add(out)
                            queue.append(out)


def table_size(graph: Graph, name: str) -> int | None:
    """The rows of the smallest constant table the integer input `name` indexes (Gather's
    data size along its axis), or None when it indexes none."""
    sizes = []
    for value, node in graph.reach(name):
        if node.op_type != "Gather" or len(node.input) < 2 or node.input[1] != value:
            continue
        shape = graph.shape_of_constant(node.input[0])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if shape:
            sizes.append(shape[axis % len(shape)])
    return min(sizes) if sizes else None


def compared_with(graph: Graph, name: str) -> list[float]:
    """Constants the input is compared with (Silero VAD's `sr == 16000`, say), in graph
    order: the values a scalar setting is meant to take."""
    found: list[float] = []
    for value, node in graph.reach(name):
        if node.op_type not in _COMPARISONS:
            continue
        for other in node.input:
            constant = graph.scalar_constant(other) if other != value else None
            if constant is not None and constant not in found:
                found.append(constant)
    return found


def analyse(proto: onnx.ModelProto, io: IOSpec, *, adapt_axes: bool = True) -> IOSpec:
    """Roles, value ranges and batch axes that the graph tells: ids bounded by their table,
    scalars, recurrent states, and (with `adapt_axes`) each input's batch axis, its first
    free axis."""
    graph = Graph(proto)
    inputs = tuple(_analyse_input(graph, t) for t in io.inputs)
    io = io.with_inputs(inputs)
    if not adapt_axes:
        return io
    axes = {t.name: _first_free_axis(t) for t in inputs}
    common = io.batch_axis
    if common is None:
        counts = [a for a in axes.values() if a is not None]
        common = max(set(counts), key=counts.count) if counts else None
    overrides = {name: axis for name, axis in axes.items() if axis != common}
    seq_axis = io.seq_axis if common is not None and _has_sequence(io) else None
    return replace(
        io, batch_axis=common, seq_axis=seq_axis, batch_axes={**overrides, **io.batch_axes}
    )


def _has_sequence(io: IOSpec) -> bool:
    """Whether the free axis read as the sequence is one: in token ids or masks, or in a float
    input of rank 3 ([batch, time, features]). An image's height is a size, not a sequence
    (padding it changes the picture), and so is an audio window's length."""
    for spec in io.inputs:
        axis = io.seq_axis_of(spec)
        if axis is None:
            continue
        if np.issubdtype(spec.np_dtype, np.integer) or spec.np_dtype == np.bool_:
            return True
        if len(spec.shape) == 3 and is_image(spec, io) is None:
            return True
    return False


def _analyse_input(graph: Graph, spec: TensorSpec) -> TensorSpec:
    if not spec.shape and spec.role != "mask":
        choices = compared_with(graph, spec.name)
        if choices:
            return replace(spec, role="scalar", value_range=(choices[0], choices[0]))
        return replace(spec, role="scalar")
    if spec.role == "mask":
        return spec
    if np.issubdtype(spec.np_dtype, np.integer):
        rows = table_size(graph, spec.name)
        if rows is not None:
            low, high = spec.value_range or (0.0, float(rows - 1))
            return replace(spec, role="ids", value_range=(max(low, 0.0), min(high, rows - 1.0)))
    name = spec.name.lower()
    if spec.np_dtype.kind == "f" and any(w in name for w in _STATE_WORDS) and "hidden" not in name:
        return replace(spec, role="state")
    return spec


def _first_free_axis(spec: TensorSpec) -> int | None:
    return next((a for a, d in enumerate(spec.shape) if isinstance(d, str)), None)


def is_image(spec: TensorSpec, io: IOSpec) -> tuple[int, int] | None:
    """The two spatial axes of a 4-D float input with a channel axis of 1, 3 or 4 (NCHW or
    NHWC) and two free spatial axes, else None."""
    shape = spec.shape
    if len(shape) != 4 or spec.np_dtype.kind != "f":
        return None
    batch = io.batch_axis_of(spec.name)
    for channel, spatial in ((1, (2, 3)), (3, (1, 2))):
        free = all(isinstance(shape[a], str) for a in spatial)
        if shape[channel] in (1, 3, 4) and free and batch not in spatial:
            return spatial
    return None
