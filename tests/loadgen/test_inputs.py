from pathlib import Path

import numpy as np
import pytest

from inferopt.loadgen.inputs import (
    BenchError,
    TensorMeta,
    corpus_pool,
    is_text_model,
    npz_pool,
    random_pool,
)

TEXT = [TensorMeta(n, "INT64", (-1, -1)) for n in ("input_ids", "attention_mask")]


def test_random_inputs_follow_the_metadata() -> None:
    metas = [TensorMeta("image", "FP32", (-1, 1, 8, 8)), TensorMeta("ids", "INT64", (-1, -1))]
    pool = random_pool(metas, seq_len=12)
    assert len(pool) > 1
    assert pool[0]["image"].shape == (1, 1, 8, 8) and pool[0]["image"].dtype == np.float32
    assert pool[0]["ids"].shape == (1, 12) and pool[0]["ids"].dtype == np.int64
    assert not np.array_equal(pool[0]["image"], pool[1]["image"])


def test_random_inputs_refuse_datatypes_they_cannot_make() -> None:
    with pytest.raises(BenchError, match="BYTES"):
        random_pool([TensorMeta("text", "BYTES", (-1,))], seq_len=4)


def test_npz_inputs_give_one_sample_per_row(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.arange(12, dtype=np.float32).reshape(3, 4), other=np.zeros(1))
    pool = npz_pool(path, [TensorMeta("x", "FP32", (-1, 4))])
    assert [p["x"].shape for p in pool] == [(1, 4)] * 3
    assert pool[2]["x"][0, 0] == 8.0
    with pytest.raises(BenchError, match="no array for input"):
        npz_pool(path, [TensorMeta("y", "FP32", (-1, 4))])
    with pytest.raises(BenchError, match="cannot read"):
        npz_pool(tmp_path / "missing.npz", [TensorMeta("x", "FP32", (-1, 4))])


def test_text_models_are_recognised_by_their_inputs() -> None:
    assert is_text_model(TEXT)
    assert not is_text_model([TensorMeta("image", "FP32", (-1, 3))])
    assert not is_text_model([*TEXT, TensorMeta("pixel_values", "FP32", (-1, 3))])


def test_the_corpus_gives_real_sentences_of_varied_length() -> None:
    pool = corpus_pool(TEXT)
    lengths = {p["input_ids"].shape[1] for p in pool}
    assert len(pool) > 100 and len(lengths) > 10  # varied, not padded to one length
    assert set(pool[0]) == {"input_ids", "attention_mask"}  # only what the model takes
    assert all(p["input_ids"].dtype == np.int64 for p in pool)
