"""A context memory cannot hold is refused with the figures (inferopt.generative.memory): the
arithmetic, the message, where the memory figure comes from, and the two callers (the
exporter's cap and the Generator's)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from inferopt.errors import InputError
from inferopt.generative import memory
from inferopt.generative.kv import KvLayout

GIB = 2**30


def test_need_counts_weights_cache_and_headroom() -> None:
    layout = KvLayout(layers=2, kv_heads=2, head_dim=16, max_context=1000)  # 512 B per token
    figures = memory.need(layout, 10_000, available=memory.HEADROOM + 10_000 + 300 * 512)
    assert figures.kv_bytes == 512 * 1000 and figures.bytes_per_token == 512
    assert figures.total == 512_000 + 10_000 + memory.HEADROOM
    assert not figures.fits and figures.max_tokens == 300
    batch = memory.need(layout, 10_000, batch=4, context=10, available=4 * GIB)
    assert batch.kv_bytes == 4 * 512 * 10 and batch.bytes_per_token == 2048 and batch.fits
    with pytest.raises(ValueError, match="batch must be >= 1"):
        memory.need(layout, 0, batch=0)


def test_refusal_names_the_figures_and_what_fits() -> None:
    layout = KvLayout(layers=16, kv_heads=8, head_dim=64, max_context=1_000_000)  # 64 KiB/token
    with pytest.raises(InputError) as raised:
        memory.check_context(layout, GIB // 2, available=int(20.3 * GIB))
    assert str(raised.value) == (
        "--max-context 1000000 needs 61 GiB of KV cache (64 KiB per token x 1000000 tokens) "
        "+ 512 MiB of weights + 512 MiB of headroom, but 20.3 GiB is available; "
        "at most 310000 tokens fit"
    )  # (20.3 - 1) GiB / 64 KiB = 316211 tokens, quoted rounded down


def test_refusal_for_a_batch_a_capped_context_and_weights_alone() -> None:
    layout = KvLayout(layers=2, kv_heads=2, head_dim=16, max_context=4096)
    with pytest.raises(InputError, match=r"x 4096 tokens x batch 8\)") as raised:
        memory.check_context(layout, 0, batch=8, asked=10**9, available=memory.HEADROOM + 1000)
    message = str(raised.value)
    assert message.startswith("--max-context 1000000000 (capped at the model's context, 4096")
    with pytest.raises(InputError, match="the weights and headroom alone do not fit"):
        memory.check_context(layout, 2 * GIB, available=GIB)
    figures = memory.check_context(layout, 0, available=GIB)  # fits: the figures come back
    assert figures.fits and figures.kv_bytes == 512 * 4096


def test_available_memory_honours_a_cgroup_limit(tmp_path: Path) -> None:
    import psutil

    system = memory.available_bytes(tmp_path / "absent")  # no cgroup files: psutil's figure
    assert abs(system - psutil.virtual_memory().available) < GIB
    (tmp_path / "memory.max").write_text("1073741824\n")
    (tmp_path / "memory.current").write_text("73741824\n")
    assert memory.available_bytes(tmp_path) == min(system, 1_000_000_000)
    (tmp_path / "memory.max").write_text("max\n")
    assert abs(memory.available_bytes(tmp_path) - system) < GIB


def test_weight_bytes_of_a_folder_and_an_artifact(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "model.safetensors").write_bytes(b"\0" * 1000)
    (hf / "pytorch_model.bin").write_bytes(b"\0" * 5000)  # the same weights again: ignored
    (hf / "tokenizer.json").write_text("{}")
    assert memory.hf_weight_bytes(hf, {"torch_dtype": "float32"}) == 1000
    assert memory.hf_weight_bytes(hf, {"dtype": "bfloat16"}) == 2000  # exported as float32
    (hf / "config.json").write_text(json.dumps({"torch_dtype": "float16"}))
    assert memory.hf_weight_bytes(hf) == 2000
    art = tmp_path / "art"
    art.mkdir()
    (art / "model.onnx").write_bytes(b"\0" * 300)
    (art / "model.onnx.data").write_bytes(b"\0" * 7000)
    (art / "tokenizer.json").write_bytes(b"\0" * 900)
    assert memory.onnx_weight_bytes(art / "model.onnx") == 7300


def test_sizes_and_rounding() -> None:
    assert [memory.size(n) for n in (12, 65536, 1536 * 2**20, int(20.3 * GIB), 3 * 2**40)] == [
        "12 B", "64 KiB", "1.5 GiB", "20.3 GiB", "3 TiB",
    ]  # fmt: skip
    assert [memory.round_down(n) for n in (7, 99, 316211, 1049)] == [7, 99, 310000, 1000]


# -- the callers (tests/generative/conftest.py's tiny Llama; it skips without transformers) --


def test_export_refuses_a_cap_memory_cannot_hold(
    tiny_llama_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inferopt.generative.export import export_causal_lm

    monkeypatch.setattr(memory, "available_bytes", lambda: memory.HEADROOM + 2**20)
    out = tmp_path / "never"
    with pytest.raises(InputError, match=r"^--max-context 2048 needs 1 MiB of KV cache"):
        export_causal_lm(tiny_llama_folder, out, max_context=2048)
    assert not out.exists()  # refused before anything was written


def test_export_refuses_a_window_sized_beyond_memory(
    tiny_llama_folder: Path, tmp_path: Path
) -> None:
    """No patching: 10**12 tokens of 512 B are more than any machine this runs on has."""
    from inferopt.generative.export import export_causal_lm

    folder = tmp_path / "hf"
    shutil.copytree(tiny_llama_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 2**62}))
    with pytest.raises(InputError, match=r"465\.7 TiB of KV cache \(512 B per token x 10{12}"):
        export_causal_lm(folder, tmp_path / "out", max_context=10**12)


def test_generator_refuses_a_max_context_memory_cannot_hold(
    tiny_llama_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inferopt.generative.generate import Generator

    weights = memory.onnx_weight_bytes(tiny_llama_artifact / "model.onnx")
    per_token = 2 * 2 * 2 * 16 * 4  # layers, key+value, kv heads, head_dim, float32
    room = memory.HEADROOM + weights + 500 * per_token
    monkeypatch.setattr(memory, "available_bytes", lambda: room)
    with pytest.raises(InputError, match=r"--max-context 1000 needs .* at most 500 tokens fit$"):
        Generator(tiny_llama_artifact, max_context=1000)
    assert Generator(tiny_llama_artifact, max_context=400).layout.max_context == 400
    assert Generator(tiny_llama_artifact).layout.max_context == 2048  # no cap asked: no check
