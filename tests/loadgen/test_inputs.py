"""How the generator chooses its inputs: a file, a tokenizer, the server's spec, random."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from inferopt.iospec import IOSpec, TensorSpec
from inferopt.loadgen.inputs import (
    BenchError,
    DataSource,
    TensorMeta,
    choose,
    npz_pool,
    random_pool,
    sentence_lengths,
)
from inferopt.loadgen.text import tokenized

TEXT = [TensorMeta(n, "INT64", (-1, -1)) for n in ("input_ids", "attention_mask")]
IDS = TensorSpec("input_ids", "int64", ("batch", "seq"), (0.0, 999.0), "ids")
MASK = TensorSpec("attention_mask", "int64", ("batch", "seq"), role="mask")
OUT = TensorSpec("pooled", "float32", ("batch", 8))
SPEC = IOSpec((IDS, MASK), (OUT,), batch_axis=0, seq_axis=1)


def test_random_inputs_follow_the_metadata() -> None:
    metas = [TensorMeta("image", "FP32", (-1, 1, 8, 8)), TensorMeta("ids", "INT64", (-1, -1))]
    pool = random_pool(metas, seq_len=12)
    assert len(pool) > 1
    assert pool[0]["image"].shape == (1, 1, 8, 8) and pool[0]["image"].dtype == np.float32
    assert pool[0]["ids"].shape == (1, 12) and pool[0]["ids"].dtype == np.int64
    assert not np.array_equal(pool[0]["image"], pool[1]["image"])


def test_random_masks_mark_every_position_valid() -> None:
    metas = [*TEXT, TensorMeta("key_padding_mask", "BOOL", (-1, -1))]
    pool = random_pool(metas, seq_len=8)
    assert all(np.all(p["attention_mask"] == 1) for p in pool)
    assert all(not np.any(p["key_padding_mask"]) for p in pool)  # True would mark padding
    assert max(int(p["input_ids"].max()) for p in pool) > 50  # ids are still random


def test_random_integers_are_small_and_said_so_unless_a_range_is_given() -> None:
    inputs = choose(TEXT, None, DataSource())
    ids = np.concatenate([p["input_ids"].ravel() for p in inputs.pool])
    assert ids.min() >= 0 and ids.max() <= 99
    assert inputs.notes == [
        "integer inputs are random 0..99 (input_ids): give --data or --tokenizer for real ids, "
        "or --int-range for the model's own range"
    ]
    ranged = choose(TEXT, None, DataSource(int_range=(5, 7), seq_len=4))
    ids = np.concatenate([p["input_ids"].ravel() for p in ranged.pool])
    assert set(ids.tolist()) == {5, 6, 7} and not ranged.notes
    assert ranged.origin.endswith("integers 5..7")


def test_the_servers_spec_gives_ids_within_the_table_and_real_lengths() -> None:
    inputs = choose(TEXT, SPEC, DataSource())
    assert inputs.origin.startswith("the server's input spec (input_ids: int64[batch, seq]")
    assert not inputs.notes
    ids = np.concatenate([p["input_ids"].ravel() for p in inputs.pool])
    assert ids.min() >= 0 and ids.max() <= 999 and ids.max() > 500  # the whole table
    assert all(np.all(p["attention_mask"] == 1) for p in inputs.pool)
    lengths = [p["input_ids"].shape[1] for p in inputs.pool]
    assert lengths == sentence_lengths(len(inputs.pool))
    assert len(set(lengths)) > 10  # varied, like sentences


def test_a_stated_length_or_range_overrides_the_spec() -> None:
    inputs = choose(TEXT, SPEC, DataSource(seq_len=5, int_range=(0, 3)))
    assert {p["input_ids"].shape for p in inputs.pool} == {(1, 5)}
    assert "(ids 0..3)" in inputs.origin and inputs.origin.endswith(", length 5")
    assert set(np.concatenate([p["input_ids"].ravel() for p in inputs.pool])) <= {0, 1, 2, 3}
    assert all(np.all(p["attention_mask"] == 1) for p in inputs.pool)  # masks stay masks


def test_a_spec_that_cannot_make_inputs_falls_back_to_random_and_says_why() -> None:
    broken = replace(SPEC, extra={"inputs_found": {"trials": 9, "problem": "no luck"}})
    inputs = choose(TEXT, broken, DataSource())
    assert inputs.origin.startswith("random from metadata")
    assert inputs.notes[0] == "the server's input spec was not used: no luck"
    other = IOSpec((IDS,), (OUT,), batch_axis=0, seq_axis=1)
    assert choose(TEXT, other, DataSource()).notes[0].startswith("the server's input spec was")


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


def test_a_tokenizer_gives_real_sentences_of_varied_length() -> None:
    metas = [*TEXT, TensorMeta("token_type_ids", "INT32", (-1, -1))]
    inputs = tokenized("minilm", metas)
    pool = inputs.pool
    lengths = {p["input_ids"].shape[1] for p in pool}
    assert len(pool) > 100 and len(lengths) > 10  # varied, not padded to one length
    assert set(pool[0]) == {"input_ids", "attention_mask", "token_type_ids"}
    assert pool[0]["token_type_ids"].dtype == np.int32  # as the metadata says
    assert all(p["input_ids"][0, 0] == 101 and p["input_ids"][0, -1] == 102 for p in pool)
    assert inputs.origin.startswith(f"tokenizer minilm: {len(pool)} held-out corpus sentences")


def test_an_artifact_names_its_tokenizer_through_its_source(tmp_path: Path) -> None:
    (tmp_path / "inferopt.json").write_text(json.dumps({"source": "minilm"}))
    inputs = choose(TEXT, SPEC, DataSource(tokenizer=str(tmp_path)))
    assert inputs.origin.startswith(f"tokenizer minilm (the source of {tmp_path})")
    assert inputs.pool[0]["input_ids"][0, 0] == 101  # MiniLM's [CLS], not the spec's ids


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("digits-cnn", "that zoo model takes no text"),
        ("no-such-thing", "no such folder, and not a zoo model with a tokenizer"),
        ("{tmp}", "no tokenizer there"),
        ("{artifact}", "the artifact was made from 'model.onnx', which gives no tokenizer"),
    ],
)
def test_a_tokenizer_that_cannot_be_found_is_a_one_line_error(
    tmp_path: Path, name: str, message: str
) -> None:
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "inferopt.json").write_text(json.dumps({"source": "model.onnx"}))
    name = name.format(tmp=tmp_path, artifact=artifact)
    with pytest.raises(BenchError, match=message) as caught:
        tokenized(name, TEXT)
    assert "\n" not in str(caught.value)


def test_a_tokenizer_needs_a_text_model() -> None:
    with pytest.raises(BenchError, match="makes input_ids, but the model's inputs are"):
        tokenized("minilm", [TensorMeta("image", "FP32", (-1, 3))])
    with pytest.raises(BenchError, match="also takes pixel_values: give --data"):
        tokenized("minilm", [*TEXT, TensorMeta("pixel_values", "FP32", (-1, 3))])


@pytest.mark.parametrize("shape", [(1, 3, 64, 48), (3, 64, 48)])
def test_stated_shapes_size_random_inputs_in_either_spelling(shape: tuple[int, ...]) -> None:
    image = [TensorMeta("x", "FP32", (-1, 3, -1, -1))]
    chosen = choose(image, None, DataSource(shapes={"x": shape}))
    assert all(p["x"].shape == (1, 3, 64, 48) for p in chosen.pool)
    with pytest.raises(BenchError, match=r"--input-shape x: \[1, 4, 64, 48\] does not fit"):
        choose(image, None, DataSource(shapes={"x": (4, 64, 48)}))


def test_stated_shapes_size_the_servers_spec() -> None:
    image = TensorSpec("x", "float32", ("batch", 3, "h", "w"))
    spec = IOSpec((image,), (OUT,), batch_axis=0)
    metas = [TensorMeta("x", "FP32", (-1, 3, -1, -1))]
    chosen = choose(metas, spec, DataSource(shapes={"x": (3, 32, 96)}))
    assert all(p["x"].shape == (1, 3, 32, 96) for p in chosen.pool)
