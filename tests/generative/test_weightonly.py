"""The weight-only passes (int4-weight, int8-weight), mixed precision and W8A8 on decoder
artifacts: what they write, that ONNX Runtime runs it, and their measured fidelity on the
trained zoo tiny-llama against its fp32 artifact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from inferopt.errors import InputError
from inferopt.generative.fidelity import FidelityConfig, ReferenceRun, _prefill, measure_fidelity
from inferopt.generative.generate import GenerationConfig, Generator
from inferopt.generative.mixed import choose_int8_nodes, sensitivities
from inferopt.generative.packing import pack_siblings
from inferopt.generative.w8a8 import W8A8
from inferopt.generative.weightonly import (
    WeightOnly,
    lm_head_node,
    save_files,
    weight_matmuls,
)

FIDELITY = FidelityConfig(windows=8, window_tokens=64, greedy_prompts=4, greedy_tokens=16)


@pytest.fixture(scope="module")
def reference(zoo_tiny_llama_artifact: Path) -> ReferenceRun:
    return ReferenceRun.of(zoo_tiny_llama_artifact, FIDELITY)


def _ops(folder: Path) -> list[onnx.NodeProto]:
    return list(onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.node)


def _attr(node: onnx.NodeProto, name: str) -> int | None:
    found = [a.i for a in node.attribute if a.name == name]
    return found[0] if found else None


@pytest.mark.parametrize(
    ("pass_", "worst_change", "least_top1"),
    [
        (WeightOnly(bits=8), 0.02, 0.97),
        (WeightOnly(), 0.10, 0.85),
        (WeightOnly(algorithm="rtn-float", accuracy_level=1), 0.10, 0.85),
        (WeightOnly(algorithm="rtn-float", lm_head_accuracy_level=1), 0.10, 0.85),
        (WeightOnly(algorithm="hqq"), 0.10, 0.85),
        (WeightOnly(algorithm="k-quant", block_size=32), 0.10, 0.85),
        (WeightOnly(algorithm="gptq", calibration_windows=4), 0.10, 0.85),
    ],
    ids=[
        "int8",
        "int4-rtn",
        "int4-rtn-float",
        "int4-rtn-float-acc4",
        "int4-hqq",
        "int4-k-quant",
        "int4-gptq",
    ],
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
    planes = [n for n in nbits if n.name.endswith(("_HighPlane", "_LowPlane"))]
    # every weight MatMul, lm_head included, siblings reading one input packed into one
    # (generative/packing.py); an 8-bit one computed in fp32 as two 4-bit planes
    _, packed = pack_siblings(source, [n.name for n in weight_matmuls(source)])
    assert len(nbits) == len(packed) + len(planes) // 2
    head = [n for n in nbits if n.output[0] == "logits" or n.name.startswith("/lm_head")]
    assert {_attr(n, "accuracy_level") for n in nbits if n not in head} == {pass_.accuracy_level}
    head_level = pass_.lm_head_accuracy_level or pass_.accuracy_level
    assert {_attr(n, "accuracy_level") for n in head} == {head_level}
    # lm_head="int8" by default; at level 1 its 8 bits are two 4-bit planes
    assert head and {_attr(n, "bits") for n in head} == ({4} if head_level == 1 else {8})
    assert len(head) == len(planes) == (2 if head_level == 1 else 0) or len(head) == 1
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
    # the int8 layer's gate and up projections are packed into one MatMulNBits, as at 4 bits
    source = onnx.load(str(zoo_tiny_llama_artifact / "model.onnx"))
    _, eight = pack_siblings(source, nodes)
    assert all(bits[name] == 8 for name in eight)
    assert sum(b == 4 for b in bits.values()) == len(bits) - len(eight) - 1  # lm_head int8


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
                {"embedding": "tied", "lm_head": "same", "algorithm": "hqq"},
                {"embedding": "tied", "lm_head_accuracy_level": 1},
                {"embedding": "tied", "bits": 8, "accuracy_level": 1},
                {"lm_head_accuracy_level": 5}):  # fmt: skip
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


def _on_gguf_grids(source: Path, out: Path) -> Path:
    """`source` with its weights moved onto the grids a GGUF file stores: Q4_1 blocks of 32
    along K (w = d*q + m, q in 0..15) for the layers, Q8_0 (w = d*q, d = amax/127) for the
    lm_head, as the zoo's smollm2-135m has them."""
    model = onnx.load(str(source / "model.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    head = lm_head_node(model)
    for node in weight_matmuls(model):
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        k, n = w.shape
        blocks = w.T.reshape(n, k // 32, 32)
        if node.name == head:
            d = np.abs(blocks).max(axis=2, keepdims=True) / 127
            snapped = np.rint(blocks / d) * d
        else:
            low = blocks.min(axis=2, keepdims=True)
            d = (blocks.max(axis=2, keepdims=True) - low) / 15
            snapped = np.rint((blocks - low) / d) * d + low
        inits[node.input[1]].CopyFrom(
            numpy_helper.from_array(snapped.reshape(n, k).T.astype(np.float32), node.input[1])
        )
    out.mkdir()
    onnx.save_model(model, str(out / "model.onnx"), save_as_external_data=True,
                    location="model.onnx.data")  # fmt: skip
    save_files(source, out, {"pass": "test: GGUF grids"})
    return out


def test_rtn_float_in_fp32_reproduces_a_gguf_model(
    zoo_tiny_llama_artifact: Path, tmp_path: Path
) -> None:
    """Weights already on GGUF grids (Q4_1 layers, Q8_0 lm_head) come back exactly from
    rtn-float at fp32 compute: the float zero points keep Q4_1, the max-abs 8-bit lm_head
    keeps Q8_0 (rtn's integer zero points would not)."""
    grids = _on_gguf_grids(zoo_tiny_llama_artifact, tmp_path / "grids")
    ids = np.array([[5, 17, 42, 99, 7, 3, 250, 11]], dtype=np.int64)
    reference = _prefill(Generator(grids), ids)
    for pass_, worst in (
        (WeightOnly(algorithm="rtn-float", accuracy_level=1), 1e-5),
        (WeightOnly(accuracy_level=1), 1e-2),  # rtn: integer zero points shift the grids
    ):
        out = pass_.apply(grids, tmp_path / pass_.describe().replace(" ", "-"))
        found = _prefill(Generator(out), ids)
        error = float(np.abs(found - reference).max() / np.abs(reference).max())
        if pass_.algorithm == "rtn-float":
            assert error < worst, error
        else:
            assert error > worst, error  # the check can see a shifted grid
