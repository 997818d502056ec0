"""GGUF files as a source (inferopt.generative.gguf): a tiny Llama written here with gguf's
GGUFWriter converts to a cached Hugging Face folder; files transformers cannot load are
refused from their header, one line each, before transformers sees them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytest.importorskip("accelerate")

import gguf

from inferopt.errors import InputError, ModelLoadError
from inferopt.generative import gguf as gguf_source

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 32, 2, 4, 2, 64
CHAT = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"


def write_gguf(
    path: Path,
    *,
    architecture: str = "llama",
    tokenizer: bool = True,
    tokenizer_model: str = "gpt2",
    extra: dict[str, tuple[np.ndarray, object]] | None = None,
    seed: int = 0,
    metadata: bool = True,
) -> Path:
    """A tiny Llama GGUF: float32 weights drawn from `seed`, a byte-level BPE vocabulary (the
    256 byte symbols, one merge, two special tokens) with a chat template; `extra` adds raw
    tensors {name: (bytes, GGMLQuantizationType)}."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    writer = gguf.GGUFWriter(str(path), architecture)
    head_dim = HIDDEN // HEADS
    tokens = [*bytes_to_unicode().values(), "he", "<|im_start|>", "<|im_end|>"]
    if metadata:
        writer.add_name("tiny")
        writer.add_context_length(128)
        writer.add_embedding_length(HIDDEN)
        writer.add_block_count(LAYERS)
        writer.add_feed_forward_length(FFN)
        writer.add_head_count(HEADS)
        writer.add_head_count_kv(KV_HEADS)
        writer.add_rope_dimension_count(head_dim)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_vocab_size(len(tokens))
    if tokenizer:
        writer.add_tokenizer_model(tokenizer_model)
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types([1] * (len(tokens) - 2) + [3, 3])  # 3: control tokens
        writer.add_token_merges(["h e"])
        writer.add_bos_token_id(len(tokens) - 2)
        writer.add_eos_token_id(len(tokens) - 1)
        writer.add_chat_template(CHAT)
    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    weight("token_embd.weight", len(tokens), HIDDEN)  # no output.weight: tied embeddings
    for i in range(LAYERS):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(HIDDEN, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(HIDDEN, np.float32))
        weight(f"blk.{i}.attn_q.weight", HIDDEN, HIDDEN)
        weight(f"blk.{i}.attn_k.weight", KV_HEADS * head_dim, HIDDEN)
        weight(f"blk.{i}.attn_v.weight", KV_HEADS * head_dim, HIDDEN)
        weight(f"blk.{i}.attn_output.weight", HIDDEN, HIDDEN)
        weight(f"blk.{i}.ffn_gate.weight", FFN, HIDDEN)
        weight(f"blk.{i}.ffn_up.weight", FFN, HIDDEN)
        weight(f"blk.{i}.ffn_down.weight", HIDDEN, FFN)
    writer.add_tensor("output_norm.weight", np.ones(HIDDEN, np.float32))
    for name, (data, qtype) in (extra or {}).items():
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def q8_k_blocks(count: int) -> tuple[np.ndarray, object]:
    """`count` rows of one Q8_K block each (256 values in 292 bytes): a type gguf's numpy
    dequantizer lacks."""
    qtype = gguf.GGMLQuantizationType.Q8_K
    _, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    return np.zeros((count, block_bytes), dtype=np.uint8), qtype


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("INFEROPT_CACHE", str(cache))
    return cache


def test_a_gguf_file_becomes_a_cached_hugging_face_folder(tmp_path: Path) -> None:
    import transformers

    source = write_gguf(tmp_path / "tiny.gguf")
    folder = gguf_source.gguf_folder(source)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["num_key_value_heads"]) == (LAYERS, KV_HEADS)
    assert config.get("quantization_config") is None  # dense: exportable
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template == CHAT
    assert tokenizer("he")["input_ids"] == [256]  # the merge

    stamp = (folder / "config.json").stat().st_mtime_ns
    assert gguf_source.gguf_folder(source) == folder  # reused, not converted again
    assert (folder / "config.json").stat().st_mtime_ns == stamp
    assert not [p for p in folder.parent.iterdir() if p.name.endswith(".tmp")]  # no staging

    copy = tmp_path / "copy" / "tiny.gguf"
    copy.parent.mkdir()
    copy.write_bytes(source.read_bytes())
    assert gguf_source.cache_path(copy) == folder  # keyed by content, not by place
    (tmp_path / "other").mkdir()
    other = write_gguf(tmp_path / "other" / "tiny.gguf", seed=1)  # same name, other weights
    assert gguf_source.cache_path(other) != folder
    assert "transformers" in folder.name and "gguf" in folder.name  # and by the versions


def test_not_a_gguf_file_is_refused_by_its_magic(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 a zip, renamed")
    with pytest.raises(InputError, match=r"model\.gguf: not a GGUF file \(starts with b'PK"):
        gguf_source.gguf_folder(path)
    path.write_bytes(b"GGUF\x03\x00\x00\x00\xff")  # the magic, then a truncated header
    with pytest.raises(InputError, match="not a readable GGUF file") as raised:
        gguf_source.gguf_folder(path)
    assert "\n" not in str(raised.value)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such GGUF file"):
        gguf_source.gguf_folder(tmp_path / "absent.gguf")


def test_an_architecture_transformers_cannot_load_is_refused(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "rwkv.gguf", architecture="rwkv6")
    with pytest.raises(InputError) as raised:
        gguf_source.gguf_folder(path)
    message = str(raised.value)
    assert "cannot load GGUF architecture 'rwkv6'" in message and "llama" in message
    assert "\n" not in message and "general" not in message.split("loads")[1]
    assert not any((tmp_path / "cache" / "gguf").iterdir())  # nothing converted


def test_supported_architectures_come_from_transformers() -> None:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    supported = gguf_source.supported_architectures()
    assert {"llama", "qwen2", "phi3", "gpt2"} <= supported
    assert supported >= set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}
    assert "general" not in supported and "tokenizer" not in supported


def test_tensor_types_transformers_cannot_dequantize_are_named_and_counted(
    tmp_path: Path,
) -> None:
    extra = {
        "blk.0.extra_a.weight": q8_k_blocks(1),
        "blk.0.extra_b.weight": q8_k_blocks(1),
        "blk.1.extra.weight": (np.zeros(4, np.int32), gguf.GGMLQuantizationType.I32),
    }
    path = write_gguf(tmp_path / "odd.gguf", extra=extra)
    with pytest.raises(InputError) as raised:
        gguf_source.gguf_folder(path)
    message = str(raised.value)
    assert "cannot dequantize GGUF tensor type I32 (1 tensor), Q8_K (2 tensors)" in message
    assert "F32" not in message and "\n" not in message


def test_dequantizable_types() -> None:
    for name in ("F32", "F16", "BF16", "Q4_1", "Q8_0", "Q4_K", "Q6_K"):
        assert gguf_source.dequantizable("llama", name), name
    for name in ("Q8_K", "Q8_1", "I32", "F64", "NOT_A_TYPE"):
        assert not gguf_source.dequantizable("llama", name), name


def test_a_file_without_tokenizer_is_refused(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "bare.gguf", tokenizer=False)
    with pytest.raises(InputError, match=r"bare\.gguf: the GGUF file has no tokenizer"):
        gguf_source.gguf_folder(path)


def test_a_header_without_the_model_size_is_refused(tmp_path: Path) -> None:
    """transformers would fill its config class's default (a 7B Llama): gigabytes, then fail."""
    path = write_gguf(tmp_path / "headless.gguf", metadata=False)
    with pytest.raises(InputError, match=r"lacks llama\.block_count, llama\.embedding_length"):
        gguf_source.gguf_folder(path)


def test_weights_larger_than_memory_are_refused_before_converting(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf")
    header = gguf_source.read_header(path)
    assert header.dense_bytes == 4 * sum(t.n_elements for t in gguf.GGUFReader(path).tensors)
    with pytest.raises(InputError, match=r"converting it needs .* but 100 MiB is available"):
        gguf_source.check_header(path, header, available=100 * 2**20)
    gguf_source.check_header(path, header, available=2**40)  # fits


def test_a_file_transformers_fails_on_is_one_line_and_leaves_no_folder(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "odd.gguf", tokenizer_model="bogus")
    with pytest.raises(ModelLoadError, match=r"transformers cannot read odd\.gguf") as raised:
        gguf_source.gguf_folder(path)
    message = str(raised.value)
    assert "\n" not in message and "(GGUF tensor types F32)" in message and "bogus" in message
    assert not list((tmp_path / "cache" / "gguf").iterdir())  # the staging folder is gone


def test_missing_packages_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gguf_source, "REQUIRED", ("gguf", "no_such_package_here"))
    path = write_gguf(tmp_path / "tiny.gguf")
    with pytest.raises(ModelLoadError, match="needs no_such_package_here: pip install"):
        gguf_source.gguf_folder(path)


def test_smollm2_converts_through_this_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """The zoo's smollm2 keeps its own cache key and hands the conversion to build_folder."""
    from inferopt.zoo import smollm2

    calls: list[tuple[Path, Path]] = []
    monkeypatch.setattr(gguf_source, "build_folder", lambda s, f: calls.append((s, f)) or f)
    monkeypatch.setattr(smollm2, "gguf_path", lambda: Path("SmolLM2.gguf"))
    folder = smollm2.smollm2_folder()
    assert calls == [(Path("SmolLM2.gguf"), smollm2.cache_path())] and folder == calls[0][1]
    assert folder.name.startswith("smollm2-135m-instruct-v1-wheel")
    assert os.environ["INFEROPT_CACHE"] in str(folder)
