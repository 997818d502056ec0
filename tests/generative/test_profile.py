"""profile_generator on the tiny random Llama: the timings behave as timings do (longer
prompts take longer, percentiles are ordered), and the byte counts match what the graph
holds, counted here independently, for the fp32 artifact and a MatMulNBits int4 copy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inferopt.errors import InputError
from inferopt.generative.configs import HIDDEN, KV_HEADS, LAYERS
from inferopt.generative.profile import (
    GeneratorProfile,
    GeneratorProfileConfig,
    profile_generator,
    weight_traffic,
)

HEAD_DIM = 16  # the tiny Llama's hidden 64 over 4 query heads
SMALL = GeneratorProfileConfig(prompt_lengths=(4, 256), decode_tokens=16, repeats=3, threads=1)


@pytest.fixture(scope="module")
def profile(tiny_llama_artifact: Path) -> GeneratorProfile:
    return profile_generator(tiny_llama_artifact, SMALL)


def _per_token_bytes(folder: Path) -> int:
    """Bytes one decoded token reads, from the graph with its weights: every initializer
    feeding a MatMul or MatMulNBits node, plus one row of the embedding table."""
    model = onnx.load(str(folder / "model.onnx"))
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    matmul = {
        name
        for node in model.graph.node
        if node.op_type in ("MatMul", "MatMulNBits")
        for name in node.input
        if name in arrays
    }
    (table,) = {n.input[0] for n in model.graph.node if n.op_type == "Gather"} & set(arrays)
    return int(sum(arrays[n].nbytes for n in matmul) + arrays[table][0].nbytes)


def test_timings(profile: GeneratorProfile) -> None:
    short, long = profile.first_token
    assert (short.prompt_tokens, long.prompt_tokens) == (4, 256)
    assert long.median_s > short.median_s > 0  # 64x the tokens: slower, loosely
    for first in profile.first_token:
        assert len(first.samples_s) == 3 and first.p90_s >= first.median_s
        assert first.prefill_tokens_per_s == pytest.approx(first.prompt_tokens / first.median_s)
    d = profile.decode
    assert (d.prompt_tokens, d.tokens, d.runs) == (128, 16, 3)
    assert 0 < d.ms_p50 <= d.ms_p90 <= d.ms_p99
    assert d.tokens_per_s == pytest.approx(1e3 / d.ms_mean)
    assert profile.prefill_not_batched == (long.prefill_tokens_per_s < 2 * d.tokens_per_s)
    assert "decode" in profile.prefill_note
    assert profile.peak_rss_bytes > profile.weights.total_bytes


def test_kv_and_weight_bytes(profile: GeneratorProfile, tiny_llama_artifact: Path) -> None:
    kv, per_token = profile.kv, 2 * LAYERS * KV_HEADS * HEAD_DIM * 4
    assert (kv.layers, kv.kv_heads, kv.head_dim, kv.dtype) == (2, 2, 16, "float32")
    assert kv.bytes_per_token == per_token
    assert kv.bytes_at_max_context == per_token * 2048 == per_token * kv.max_context
    assert (kv.longest_tokens, kv.bytes_at_longest) == (256 + 16, per_token * (256 + 16))
    assert profile.weights.bytes_per_token == _per_token_bytes(tiny_llama_artifact)
    data = (tiny_llama_artifact / "model.onnx.data").stat().st_size
    assert data <= profile.weights.total_bytes <= data + 1024  # + small Constant nodes


def test_roofline(profile: GeneratorProfile) -> None:
    r, w = profile.roofline, profile.weights
    assert r.mean_decode_context == 128 + (16 + 1) / 2
    assert r.bytes_per_decoded_token == w.bytes_per_token + 512 * r.mean_decode_context
    assert r.decode_roof_tokens_per_s == pytest.approx(
        r.bandwidth_bytes_per_s / r.bytes_per_decoded_token
    )
    assert 0 < r.decode_fraction <= 1.5
    assert 0 < r.prefill_fraction_of_fp32_peak <= 1.5
    # 2N + 4 layers d_attn (P + 1) / 2 with N the MatMul parameters (inputs x outputs)
    assert w.matmul_params == LAYERS * (HIDDEN * 128 + HIDDEN * HIDDEN + 3 * HIDDEN * 128) + (
        HIDDEN * 512
    )
    assert r.attention_counted and r.last_logits
    # Last-position logits, as generate runs them: the lm_head (HIDDEN x 512) once in 256 tokens.
    head = HIDDEN * 512
    assert r.prefill_flops_per_token == pytest.approx(
        2 * (w.matmul_params - head) + 2 * head / 256 + 4 * LAYERS * HIDDEN * 257 / 2
    )


def test_json_round_trips(profile: GeneratorProfile) -> None:
    text = json.dumps(profile.to_json())
    assert GeneratorProfile.from_json(json.loads(text)) == profile
    assert json.loads(text)["hardware"]["usable_cores"] == profile.hardware.usable_cores


def test_int4_matmulnbits_reads_fewer_bytes(tiny_llama_artifact: Path, tmp_path: Path) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    folder = tmp_path / "int4"
    shutil.copytree(tiny_llama_artifact, folder, ignore=shutil.ignore_patterns("model.onnx*"))
    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(tiny_llama_artifact / "model.onnx")), block_size=32, bits=4
    )
    quantizer.process()
    onnx.save(quantizer.model.model, str(folder / "model.onnx"), save_as_external_data=True,
              location="model.onnx.data")  # fmt: skip
    small = GeneratorProfileConfig(prompt_lengths=(8,), decode_tokens=4, repeats=1, threads=1)
    fp32 = weight_traffic(
        onnx.load(str(tiny_llama_artifact / "model.onnx"), load_external_data=False)
    )
    int4 = profile_generator(folder, small)
    assert int4.weights.packed_matmuls == 11
    assert int4.weights.matmul_params == fp32.matmul_params  # K x N: the same matrices
    assert int4.weights.bytes_per_token == _per_token_bytes(folder)
    assert int4.weights.bytes_per_token < fp32.bytes_per_token / 4  # 4 bits + scales vs 32
    assert int4.decode.tokens_per_s > 0


def test_tied_embedding_counts_once() -> None:
    """A table both gathered (embedding) and transposed into the lm_head MatMul is read whole
    once per token, not once plus a row; a Gemm's weight and bias count."""
    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.random((50, 8), dtype=np.float32), "table")
    w = numpy_helper.from_array(rng.random((8, 8), dtype=np.float32), "w")
    b = numpy_helper.from_array(rng.random(8, dtype=np.float32), "b")
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["x"]),
        helper.make_node("Gemm", ["x", "w", "b"], ["h"]),
        helper.make_node("Transpose", ["table"], ["table_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["h", "table_t"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 50])], [table, w, b],
    )  # fmt: skip
    traffic = weight_traffic(helper.make_model(graph))
    assert traffic.bytes_per_token == (50 * 8 + 8 * 8 + 8) * 4
    assert traffic.embedding_row_bytes == 0
    assert traffic.matmul_params == 8 * 8 + 50 * 8


def test_context_caps_default_lengths_and_refuses_given_ones(
    tiny_llama_artifact: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "short"
    shutil.copytree(tiny_llama_artifact, folder)
    genai = json.loads((folder / "genai_config.json").read_text())
    genai["model"]["context_length"] = 100
    (folder / "genai_config.json").write_text(json.dumps(genai))
    capped = profile_generator(folder, GeneratorProfileConfig(decode_tokens=8, repeats=1))
    assert [f.prompt_tokens for f in capped.first_token] == [16, 100]
    assert capped.decode.prompt_tokens == 92 and capped.kv.max_context == 100
    with pytest.raises(InputError, match="prompt length 200 is past the context cap of 100"):
        profile_generator(folder, GeneratorProfileConfig(prompt_lengths=(16, 200)))
    with pytest.raises(InputError, match="decode tokens 100 leave no room"):
        profile_generator(folder, GeneratorProfileConfig(decode_tokens=100))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prompt_lengths": ()}, "prompt lengths must be >= 1"),
        ({"prompt_lengths": (16, 0)}, "prompt lengths must be >= 1"),
        ({"decode_tokens": 0}, "decode_tokens must be >= 1"),
        ({"repeats": 0}, "repeats must be >= 1"),
        ({"threads": 0}, "threads must be >= 1"),
    ],
)
def test_config_refuses_bad_values(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GeneratorProfileConfig(**fields)  # type: ignore[arg-type]
