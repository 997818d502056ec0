"""Example data for calibration, evaluation and parity: a list of model feeds plus labels.

Samples are stored one example each (batch dimension of 1) because text examples differ in
length; `batch()` pads them to the longest in the batch along the sequence axis, so a batch
costs what its real sentences cost, not a fixed maximum length.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inferopt.errors import InputError
from inferopt.iospec import IOSpec

LABELS_KEY = "labels"


@dataclass(frozen=True)
class Dataset:
    samples: tuple[dict[str, np.ndarray], ...]  # one example each, batch axis 0 of size 1
    labels: np.ndarray | None = None  # one label per sample, when the task has them
    seq_axis: int | None = None  # the axis padded by batch(), for variable-length inputs

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

    def subset(self, indices: Sequence[int]) -> Dataset:
        labels = self.labels[list(indices)] if self.labels is not None else None
        return Dataset(tuple(self.samples[i] for i in indices), labels, self.seq_axis)

    def batch(self, indices: Sequence[int] | range) -> dict[str, np.ndarray]:
        """The samples at `indices` as one feed, padded with zeros along the sequence axis."""
        chosen = [self.samples[i] for i in indices]
        return {name: _stack([s[name] for s in chosen], self.seq_axis) for name in chosen[0]}

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


def _stack(arrays: list[np.ndarray], seq_axis: int | None) -> np.ndarray:
    if seq_axis is None or len({a.shape[seq_axis] for a in arrays}) == 1:
        return np.concatenate(arrays, axis=0)
    longest = max(a.shape[seq_axis] for a in arrays)
    padded = []
    for a in arrays:
        width = [(0, 0)] * a.ndim
        width[seq_axis] = (0, longest - a.shape[seq_axis])
        padded.append(np.pad(a, width))
    return np.concatenate(padded, axis=0)
