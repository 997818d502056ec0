"""`inferopt export` of a causal LM: an artifact folder with its KV cache, checked against
PyTorch, and one-line refusals of exporters that do not apply."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from inferopt.generative.configs import tiny_folder
from inferopt.generative.kv import KvLayout


def _inferopt(*args: str) -> subprocess.CompletedProcess[str]:
    program = str(Path(sys.executable).parent / "inferopt")
    return subprocess.run([program, *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_folder("llama", tmp_path_factory.mktemp("llama-hf"))


def test_a_causal_lm_exports_to_a_checked_artifact_folder(
    llama_folder: Path, tmp_path: Path
) -> None:
    import onnx

    out = tmp_path / "artifact"
    done = _inferopt("export", str(llama_folder), "--out", str(out), "--max-context", "256")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "prefill" in done.stdout and "greedy" in done.stdout  # the parity figures
    for name in ("model.onnx", "genai_config.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    layout = KvLayout.of(onnx.load(str(out / "model.onnx"), load_external_data=False))
    assert (layout.layers, layout.kv_heads) == (2, 2)
    assert '"context_length": 256' in (out / "genai_config.json").read_text()


def test_exporters_that_do_not_apply_are_one_line_exit_2(
    llama_folder: Path, tmp_path: Path
) -> None:
    done = _inferopt("export", str(llama_folder), "--out", str(tmp_path / "a"),
                     "--exporter", "torchscript")  # fmt: skip
    assert done.returncode == 2 and "builder or dynamo" in done.stderr, done.stderr
    done = _inferopt("export", "digits-cnn", "--out", str(tmp_path / "d.onnx"),
                     "--exporter", "builder")  # fmt: skip
    assert done.returncode == 2 and "causal language models" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
