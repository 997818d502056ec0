"""Hugging Face folders built here (a tiny BERT with its own WordPiece vocabulary), so the
tests run offline; the real all-MiniLM-L6-v2 folder is covered by the zoo tests."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

from inferopt.errors import ModelLoadError
from inferopt.sources import load

WORDS = ["inferopt", "exports", "this", "model", "to", "onnx", "a", "second", "example", "."]


def _tiny_bert(folder: Path, *, sentence_transformers: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(WORDS) + 5,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(str(folder))
    if sentence_transformers:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            },
        ]
        (folder / "modules.json").write_text(json.dumps(modules))
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(
            json.dumps({"pooling_mode_mean_tokens": True})
        )
    return folder


@pytest.mark.slow
def test_plain_folder_exports_last_hidden_state(tmp_path: Path) -> None:
    model = load(_tiny_bert(tmp_path / "bert"))
    assert model.provenance.kind == "huggingface"
    assert model.io.input_names == ["input_ids", "attention_mask"]
    assert model.io.output_names == ["last_hidden_state"]
    report = model.provenance.parity
    assert report is not None and report.ok and (report.batch, report.seq) == (3, 57)


@pytest.mark.slow
def test_sentence_transformers_folder_exports_normalised_mean_pooling(tmp_path: Path) -> None:
    model = load(_tiny_bert(tmp_path / "st", sentence_transformers=True))
    assert model.io.output_names == ["sentence_embedding"]
    feeds = model.io.sample_inputs(batch=2, seq=9)
    embedding = model.run(feeds)["sentence_embedding"]
    assert embedding.shape == (2, 16)
    assert np.allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)


def test_folder_without_weights_is_refused(tmp_path: Path) -> None:
    folder = _tiny_bert(tmp_path / "bert")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="Hugging Face folder has no weights"):
        load(folder)


def test_folder_without_model_or_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"neither model.onnx nor a Hugging Face config"):
        load(tmp_path)
