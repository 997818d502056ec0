"""Inputs a model accepts, found from its graph and confirmed by running it.

Every command that runs a model without the user's data runs it on generated inputs: the
export's parity check, profiling, pass verification, the search without --data, the server's
warm-up. Guessed from names and shapes alone, they fail on real models: a sample rate that
must be 16000, ids into a 50-row table, a state batched on axis 1, a mask whose True means
padding, an image of any height and width. So this module reads what the graph says
(`analyse`), then tries the likely settings in order and keeps the first with which the model
runs and gives finite outputs (`discover`). What it finds is stored in the IOSpec, so it is
done once per model and travels with the file.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from inferopt.errors import InputError, first_line
from inferopt.iospec import IOSpec, TensorSpec, suspect_input

FOUND_KEY = "inputs_found"  # IOSpec.extra: what discovery found, or why nothing ran
MAX_TRIALS = 64  # model runs spent looking for inputs that work
MAX_SECONDS = 30.0
# Ops that carry an id through unchanged (its value still indexes the same table).
_PASS_THROUGH = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand"}
_PASS_THROUGH |= {"Transpose", "Slice", "Concat", "Tile", "Clip"}
_COMPARISONS = {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"}
_STATE_WORDS = ("state", "past", "cache", "h0", "c0")
IMAGE_SIZES = (224, 256, 320, 384, 448, 512, 640, 32, 64, 96, 128, 160, 192, 288, 416)
DIM_SIZES = (16, 1, 32, 64, 128, 256, 512, 1024, 2, 3, 4, 8)


@dataclass(frozen=True)
class Finding:
    """What `discover` found: the spec to generate inputs from, and whether they ran."""

    io: IOSpec
    ok: bool
    trials: int
    problem: str | None = None  # one line: why no generated input ran, and what to give


# ---------------------------------------------------------------------------- the graph


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


# ---------------------------------------------------------------------- static analysis


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


# ------------------------------------------------------------------------------- knobs


@dataclass(frozen=True)
class Knob:
    """One setting discovery may change, with its alternatives, likeliest first."""

    label: str  # what it is, for the message when nothing works
    alternatives: tuple[Callable[[IOSpec], IOSpec], ...]


def knobs(io: IOSpec, stated: frozenset[str]) -> list[Knob]:
    """What to try, per input: a scalar's candidate values, a mask's convention, an image's
    size, and the size of each other free dim. Dims the user stated are left alone."""
    found: list[Knob] = []
    sized: set[str] = set()
    for spec in io.inputs:
        if spec.role == "scalar":
            found.append(_scalar_knob(spec))
        elif spec.role == "mask":
            flipped = replace(spec, pad_value=1.0 - spec.pad_value)
            found.append(Knob(f"mask {spec.name!r} convention", (_same, _swap(flipped))))
        spatial = is_image(spec, io)
        if spatial is not None:
            names = tuple(str(spec.shape[a]) for a in spatial)
            if not set(names) & (sized | stated):
                sized.update(names)
                found.append(_size_knob(f"image {spec.name!r} size", names, IMAGE_SIZES))
    for spec in io.inputs:
        seq_axis = io.seq_axis_of(spec)
        for axis, dim in enumerate(spec.shape):
            if not isinstance(dim, str) or dim in sized | stated:
                continue
            if axis in (io.batch_axis_of(spec.name), seq_axis):
                continue
            sized.add(dim)
            found.append(_size_knob(f"{spec.name!r} axis {axis}", (dim,), DIM_SIZES))
    return found


def _same(io: IOSpec) -> IOSpec:
    return io


def _swap(spec: TensorSpec) -> Callable[[IOSpec], IOSpec]:
    def apply(io: IOSpec) -> IOSpec:
        return io.with_inputs(tuple(spec if t.name == spec.name else t for t in io.inputs))

    return apply


def _scalar_knob(spec: TensorSpec) -> Knob:
    low = spec.value_range[0] if spec.value_range else None
    values = [v for v in (low, 1.0, 0.0) if v is not None]
    options = tuple(_swap(replace(spec, value_range=(v, v))) for v in dict.fromkeys(values))
    return Knob(f"scalar {spec.name!r} value", options)


def _size_knob(label: str, dims: tuple[str, ...], sizes: Sequence[int]) -> Knob:
    def setter(size: int) -> Callable[[IOSpec], IOSpec]:
        return lambda io: replace(io, dims={**io.dims, **dict.fromkeys(dims, size)})

    return Knob(label, tuple(setter(s) for s in sizes))


def settings(found: Sequence[Knob], limit: int) -> Iterator[Callable[[IOSpec], IOSpec]]:
    """Combinations of knob alternatives, fewest changes from the first guess first, then
    likeliest (lowest ranks) first; at most `limit`."""
    choices = [range(len(k.alternatives)) for k in found]
    combos = sorted(
        itertools.islice(itertools.product(*choices), 20_000),
        key=lambda c: (sum(1 for r in c if r), sum(c)),
    )
    for combo in combos[:limit]:
        yield _compose([k.alternatives[r] for k, r in zip(found, combo, strict=True)])


def _compose(steps: list[Callable[[IOSpec], IOSpec]]) -> Callable[[IOSpec], IOSpec]:
    def apply(io: IOSpec) -> IOSpec:
        for step in steps:
            io = step(io)
        return io

    return apply


# --------------------------------------------------------------------------- discovery


Run = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def session_runner(session: Any) -> Run:
    """Run an ONNX Runtime session quietly (failed trials are expected, not worth a log)."""
    options = ort.RunOptions()
    options.log_severity_level = 4
    names = [o.name for o in session.get_outputs()]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, feeds, options), strict=True))

    return run


def discover(
    run: Run,
    proto: onnx.ModelProto,
    io: IOSpec,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    *,
    adapt_axes: bool = True,
) -> Finding:
    """Find generated inputs the model runs with finite outputs: the graph's facts first
    (`analyse`), the user's `shapes` (--input-shape) on top, then the knobs' combinations in
    order, within MAX_TRIALS runs. Then check batch 2 and a second sequence length, and read
    each output's batch and sequence axes from how its shape follows them. Without
    `adapt_axes`, declared batch and sequence axes stay even when the model fails on them
    (an exporter's axes are meant, and its parity check must see them fail). Raises
    InputError when a stated shape does not fit the model (see `state_shapes`)."""
    fresh = replace(io, extra={k: v for k, v in io.extra.items() if k != FOUND_KEY})
    io, stated = state_shapes(analyse(proto, fresh, adapt_axes=adapt_axes), shapes or {})
    trial = _Trial(run)
    found = knobs(io, stated)
    working: IOSpec | None = None
    for setting in settings(found, MAX_TRIALS):
        candidate = setting(io)
        if trial.ok(candidate, batch=1):
            working = candidate
            break
        if trial.exhausted():
            break
    if working is None:
        problem = trial.why(io, found)
        return Finding(_with_found(io, trial.count, problem), False, trial.count, problem)
    working = _check_batch(trial, working, adapt_axes)
    if adapt_axes:
        working = _check_seq(trial, working)
    return Finding(_with_found(working, trial.count, None), True, trial.count)


class _Trial:
    """Runs the model on one setting's inputs; remembers the first failure's reason."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.count = 0
        self.start = time.perf_counter()
        self.first_error: str | None = None
        self.nonfinite: str | None = None
        self.last: dict[str, np.ndarray] = {}

    def outputs(self, io: IOSpec, batch: int, seq: int = 16) -> dict[str, np.ndarray] | None:
        self.count += 1
        try:
            out = self.run(io.sample_inputs(batch=batch, seq=seq, seed=self.count))
        except Exception as exc:  # ORT raises its own types; any failure means "not this"
            self.first_error = self.first_error or first_line(exc)
            return None
        bad = [n for n, v in out.items() if _float(v) and not np.isfinite(v).all()]
        if bad:
            self.nonfinite = self.nonfinite or f"output {bad[0]!r} is not finite"
            return None
        return out

    def ok(self, io: IOSpec, batch: int, seq: int = 16) -> bool:
        out = self.outputs(io, batch, seq)
        if out is not None:
            self.last = out
        return out is not None

    def exhausted(self) -> bool:
        return self.count >= MAX_TRIALS or time.perf_counter() - self.start > MAX_SECONDS

    def why(self, io: IOSpec, found: Sequence[Knob]) -> str:
        tried = ", ".join(k.label for k in found) or "the declared shapes"
        reason = self.nonfinite if self.nonfinite and not self.first_error else self.first_error
        suspect = suspect_input(io) if self.nonfinite else None
        hint = f"; most likely at fault: {suspect}" if suspect else ""
        inputs = "; ".join(t.describe() for t in io.inputs)
        return (
            f"no generated input runs ({self.count} tried, varying {tried}): {reason}{hint}; "
            "give real inputs (--data FILE.npz; serving: warmup_data) or sizes (--input-shape "
            f"NAME:DIMS; serving: input_shapes) (inputs: {inputs})"
        )


def _float(values: np.ndarray) -> bool:
    return isinstance(values, np.ndarray) and values.dtype.kind == "f"


def _check_batch(trial: _Trial, io: IOSpec, adapt: bool) -> IOSpec:
    """Run at batch 2: the outputs' batch axes are where their size doubled. A model that
    fails at batch 2 although its batch dim is free runs one row at a time."""
    if all(io.batch_axis_of(t.name) is None for t in io.inputs):
        return replace(io, batch_axis=None, batch_axes={})
    one = trial.last
    two = trial.outputs(io, batch=2)
    if two is None:
        return replace(io, batch_axis=None, batch_axes={}) if adapt else io
    axes = dict(io.batch_axes)
    for name, value in one.items():
        axis = _grown_axis(value, two.get(name), factor=2)
        if axis != io.batch_axis:
            axes[name] = axis
    trial.last = one
    return replace(io, batch_axes=axes)


def _check_seq(trial: _Trial, io: IOSpec) -> IOSpec:
    """A sequence axis must take other lengths too; one that takes only its first size is
    a fixed size (stored in `dims`), not a sequence."""
    if io.seq_axis is None:
        return io
    if trial.outputs(io, batch=1, seq=24) is not None:
        return io
    seq_dims = {t.shape[a]: 16 for t in io.inputs if (a := io.seq_axis_of(t)) is not None}
    return replace(io, seq_axis=None, dims={**io.dims, **{str(k): v for k, v in seq_dims.items()}})


def _grown_axis(before: Any, after: Any, factor: int) -> int | None:
    if isinstance(before, list) and isinstance(after, list):  # a sequence output: one per row
        return 0 if len(after) == len(before) * factor and before else None
    if not isinstance(before, np.ndarray) or not isinstance(after, np.ndarray):
        return None
    if before.ndim != after.ndim:
        return None
    for axis, (a, b) in enumerate(zip(before.shape, after.shape, strict=True)):
        if b == a * factor and a > 0:
            return axis
    return None


def _with_found(io: IOSpec, trials: int, problem: str | None) -> IOSpec:
    return replace(io, extra={**io.extra, FOUND_KEY: {"trials": trials, "problem": problem}})


def problem_of(io: IOSpec) -> str | None:
    """Why generated inputs do not run for this model, if discovery found none."""
    found = io.extra.get(FOUND_KEY)
    return found.get("problem") if isinstance(found, dict) else None


# ----------------------------------------------------------------- the user's shapes


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """`NAME:1,3,640,640` (also perf_analyzer's `NAME:dims` without the batch) -> (name,
    dims). Raises InputError naming the text."""
    name, sep, dims = text.rpartition(":")
    if not sep or not name:
        raise InputError(f"--input-shape {text!r}: write NAME:DIMS, e.g. images:1,3,640,640")
    try:
        sizes = tuple(int(d) for d in dims.split(",")) if dims.strip() else ()
    except ValueError:
        raise InputError(
            f"--input-shape {text!r}: dims must be integers, e.g. 1,3,640,640"
        ) from None
    if any(s < 1 for s in sizes):
        raise InputError(f"--input-shape {text!r}: every size must be >= 1")
    return name, sizes


def state_shapes(
    io: IOSpec, shapes: Mapping[str, tuple[int, ...]]
) -> tuple[IOSpec, frozenset[str]]:
    """The spec with the user's shapes: each input's free dims take the stated sizes (a
    shape one shorter than the input leaves out its batch axis, as perf_analyzer writes it).
    Returns the spec and the dim names now fixed. Raises InputError for an unknown input, a
    rank that fits neither spelling, or a size that contradicts a fixed one."""
    dims = dict(io.dims)
    stated: set[str] = set()
    for name, sizes in shapes.items():
        spec = io.input(name)
        batch = io.batch_axis_of(name)
        full = list(sizes)
        if len(sizes) == len(spec.shape) - 1 and batch is not None:
            full.insert(batch, 1)
        if len(full) != len(spec.shape):
            raise InputError(
                f"--input-shape {name}: {len(sizes)} dims given, the input has {len(spec.shape)} "
                f"({spec.describe()})"
            )
        for axis, (dim, size) in enumerate(zip(spec.shape, full, strict=True)):
            if isinstance(dim, int) and dim != size:
                raise InputError(
                    f"--input-shape {name}: axis {axis} is fixed at {dim} in the model, not {size}"
                )
            if isinstance(dim, str) and axis != batch and axis != io.seq_axis_of(spec):
                dims[dim] = size
                stated.add(dim)
    return replace(io, dims=dims), frozenset(stated)


def needs_discovery(io: IOSpec) -> bool:
    return FOUND_KEY not in io.extra


def follow_data(io: IOSpec, samples: Sequence[Mapping[str, np.ndarray]]) -> IOSpec:
    """The spec generating inputs like the user's data: its sizes for free dims (batch and
    sequence axes still vary), and for ids and scalars, the range of values it holds. The
    data are inputs the model is known to take, so nothing is left to discover."""
    dims = dict(io.dims)
    inputs = []
    for spec in io.inputs:
        arrays = [s[spec.name] for s in samples if spec.name in s]
        if not arrays:
            raise InputError(f"the data have no array for input {spec.name!r}")
        first = arrays[0]
        if first.ndim != len(spec.shape):
            raise InputError(
                f"data input {spec.name!r} has rank {first.ndim}, the model wants {spec.describe()}"
            )
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, str) and axis not in (
                io.batch_axis_of(spec.name),
                io.seq_axis_of(spec),
            ):
                dims[dim] = int(first.shape[axis])
        if spec.role in ("ids", "scalar") or (spec.role == "values" and first.dtype.kind in "iu"):
            low = min(float(a.min()) for a in arrays if a.size)
            high = max(float(a.max()) for a in arrays if a.size)
            spec = replace(spec, value_range=(low, high))
        inputs.append(spec)
    followed = replace(io, inputs=tuple(inputs), dims=dims)
    return _with_found(followed, 0, None)
