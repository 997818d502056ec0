"""The weight-only passes (int4-weight, int8-weight), mixed precision and W8A8 on decoder
artifacts: what they write, that ONNX Runtime runs it, and their measured fidelity on the
trained zoo tiny-llama against its fp32 artifact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inferopt.errors import InputError
from inferopt.generative.fidelity import FidelityConfig, ReferenceRun, measure_fidelity
from inferopt.generative.generate import GenerationConfig, Generator
from inferopt.generative.mixed import choose_int8_nodes, sensitivities
from inferopt.generative.w8a8 import W8A8
from inferopt.generative.weightonly import (
    WeightOnly,
    lm_head_node,
    quantize_blocks,
    weight_matmuls,
)
from inferopt.runtime import create_session

FIDELITY = FidelityConfig(windows=8, window_tokens=64, greedy_prompts=4, greedy_tokens=16)


@pytest.fixture(scope="module")
def reference(zoo_tiny_llama_artifact: Path) -> ReferenceRun:
    return ReferenceRun.of(zoo_tiny_llama_artifact, FIDELITY)


def _ops(folder: Path) -> list[onnx.NodeProto]:
    return list(onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.node)


def _attr(node: onnx.NodeProto, name: str) -> int | None:
    found = [a.i for a in node.attribute if a.name == name]
    return found[0] if found else None


def test_float_zero_points_reproduce_a_4bit_affine_grid_exactly() -> None:
    """Weights already on a grid d*q + m per 32-block (GGUF Q4_1) come back bit for bit."""
    rng = np.random.default_rng(0)
    k, n, block = 96, 5, 32
    q = rng.integers(0, 16, (n, k // block, block))
    q[..., 0], q[..., 1] = 0, 15  # Q4_1 puts the block's min at 0 and max at 15
    d = rng.uniform(0.01, 0.1, (n, k // block, 1))
    m = rng.uniform(-1, 0, (n, k // block, 1))
    weight = (d * q + m).reshape(n, k).T.astype(np.float32)  # [K, N], blocks along K
    packed, scales, zeros = quantize_blocks(weight, 4, block)
    low, high = packed & 0x0F, packed >> 4
    codes = np.stack([low, high], axis=-1).reshape(n, k // block, block).astype(np.float32)
    back = (codes - zeros.reshape(n, -1, 1)) * scales.reshape(n, -1, 1)
    np.testing.assert_allclose(back.reshape(n, k).T, weight, rtol=0, atol=1e-6)


def test_matmulnbits_with_float_zero_points_matches_numpy_in_onnx_runtime() -> None:
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((64, 24)).astype(np.float32)
    packed, scales, zeros = quantize_blocks(weight, 4, 32)
    node = helper.make_node("MatMulNBits", ["x", "b", "s", "z"], ["y"], domain="com.microsoft",
                            K=64, N=24, bits=4, block_size=32, accuracy_level=1)  # fmt: skip
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 24])],
        [numpy_helper.from_array(packed, "b"), numpy_helper.from_array(scales, "s"),
         numpy_helper.from_array(zeros, "z")],
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    x = rng.standard_normal((3, 64)).astype(np.float32)
    (y,) = create_session(model).run(None, {"x": x})
    # RTN error is at most half a step per weight: bound the product by it.
    step = scales.reshape(24, 2).max()
    assert np.abs(y - x @ weight).max() < 0.5 * step * np.abs(x).sum(axis=1).max()
    assert np.abs(y - x @ weight).max() > 0  # it did quantize


@pytest.mark.parametrize(
    ("pass_", "worst_change", "least_top1"),
    [
        (WeightOnly(bits=8), 0.02, 0.97),
        (WeightOnly(), 0.10, 0.85),
        (WeightOnly(algorithm="rtn-float", accuracy_level=1), 0.10, 0.85),
        (WeightOnly(algorithm="hqq"), 0.10, 0.85),
        (WeightOnly(algorithm="k-quant", block_size=32), 0.10, 0.85),
        (WeightOnly(algorithm="gptq", calibration_windows=4), 0.10, 0.85),
    ],
    ids=["int8", "int4-rtn", "int4-rtn-float", "int4-hqq", "int4-k-quant", "int4-gptq"],
)
def test_each_algorithm_writes_matmulnbits_and_keeps_fidelity(
    zoo_tiny_llama_artifact: Path,
    reference: ReferenceRun,
    tmp_path: Path,
    pass_: WeightOnly,
    worst_change: float,
    least_top1: float,
) -> None:
    out = pass_.apply(zoo_tiny_llama_artifact, tmp_path / "q")
    nbits = [n for n in _ops(out) if n.op_type == "MatMulNBits"]
    source = onnx.load(str(zoo_tiny_llama_artifact / "model.onnx"))
    assert len(nbits) == len(weight_matmuls(source))  # every weight MatMul, lm_head included
    assert {_attr(n, "accuracy_level") for n in nbits} == {pass_.accuracy_level}
    head = [n for n in nbits if n.output[0] == "logits" or n.name.startswith("/lm_head")]
    assert head and _attr(head[0], "bits") == 8  # lm_head="int8" by default
    body_bits = {_attr(n, "bits") for n in nbits if n not in head}
    assert body_bits == {pass_.bits}
    size = sum(f.stat().st_size for f in out.glob("model.onnx*"))
    fp32 = sum(f.stat().st_size for f in zoo_tiny_llama_artifact.glob("model.onnx*"))
    assert size < fp32 * (0.7 if pass_.bits == 8 else 0.6)
    fid = measure_fidelity(out, reference)
    assert fid.nonfinite == 0
    assert fid.perplexity_change.high < worst_change, fid.perplexity_change
    assert fid.same_top1_point >= least_top1, fid.same_top1_point
    text = Generator(out).generate("The function returns", GenerationConfig(max_new_tokens=8))
    assert isinstance(text, str)


def test_lm_head_and_embedding_choices(zoo_tiny_llama_artifact: Path, tmp_path: Path) -> None:
    head = lm_head_node(onnx.load(str(zoo_tiny_llama_artifact / "model.onnx")))
    assert head is not None
    kept = WeightOnly(lm_head="keep").apply(zoo_tiny_llama_artifact, tmp_path / "keep")
    assert any(n.name == head and n.op_type == "MatMul" for n in _ops(kept))
    same = WeightOnly(lm_head="same").apply(zoo_tiny_llama_artifact, tmp_path / "same")
    assert {_attr(n, "bits") for n in _ops(same) if n.op_type == "MatMulNBits"} == {4}
    with pytest.raises(InputError, match="tied"):  # the zoo model's table is the lm_head's
        WeightOnly(embedding="int4").apply(zoo_tiny_llama_artifact, tmp_path / "emb")
    # tied: the table reads the int8 lm_head's blocks; the float table is gone.
    tied = WeightOnly(embedding="tied").apply(zoo_tiny_llama_artifact, tmp_path / "tied")
    ops = [n.op_type for n in _ops(tied)]
    assert "GatherBlockQuantized" in ops and "Transpose" not in ops
    size = sum(f.stat().st_size for f in tied.glob("model.onnx*"))
    untied = sum(f.stat().st_size for f in (tmp_path / "same").glob("model.onnx*"))
    assert size < untied  # the 2048 x 128 float table (1 MiB) is not stored
    fid = measure_fidelity(tied, ReferenceRun.of(zoo_tiny_llama_artifact, FIDELITY))
    assert fid.same_top1_point > 0.95 and fid.perplexity_change.high < 0.02, fid


def test_an_untied_embedding_takes_int4_blocks(tiny_llama_artifact: Path, tmp_path: Path) -> None:
    embedded = WeightOnly(embedding="int4").apply(tiny_llama_artifact, tmp_path / "emb")
    assert any(n.op_type == "GatherBlockQuantized" for n in _ops(embedded))
    assert Generator(embedded).generate("import", GenerationConfig(max_new_tokens=4)) is not None


def test_mixed_precision_keeps_the_most_sensitive_layer_at_int8(
    zoo_tiny_llama_artifact: Path, tmp_path: Path
) -> None:
    ranked = sensitivities(zoo_tiny_llama_artifact, WeightOnly(), windows=2)
    assert [g.kl for g in ranked] == sorted((g.kl for g in ranked), reverse=True)
    assert all(g.group.startswith("layer ") for g in ranked)  # lm_head is int8 already
    assert ranked[0].kl > 0
    nodes = choose_int8_nodes(zoo_tiny_llama_artifact, WeightOnly(), share=0.25, windows=2)
    assert set(nodes) == set(ranked[0].nodes)  # 4 layers × 0.25: the most sensitive one
    out = WeightOnly(int8_nodes=nodes).apply(zoo_tiny_llama_artifact, tmp_path / "mixed")
    bits = {n.name.removesuffix("_Q8").removesuffix("_Q4"): _attr(n, "bits")
            for n in _ops(out) if n.op_type == "MatMulNBits"}  # fmt: skip
    assert all(bits[name] == 8 for name in nodes)
    assert sum(b == 4 for b in bits.values()) == len(bits) - len(nodes) - 1  # lm_head int8


def test_w8a8_with_and_without_smoothing(
    zoo_tiny_llama_artifact: Path, reference: ReferenceRun, tmp_path: Path
) -> None:
    for name, pass_ in (("plain", W8A8(smooth_alpha=None)), ("smooth", W8A8(smooth_alpha=0.5))):
        out = pass_.apply(zoo_tiny_llama_artifact, tmp_path / name)
        ops = {n.op_type for n in _ops(out)}
        assert ops & {"DynamicQuantizeMatMul", "MatMulInteger"}, ops
        fid = measure_fidelity(out, reference)
        assert fid.perplexity_change.high < 0.05, (name, fid.perplexity_change)
        assert fid.same_top1_point > 0.9, (name, fid.same_top1_point)


def test_bad_options_and_sources(tiny_llama_artifact: Path, tmp_path: Path) -> None:
    for bad in ({"bits": 3}, {"block_size": 24}, {"block_size": 8}, {"accuracy_level": 5},
                {"algorithm": "awq"}, {"algorithm": "rtn-float", "symmetric": True},
                {"lm_head": "int2"}, {"embedding": "int8"},
                {"embedding": "tied", "lm_head": "keep"},
                {"embedding": "tied", "lm_head": "same", "algorithm": "hqq"}):  # fmt: skip
        with pytest.raises(ValueError):
            WeightOnly(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        W8A8(smooth_alpha=1.5)
    with pytest.raises(InputError, match="another folder"):
        WeightOnly().apply(tiny_llama_artifact, tiny_llama_artifact)
    with pytest.raises(InputError, match="not a decoder artifact"):
        WeightOnly().apply(tmp_path, tmp_path / "out")
    with pytest.raises(InputError, match="int8_nodes"):
        WeightOnly(int8_nodes=("no-such-node",)).apply(tiny_llama_artifact, tmp_path / "o")


@pytest.mark.parametrize("embedding", ["keep", "tied"])
def test_quantized_artifacts_run_unchanged_in_onnxruntime_genai(
    zoo_tiny_llama_artifact: Path, tmp_path: Path, embedding: str
) -> None:
    """ORT GenAI loads the int4 artifact (MatMulNBits, GatherBlockQuantized) as it is and its
    greedy search gives our greedy tokens."""
    pytest.importorskip("onnxruntime_genai")
    from genai_loop import og_greedy

    out = WeightOnly(embedding=embedding).apply(zoo_tiny_llama_artifact, tmp_path / "q")
    gen = Generator(out)
    prompt = gen.prompt_ids("The function returns the")
    ours = list(gen.token_ids(prompt, GenerationConfig(max_new_tokens=16)))
    theirs = og_greedy(out, prompt, 16)
    eos = [i for i, t in enumerate(theirs) if t in gen.eos_ids]
    assert ours == theirs[: eos[0] if eos else None]
