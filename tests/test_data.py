from pathlib import Path

import numpy as np
import pytest

from inferopt.data import Dataset, Layout
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


def _encoder_io() -> IOSpec:
    """x[batch, seq, 2], a bool key_padding_mask (True marks padding), an int attention_mask,
    a state [2, batch, 3] and a scalar sample rate; token-level `hidden`, a state output."""
    return IOSpec(
        (
            TensorSpec("x", "float32", ("batch", "seq", 2)),
            TensorSpec("key_padding_mask", "bool", ("batch", "seq"), role="mask", pad_value=1.0),
            TensorSpec("attention_mask", "int64", ("batch", "seq"), role="mask"),
            TensorSpec("state", "float32", (2, "batch", 3), role="state"),
            TensorSpec("sr", "int64", (), role="scalar"),
        ),
        (
            TensorSpec("hidden", "float32", ("batch", "seq", 2)),
            TensorSpec("pooled", "float32", ("batch", 2)),
            TensorSpec("stateN", "float32", (2, "batch", 3)),
        ),
        batch_axis=0,
        seq_axis=1,
        batch_axes={"state": 1, "stateN": 1, "sr": None},
    )


def _row(length: int, value: float) -> dict[str, np.ndarray]:
    return {
        "x": np.full((1, length, 2), value, np.float32),
        "key_padding_mask": np.zeros((1, length), bool),
        "attention_mask": np.ones((1, length), np.int64),
        "state": np.full((2, 1, 3), value, np.float32),
        "sr": np.array(16000, np.int64),
    }


def test_layout_stack_pads_masks_with_their_pad_value_along_each_batch_axis() -> None:
    layout = Layout.of(_encoder_io())
    feed = layout.stack([_row(3, 1.0), _row(5, 2.0)])
    assert feed["x"].shape == (2, 5, 2)
    assert feed["x"][0, :, 0].tolist() == [1, 1, 1, 0, 0]
    assert feed["x"][1, :, 0].tolist() == [2] * 5
    assert feed["key_padding_mask"].dtype == np.bool_
    assert feed["key_padding_mask"].tolist() == [[False] * 3 + [True] * 2, [False] * 5]
    assert feed["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5]
    assert feed["state"].shape == (2, 2, 3)  # rows side by side on axis 1
    assert feed["state"][:, 0].tolist() == [[1.0] * 3] * 2
    assert feed["state"][:, 1].tolist() == [[2.0] * 3] * 2
    assert feed["sr"].shape == () and int(feed["sr"]) == 16000  # shared, not stacked


def test_layout_stack_refuses_a_shared_input_that_differs_between_rows() -> None:
    other = {**_row(3, 2.0), "sr": np.array(8000, np.int64)}
    with pytest.raises(InputError, match="'sr' has no batch axis but differs"):
        Layout.of(_encoder_io()).stack([_row(3, 1.0), other])


def test_layout_row_cuts_each_output_back_to_the_rows_own_shape() -> None:
    layout = Layout.of(_encoder_io())
    outputs = {
        "hidden": np.arange(2 * 5 * 2, dtype=np.float32).reshape(2, 5, 2),
        "pooled": np.array([[1, 2], [3, 4]], np.float32),
        "stateN": np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3),
    }
    alone = {
        "hidden": np.zeros((1, 3, 2), np.float32),
        "pooled": np.zeros((1, 2), np.float32),
        "stateN": np.zeros((2, 1, 3), np.float32),
    }
    first = layout.row(outputs, 0, alone)
    assert first["hidden"].shape == (1, 3, 2)
    assert np.array_equal(first["hidden"], outputs["hidden"][0:1, :3])
    assert first["pooled"].tolist() == [[1, 2]]
    assert first["stateN"].shape == (2, 1, 3)
    assert np.array_equal(first["stateN"], outputs["stateN"][:, 0:1])
    second = layout.row(outputs, 1, {**alone, "hidden": np.zeros((1, 5, 2), np.float32)})
    assert np.array_equal(second["hidden"], outputs["hidden"][1:2])
    assert np.array_equal(second["stateN"], outputs["stateN"][:, 1:2])


def test_layout_row_takes_one_element_of_a_sequence_output() -> None:
    layout = Layout.of(_encoder_io())
    maps = [{0: 0.25, 1: 0.75}, {0: 0.5, 1: 0.5}]
    assert layout.row({"probabilities": maps}, 1, {})["probabilities"] == {0: 0.5, 1: 0.5}


def test_dataset_for_model_batches_with_the_models_layout() -> None:
    data = Dataset((_row(2, 1.0), _row(4, 3.0))).for_model(_encoder_io())
    feed = data.batch([0, 1])
    assert feed["key_padding_mask"].tolist() == [[False, False, True, True], [False] * 4]
    assert feed["state"].shape == (2, 2, 3) and feed["sr"].shape == ()
