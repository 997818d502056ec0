"""Inputs a model accepts, found from its graph and confirmed by running it.

Every command that runs a model without the user's data runs it on generated inputs: the
export's parity check, profiling, pass verification, the search without --data, the server's
warm-up. Guessed from names and shapes alone, they fail on real models: a sample rate that
must be 16000, ids into a 50-row table, a state batched on axis 1, a mask whose True means
padding, an image of any height and width. So `inferopt.analysis` reads what the graph says,
and this module tries the likely settings in order and keeps the first with which the model
runs and gives finite outputs (`discover`); what the user states (`inferopt.stated`) comes
first. What it finds is stored in the IOSpec, so it is done once per model and travels with
the file.
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

from inferopt.analysis import analyse, is_image
from inferopt.errors import first_line
from inferopt.iospec import FOUND_KEY, IOSpec, TensorSpec, suspect_input, with_found
from inferopt.stated import state_shapes

MAX_TRIALS = 64  # model runs spent looking for inputs that work
MAX_SECONDS = 30.0
IMAGE_SIZES = (224, 256, 320, 384, 448, 512, 640, 32, 64, 96, 128, 160, 192, 288, 416)
DIM_SIZES = (16, 1, 32, 64, 128, 256, 512, 1024, 2, 3, 4, 8)


@dataclass(frozen=True)
class Finding:
    """What `discover` found: the spec to generate inputs from, and whether they ran."""

    io: IOSpec
    ok: bool
    trials: int
    problem: str | None = None  # one line: why no generated input ran, and what to give


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
        return Finding(with_found(io, trial.count, problem), False, trial.count, problem)
    working = _check_batch(trial, working, adapt_axes)
    if adapt_axes:
        working = _check_seq(trial, working)
    return Finding(with_found(working, trial.count, None), True, trial.count)


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
