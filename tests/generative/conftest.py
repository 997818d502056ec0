"""Shared fixtures of the generative tests: a tiny random Llama as a Hugging Face folder, and
that folder exported with the default exporter into a decoder artifact (model.onnx with a KV
cache, genai_config.json, tokenizer files). Both are built once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Tests here import genai_loop.py beside them (--import-mode=importlib does not put test
# folders on sys.path by itself).
sys.path.insert(0, str(Path(__file__).parent))

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


@pytest.fixture(scope="session")
def zoo_tiny_llama_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The zoo's trained `tiny-llama` (trained once per machine, ~150 s, then cached)
    exported with the default exporter: real text statistics, so quantization damage shows."""
    from inferopt import zoo

    return export_causal_lm(
        zoo.generator_folder("tiny-llama"), tmp_path_factory.mktemp("zoo-tiny-llama")
    )
