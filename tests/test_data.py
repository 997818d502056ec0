from pathlib import Path

import numpy as np
import pytest

from inferopt.data import Dataset
from inferopt.errors import InputError
from inferopt.iospec import IOSpec, TensorSpec


def test_batch_pads_variable_lengths_along_sequence_axis() -> None:
    samples = (
        {"ids": np.array([[1, 2, 3]]), "mask": np.array([[1, 1, 1]])},
        {"ids": np.array([[4]]), "mask": np.array([[1]])},
    )
    feed = Dataset(samples, seq_axis=1).batch([0, 1])
    assert feed["ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert feed["mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_npz_round_trip_keeps_labels(tmp_path: Path) -> None:
    data = Dataset.from_arrays({"x": np.arange(12, dtype=np.float32).reshape(4, 3)}, np.arange(4))
    data.save_npz(tmp_path / "d.npz")
    loaded = Dataset.from_npz(tmp_path / "d.npz")
    assert len(loaded) == 4 and loaded.labels is not None and loaded.labels.tolist() == [0, 1, 2, 3]
    assert np.array_equal(loaded.batch(range(4))["x"], data.batch(range(4))["x"])


def test_bad_data_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such data file"):
        Dataset.from_npz(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(InputError, match=r"not a readable .npz"):
        Dataset.from_npz(tmp_path / "junk.npz")
    np.savez(tmp_path / "only_labels.npz", labels=np.arange(3))
    with pytest.raises(InputError, match="no input arrays"):
        Dataset.from_npz(tmp_path / "only_labels.npz")


def test_mismatched_counts_and_empty_sets_are_refused() -> None:
    with pytest.raises(InputError, match="disagree on the number of examples"):
        Dataset.from_arrays({"a": np.zeros((3, 1)), "b": np.zeros((2, 1))})
    with pytest.raises(InputError, match="empty"):
        Dataset(())


def test_check_against_names_the_mismatching_input() -> None:
    spec = IOSpec((TensorSpec("image", "float32", ("N", 1, 8, 8)),), ())
    good = Dataset.from_arrays({"image": np.zeros((2, 1, 8, 8), dtype=np.float32)})
    good.check_against(spec)
    wrong_dtype = Dataset.from_arrays({"image": np.zeros((2, 1, 8, 8), dtype=np.float64)})
    with pytest.raises(InputError, match="'image' is float64, model wants float32"):
        wrong_dtype.check_against(spec)
    wrong_shape = Dataset.from_arrays({"image": np.zeros((2, 1, 7, 8), dtype=np.float32)})
    with pytest.raises(InputError, match=r"'image' has shape \[1, 1, 7, 8\]"):
        wrong_shape.check_against(spec)
    with pytest.raises(InputError, match="do not match the model's inputs"):
        Dataset.from_arrays({"pixels": np.zeros((2, 64))}).check_against(spec)
