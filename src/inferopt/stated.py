"""Inputs as the user states them: `--input-shape NAME:DIMS` (and perf_analyzer's spelling
without the batch dim), and real data that generated inputs should follow."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from inferopt.errors import InputError
from inferopt.iospec import IOSpec, with_found


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
    return with_found(followed, 0, None)
