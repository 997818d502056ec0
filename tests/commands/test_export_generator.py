"""`inferopt export` of a causal LM: an artifact folder with its KV cache, checked against
PyTorch, and one-line refusals of exporters that do not apply."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

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


# -- GGUF files as a source, and refusals ---------------------------------------------------


def _gguf(path: Path, architecture: str = "llama", odd_type: bool = False) -> Path:
    """A GGUF header with the sizes and a one-token vocabulary; `odd_type` adds a tensor in
    Q8_K, a type transformers cannot unpack."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_embedding_length(32)
    writer.add_token_list(["a"])
    writer.add_tensor("output_norm.weight", np.ones(32, np.float32))
    if odd_type:
        qtype = gguf.GGMLQuantizationType.Q8_K
        block = np.zeros((1, gguf.GGML_QUANT_SIZES[qtype][1]), np.uint8)
        writer.add_tensor("blk.0.odd.weight", block, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b"\x08\x01 an ONNX file, renamed") and p,
         "model.gguf: not a GGUF file (starts with"),
        (lambda p: _gguf(p, "rwkv6"), "cannot load GGUF architecture 'rwkv6' (it loads "),
        (lambda p: _gguf(p, odd_type=True), "cannot dequantize GGUF tensor type Q8_K (1 tensor)"),
        (lambda p: p, "model.gguf: no such GGUF file"),
    ],
    ids=["not-gguf", "architecture", "tensor-type", "missing"],
)  # fmt: skip
def test_gguf_files_transformers_cannot_load_are_one_line_exit_2(
    make: Any, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from inferopt.cli import main

    pytest.importorskip("gguf")
    monkeypatch.setenv("INFEROPT_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "model.gguf"
    make(source)
    assert main(["export", str(source), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_an_architecture_transformers_does_not_know_is_one_line_exit_2(
    llama_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from inferopt.cli import main

    folder = Path(shutil.copytree(llama_folder, tmp_path / "foo"))
    config = json.loads((folder / "config.json").read_text())
    config.update(architectures=["FooForCausalLM"], model_type="foo")
    (folder / "config.json").write_text(json.dumps(config))
    assert main(["export", str(folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "transformers cannot load it" in err and err.count("\n") == 1, err


def test_a_max_context_beyond_memory_is_refused_with_the_figures(
    llama_folder: Path, tmp_path: Path
) -> None:
    """The real memory figure: 10**12 tokens x 512 B is more than any machine has."""
    folder = Path(shutil.copytree(llama_folder, tmp_path / "long"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 2**62}))
    out = tmp_path / "out"
    done = _inferopt("export", str(folder), "--out", str(out), "--max-context", str(10**12))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert re.search(
        r"--max-context 1000000000000 needs 465\.7 TiB of KV cache \(512 B per token x "
        r"1000000000000 tokens\) \+ .* of weights \+ 512 MiB of headroom, but .* is available; "
        r"at most \d+ tokens fit",
        done.stderr,
    ), done.stderr
    assert not out.exists()


@pytest.mark.slow
def test_the_smollm2_gguf_file_exports_to_a_checked_artifact(tmp_path: Path) -> None:
    """The real GGUF (Q4_1/Q8_0, 30 layers) given by path: converted, exported, parity-checked."""
    from inferopt.errors import ZooError
    from inferopt.zoo import smollm2

    try:
        source = smollm2.gguf_path()
    except ZooError as exc:
        pytest.skip(str(exc))
    out = tmp_path / "artifact"
    done = _inferopt("export", str(source), "--out", str(out), "--max-context", "512")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "prefill" in done.stdout and "greedy" in done.stdout  # the parity table
    for name in ("model.onnx", "genai_config.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    genai = json.loads((out / "genai_config.json").read_text())
    assert genai["model"]["context_length"] == 512
    import onnx

    layout = KvLayout.of(onnx.load(str(out / "model.onnx"), load_external_data=False))
    assert (layout.layers, layout.kv_heads, layout.head_dim) == (30, 3, 64)
