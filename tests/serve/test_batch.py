"""Merging requests into batches and splitting outputs back."""

from __future__ import annotations

import numpy as np
import pytest

from inferopt.iospec import IOSpec, TensorSpec
from inferopt.serve import batch
from inferopt.serve.batch import BatchAxes
from inferopt.serve.errors import ModelFailed

TEXT = IOSpec(
    inputs=(
        TensorSpec("input_ids", "int64", ("batch", "seq")),
        TensorSpec("attention_mask", "int64", ("batch", "seq")),
    ),
    outputs=(
        TensorSpec("tokens", "float32", ("batch", "seq", 2)),
        TensorSpec("pooled", "float32", ("batch", 2)),
    ),
    batch_axis=0,
    seq_axis=1,
)


def text(rows: int, length: int, start: int = 1) -> dict[str, np.ndarray]:
    ids = np.arange(start, start + rows * length, dtype=np.int64).reshape(rows, length)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def fake_model(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-token output, and a masked mean: padding must not change either."""
    ids = inputs["input_ids"].astype(np.float32)
    mask = inputs["attention_mask"].astype(np.float32)
    tokens = np.stack([ids, ids * 2], axis=-1)
    pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return {"tokens": tokens, "pooled": pooled}


def test_axes_pad_when_the_model_has_a_mask_else_bucket() -> None:
    axes = BatchAxes.of(TEXT, "auto")
    assert axes.batch == 0 and axes.pad
    assert axes.input_seq == {"input_ids": 1, "attention_mask": 1}
    assert axes.output_seq == {"tokens": 1}
    no_mask = IOSpec(TEXT.inputs[:1], TEXT.outputs, 0, 1)
    assert not BatchAxes.of(no_mask, "auto").pad
    assert not BatchAxes.of(TEXT, "bucket").pad
    fixed = IOSpec((TensorSpec("x", "float32", (3,)),), (TensorSpec("y", "float32", (3,)),))
    assert BatchAxes.of(fixed, "auto").batch is None


def test_merge_pads_to_the_longest_and_split_gives_each_request_its_own() -> None:
    axes = BatchAxes.of(TEXT, "auto")
    parts = [text(2, 5), text(1, 3, start=100), text(3, 4, start=200)]
    merged = batch.merge(parts, axes)
    assert merged["input_ids"].shape == (6, 5)
    assert merged["attention_mask"][2].tolist() == [1, 1, 1, 0, 0]
    pieces = batch.split(fake_model(merged), parts, axes)
    for part, piece in zip(parts, pieces, strict=True):
        alone = fake_model(part)
        assert piece["tokens"].shape == alone["tokens"].shape
        np.testing.assert_allclose(piece["tokens"], alone["tokens"])
        np.testing.assert_allclose(piece["pooled"], alone["pooled"], rtol=1e-6)


def test_keys_keep_different_shapes_apart_and_lengths_when_not_padding() -> None:
    pad = BatchAxes.of(TEXT, "pad")
    bucket = BatchAxes.of(TEXT, "bucket")
    assert batch.key(text(1, 5), pad) == batch.key(text(3, 80), pad)  # by_length decides
    assert batch.key(text(1, 5), bucket) != batch.key(text(1, 6), bucket)
    assert batch.key(text(1, 5), bucket) == batch.key(text(4, 5), bucket)


def test_by_length_gathers_the_nearest_lengths_while_padding_stays_in_bounds() -> None:
    # (rows, length); the first (oldest) always goes
    sizes = [(1, 20), (1, 40), (1, 19), (1, 21), (1, 20), (1, 6)]
    assert batch.by_length(sizes, 32, 0.1) == [0, 2, 3, 4]  # 80 tokens padded to 84
    assert batch.by_length(sizes, 32, 0.0) == [0, 4]  # equal lengths only
    assert batch.by_length(sizes, 2, 0.1) == [0, 4]  # the nearest first, up to the rows
    assert batch.by_length(sizes, 32, 10.0) == [0, 1, 2, 3, 4, 5]


def test_by_length_counts_every_row_of_a_request() -> None:
    # 3 rows of 10 padded to 12 cost 6 tokens of padding: over 10% of 42 real tokens
    assert batch.by_length([(1, 12), (3, 10)], 32, 0.1) == [0]
    assert batch.by_length([(1, 12), (3, 10)], 32, 0.15) == [0, 1]
    assert batch.by_length([(1, 12), (3, 10)], 3, 1.0) == [0]  # 4 rows: over the max


def test_chunks_split_a_large_request_without_copying() -> None:
    axes = BatchAxes.of(TEXT, "auto")
    inputs = text(70, 3)
    pieces = batch.chunks(inputs, axes, 32)
    assert [batch.rows(p, axes) for p in pieces] == [32, 32, 6]
    assert np.shares_memory(pieces[1]["input_ids"], inputs["input_ids"])
    assert np.array_equal(np.concatenate([p["input_ids"] for p in pieces]), inputs["input_ids"])


def test_split_refuses_outputs_without_the_batch_rows() -> None:
    axes = BatchAxes.of(TEXT, "auto")
    parts = [text(1, 2), text(1, 2)]
    with pytest.raises(ModelFailed, match="output 'pooled' has shape"):
        batch.split({"pooled": np.zeros((1, 2), np.float32)}, parts, axes)
