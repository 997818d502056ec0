"""Merging requests into one batch and splitting the batch's outputs back, per request.

A request may carry several rows (its own batch). Requests are merged along the batch axis;
requests of different sequence lengths are padded to the longest in the batch (zeros, which the
attention mask marks as padding) when the model has a mask, and otherwise only requests of
equal length share a batch. Padding is bounded (`by_length`): a batch gathers the requests
nearest in length to its first, while the padding stays within a fraction of the real tokens.
Padding is compute thrown away; on a CPU, batching a transformer gains only ~25% over running
sentences one by one, so padding much beyond ~10% costs more than batching gains.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from inferopt.iospec import IOSpec, TensorSpec, pad_value_of
from inferopt.serve.config import SequenceBatching
from inferopt.serve.errors import ModelFailed

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True)
class BatchAxes:
    """Where a model's rows and sequence positions are, which decides how to merge."""

    batch: int | None  # the batch axis of every input and output; None: never merge
    input_seq: dict[str, int]  # input -> its sequence axis
    output_seq: dict[str, int]  # output -> its sequence axis (sliced back after padding)
    pad: bool  # pad to the batch's longest (else: only equal lengths share a batch)
    # input -> what a padded position holds: a mask's padding mark (True where True means
    # padding, as PyTorch's key_padding_mask), else 0
    pad_values: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def of(io: IOSpec, mode: SequenceBatching) -> BatchAxes:
        axis = io.batch_axis
        specs = io.inputs + io.outputs
        if axis is None or not all(
            len(t.shape) > axis and isinstance(t.shape[axis], str) for t in specs
        ):
            return BatchAxes(None, {}, {}, pad=False)
        batch_names = {t.shape[axis] for t in io.inputs}
        seq_names = _seq_names(io, batch_names)
        input_seq = _axes_named(io.inputs, seq_names)
        output_seq = _axes_named(io.outputs, seq_names)
        has_mask = any(t.role == "mask" or "mask" in t.name.lower() for t in io.inputs)
        pad = bool(input_seq) and (mode == "pad" or (mode == "auto" and has_mask))
        pad_values = {t.name: pad_value_of(t) for t in io.inputs if pad_value_of(t)}
        return BatchAxes(axis, input_seq, output_seq, pad, pad_values)


def _seq_names(io: IOSpec, batch_names: set[str | int]) -> set[str]:
    if io.seq_axis is None:
        return set()
    names = set()
    for spec in io.inputs:
        if len(spec.shape) > io.seq_axis:
            dim = spec.shape[io.seq_axis]
            if isinstance(dim, str) and dim not in batch_names:
                names.add(dim)
    return names


def _axes_named(specs: Sequence[TensorSpec], names: set[str]) -> dict[str, int]:
    found = {}
    for spec in specs:
        for axis, dim in enumerate(spec.shape):
            if dim in names:
                found[spec.name] = axis
                break
    return found


def rows(inputs: Tensors, axes: BatchAxes) -> int:
    if axes.batch is None:
        return 1
    return int(next(iter(inputs.values())).shape[axes.batch])


def seq_len(inputs: Tensors, axes: BatchAxes) -> int | None:
    for name, axis in axes.input_seq.items():
        return int(inputs[name].shape[axis])
    return None


def key(inputs: Tensors, axes: BatchAxes) -> Hashable:
    """Requests with equal keys may share a batch: same shapes apart from the batch axis and
    (when padding) the sequence axis."""
    parts = []
    for name in sorted(inputs):
        shape = list(inputs[name].shape)
        if axes.batch is not None:
            shape[axes.batch] = -1
        if axes.pad and name in axes.input_seq:
            axis = axes.input_seq[name]
            shape[axis] = -1
        parts.append((name, tuple(shape)))
    return tuple(parts)


def by_length(sizes: Sequence[tuple[int, int]], max_rows: int, max_padding: float) -> list[int]:
    """Which of `sizes` ((rows, sequence length) each; the first must go) share one padded
    batch, as indices in order: the first, then the others nearest its length, each if the
    batch still fits `max_rows` and carries at most `max_padding` padding tokens per real one.
    Anchoring on the first (the oldest) keeps every request's wait bounded; choosing by
    nearness keeps the padding low."""
    rows, length = sizes[0]
    chosen, real, longest = [0], rows * length, length
    nearest = sorted(range(1, len(sizes)), key=lambda i: abs(sizes[i][1] - length))
    for i in nearest:
        more, their_length = sizes[i]
        if rows == max_rows:
            break
        if rows + more > max_rows:
            continue
        padded_to = max(longest, their_length)
        with_them = real + more * their_length
        if (rows + more) * padded_to - with_them > max_padding * with_them:
            continue
        chosen.append(i)
        rows, real, longest = rows + more, with_them, padded_to
    return sorted(chosen)


def chunks(inputs: Tensors, axes: BatchAxes, max_rows: int) -> list[Tensors]:
    """`inputs` cut into pieces of at most `max_rows` rows (views, no copies)."""
    total = rows(inputs, axes)
    if axes.batch is None or max_rows < 1 or total <= max_rows:
        return [inputs]
    return [
        {
            name: _take(array, axes.batch, start, min(start + max_rows, total))
            for name, array in inputs.items()
        }
        for start in range(0, total, max_rows)
    ]


def merge(parts: Sequence[Tensors], axes: BatchAxes) -> Tensors:
    """One batch holding every part's rows, in order."""
    if len(parts) == 1:
        return parts[0]
    assert axes.batch is not None  # the batcher merges only models with a batch axis
    merged = {}
    for name in parts[0]:
        arrays = [p[name] for p in parts]
        if axes.pad and name in axes.input_seq:
            value = axes.pad_values.get(name, 0.0)
            arrays = _pad_to_longest(arrays, axes.input_seq[name], value)
        merged[name] = np.concatenate(arrays, axis=axes.batch)
    return merged


def _pad_to_longest(arrays: list[np.ndarray], axis: int, value: float) -> list[np.ndarray]:
    longest = max(a.shape[axis] for a in arrays)
    padded = []
    for array in arrays:
        missing = longest - array.shape[axis]
        if missing:
            widths = [(0, 0)] * array.ndim
            widths[axis] = (0, missing)
            fill = np.asarray(value).astype(array.dtype)  # a mask's padding mark, else 0
            array = np.pad(array, widths, constant_values=fill)
        padded.append(array)
    return padded


def split(outputs: Tensors, parts: Sequence[Tensors], axes: BatchAxes) -> list[Tensors]:
    """The rows of `outputs` that belong to each part, with sequence padding cut off."""
    if len(parts) == 1:
        return [outputs]
    assert axes.batch is not None
    sizes = [rows(p, axes) for p in parts]
    total = sum(sizes)
    for name, array in outputs.items():
        if array.ndim <= axes.batch or array.shape[axes.batch] != total:
            raise ModelFailed(
                f"output {name!r} has shape {list(array.shape)} for a batch of {total} rows; "
                "the model does not batch along axis 0: set max_batch_size = 0 for it"
            )
    pieces = []
    start = 0
    for part, size in zip(parts, sizes, strict=True):
        piece = {}
        length = seq_len(part, axes)
        for name, array in outputs.items():
            piece[name] = _take(array, axes.batch, start, start + size)
            if axes.pad and length is not None and name in axes.output_seq:
                piece[name] = _take(piece[name], axes.output_seq[name], 0, length)
        pieces.append(piece)
        start += size
    return pieces


def _take(array: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    index = [slice(None)] * array.ndim
    index[axis] = slice(start, stop)
    return array[tuple(index)]
