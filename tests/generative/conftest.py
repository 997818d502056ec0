"""Shared fixtures of the generative tests: a tiny random Llama as a Hugging Face folder, and
that folder exported with the default exporter into a decoder artifact (model.onnx with a KV
cache, genai_config.json, tokenizer files). Both are built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")

from inferopt.generative.configs import tiny_folder
from inferopt.generative.export import export_causal_lm


@pytest.fixture(scope="session")
def tiny_llama_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random Llama (hidden 64, 2 layers, 4 heads over 2 KV heads, vocab 512)."""
    return tiny_folder("llama", tmp_path_factory.mktemp("tiny-llama-hf"))


@pytest.fixture(scope="session")
def tiny_llama_artifact(tiny_llama_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_llama_folder` exported by `export_causal_lm` with its default exporter."""
    return export_causal_lm(tiny_llama_folder, tmp_path_factory.mktemp("tiny-llama-onnx"))
