"""Example data for calibration, evaluation and parity: a list of model feeds plus labels.

Samples are stored one example each (batch dimension of 1) because text examples differ in
length; `batch()` pads them to the longest in the batch along the sequence axis, so a batch
costs what its real sentences cost, not a fixed maximum length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from inferopt.errors import InputError
from inferopt.iospec import IOSpec, pad_value_of

LABELS_KEY = "labels"
Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class Layout:
    """How one-row feeds stack into a batch, and a batch's outputs split back into rows.

    Each input's batch axis (None: one value shared by every row, such as a scalar setting),
    sequence axis (padded on the right to the longest row) and pad value (a mask's padding
    mark, else 0). Outputs are split along their own batch axes."""

    batch: Mapping[str, int | None] = field(default_factory=dict)
    seq: Mapping[str, int] = field(default_factory=dict)
    pad: Mapping[str, float] = field(default_factory=dict)
    default_seq: int | None = None  # for inputs not named above (a dataset without a model)

    @staticmethod
    def of(io: IOSpec) -> Layout:
        specs = io.inputs + io.outputs
        seq = {t.name: a for t in io.inputs if (a := io.seq_axis_of(t)) is not None}
        return Layout(
            batch={t.name: io.batch_axis_of(t.name) for t in specs},
            seq=seq,
            pad={t.name: pad_value_of(t) for t in io.inputs},
        )

    def batch_axis(self, name: str) -> int | None:
        return self.batch.get(name, 0)

    def seq_axis(self, name: str) -> int | None:
        return self.seq.get(name, self.default_seq)

    def stack(self, rows: Sequence[Feed], length: int | None = None) -> Feed:
        """One feed of `rows` (each one row), padded to the longest along sequence axes; with
        `length`, cut or padded to exactly that many positions instead."""
        return {name: self._stack_input(name, [r[name] for r in rows], length) for name in rows[0]}

    def _stack_input(
        self, name: str, arrays: list[np.ndarray], length: int | None = None
    ) -> np.ndarray:
        axis = self.batch_axis(name)
        if axis is None:  # shared by every row: they must agree
            if any(not np.array_equal(a, arrays[0]) for a in arrays[1:]):
                raise InputError(f"input {name!r} has no batch axis but differs between rows")
            return arrays[0]
        seq = self.seq_axis(name)
        if seq is not None:
            target = length if length is not None else max(a.shape[seq] for a in arrays)
            pad = self.pad.get(name, 0.0)
            arrays = [_cut_or_pad(a, seq, target, pad) for a in arrays]
        return np.concatenate(arrays, axis=axis)

    def row(
        self, outputs: Mapping[str, Any], index: int, alone: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Row `index` of a batch's outputs, cut to the shape the row has when run alone (a
        token-level output of a padded batch is longer than the row's own)."""
        found = {}
        for name, value in outputs.items():
            axis = self.batch_axis(name)
            if not isinstance(value, np.ndarray) or axis is None:
                found[name] = value[index] if isinstance(value, list) else value
                continue
            part = np.take(value, [index], axis=axis)
            target = getattr(alone.get(name), "shape", part.shape)
            if len(target) == part.ndim:
                part = part[tuple(slice(0, n) for n in target)]
            found[name] = part
        return found


def batched_rows(
    run: Callable[[Feed], Mapping[str, Any]],
    feeds: Sequence[Feed],
    alone: Sequence[Mapping[str, Any]],
    layout: Layout,
    size: int,
) -> list[dict[str, Any]]:
    """Each one-row feed's outputs as they come out of batches of `size` consecutive feeds
    (padded to the longest), cut back to the row's shape alone (`alone`: each feed's outputs
    run alone). Where a dropped mask or a per-batch scale shows."""
    rows: list[dict[str, Any]] = []
    for start in range(0, len(feeds), size):
        group = feeds[start : start + size]
        out = run(layout.stack(group))
        rows += [layout.row(out, k, alone[start + k]) for k in range(len(group))]
    return rows


def batch_first(outputs: Mapping[str, Any], layout: Layout) -> dict[str, np.ndarray]:
    """One row's float or integer outputs with the batch axis first (a state [2, 1, 128]
    batched on axis 1 becomes [1, 2, 128]; an output without a batch axis gains one), as
    per-sample comparisons read them. Non-tensor outputs (sequences, maps) are left out."""
    found = {}
    for name, value in outputs.items():
        if not isinstance(value, np.ndarray):
            continue
        axis = layout.batch_axis(name)
        found[name] = value[None] if axis is None else np.moveaxis(value, axis, 0)
    return found


def _cut_or_pad(array: np.ndarray, axis: int, length: int, value: float) -> np.ndarray:
    if array.shape[axis] > length:
        return np.take(array, range(length), axis=axis)
    return array if array.shape[axis] == length else _pad_to(array, axis, length, value)


def _pad_to(array: np.ndarray, axis: int, length: int, value: float) -> np.ndarray:
    width = [(0, 0)] * array.ndim
    width[axis] = (0, length - array.shape[axis])
    return np.pad(array, width, constant_values=np.asarray(value).astype(array.dtype))


@dataclass(frozen=True)
class Dataset:
    samples: tuple[dict[str, np.ndarray], ...]  # one example each, batch axis 0 of size 1
    labels: np.ndarray | None = None  # one label per sample, when the task has them
    seq_axis: int | None = None  # the axis padded by batch(), for variable-length inputs
    layout: Layout | None = None  # the model's own (batch axes, pad values); else uniform

    def __post_init__(self) -> None:
        if not self.samples:
            raise InputError("dataset is empty: it has no samples")
        if self.labels is not None and len(self.labels) != len(self.samples):
            raise InputError(
                f"dataset has {len(self.samples)} samples but {len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def input_names(self) -> list[str]:
        return list(self.samples[0])

    @staticmethod
    def from_arrays(arrays: dict[str, np.ndarray], labels: np.ndarray | None = None) -> Dataset:
        """Split arrays whose axis 0 is the example axis into one-example samples."""
        if not arrays:
            raise InputError("dataset has no input arrays")
        counts = {name: a.shape[0] if a.ndim else 0 for name, a in arrays.items()}
        if len(set(counts.values())) != 1:
            raise InputError(f"input arrays disagree on the number of examples: {counts}")
        n = next(iter(counts.values()))
        samples = tuple({k: a[i : i + 1] for k, a in arrays.items()} for i in range(n))
        return Dataset(samples, labels)

    @staticmethod
    def from_npz(path: str | Path) -> Dataset:
        """Arrays keyed by input name, axis 0 the example axis; optional `labels` array."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such data file")
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (ValueError, OSError) as exc:
            raise InputError(f"{path}: not a readable .npz file ({exc})") from exc
        labels = arrays.pop(LABELS_KEY, None)
        if not arrays:
            raise InputError(f"{path}: the data file holds no input arrays")
        return Dataset.from_arrays(arrays, labels)

    def save_npz(self, path: str | Path) -> None:
        full = self.batch(range(len(self)))
        if self.labels is not None:
            full[LABELS_KEY] = self.labels
        np.savez(path, **full)  # type: ignore[arg-type]

    def update_digest(self, digest: Any) -> None:
        """Feed the samples' contents (names and bytes, in order) and the labels to `digest`
        (a hashlib object): what every cache key built on this data hashes."""
        for sample in self.samples:
            for name in sorted(sample):
                digest.update(name.encode())
                digest.update(np.ascontiguousarray(sample[name]).tobytes())
        if self.labels is not None:
            digest.update(np.ascontiguousarray(self.labels).tobytes())

    def subset(self, indices: Sequence[int]) -> Dataset:
        labels = self.labels[list(indices)] if self.labels is not None else None
        return replace(self, samples=tuple(self.samples[i] for i in indices), labels=labels)

    def for_model(self, io: IOSpec) -> Dataset:
        """This data batched as the model wants (its batch axes, sequence axis, pad values)."""
        return replace(self, seq_axis=io.seq_axis, layout=Layout.of(io))

    @property
    def stacking(self) -> Layout:
        return self.layout or Layout(default_seq=self.seq_axis)

    def batch(self, indices: Sequence[int] | range) -> dict[str, np.ndarray]:
        """The samples at `indices` as one feed, padded along the sequence axis (with each
        input's pad value: a mask marks the padding)."""
        return self.stacking.stack([self.samples[i] for i in indices])

    def spread(self, count: int) -> list[dict[str, np.ndarray]]:
        """Up to `count` one-example feeds evenly spread over the set (the first samples of a
        file are often alike)."""
        indices = np.linspace(0, len(self) - 1, num=min(count, len(self))).astype(int)
        return [self.batch([int(i)]) for i in indices]

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self), batch_size):
            yield self.batch(range(start, min(start + batch_size, len(self))))

    def check_against(self, spec: IOSpec) -> None:
        """Raise InputError naming the first input whose name, dtype or rank does not match."""
        expected, given = set(spec.input_names), set(self.input_names)
        if expected != given:
            raise InputError(
                f"data inputs {sorted(given)} do not match the model's inputs {sorted(expected)}"
            )
        sample = self.samples[0]
        for t in spec.inputs:
            array = sample[t.name]
            if array.dtype != t.np_dtype:
                raise InputError(f"data input {t.name!r} is {array.dtype}, model wants {t.dtype}")
            if array.ndim != len(t.shape):
                raise InputError(
                    f"data input {t.name!r} has rank {array.ndim}, model wants {len(t.shape)}"
                )
            for axis, dim in enumerate(t.shape):
                if isinstance(dim, int) and axis != spec.batch_axis and array.shape[axis] != dim:
                    raise InputError(
                        f"data input {t.name!r} has shape {list(array.shape)}, "
                        f"model wants {list(t.shape)}"
                    )
