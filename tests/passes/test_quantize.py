import numpy as np
import pytest
from graphs import (
    HIDDEN,
    attention_model,
    bert_batch,
    constant_subgraph,
    fused_bert,
    mlp,
    model_of,
    padded_vs_alone,
)

from inferopt.data import Dataset
from inferopt.errors import InputError
from inferopt.measure.fidelity import mean_cosine
from inferopt.passes.attention import split_attention
from inferopt.passes.base import PassContext
from inferopt.passes.quantize import DynamicInt8, StaticInt8


def _data(n: int = 64) -> Dataset:
    x = np.random.default_rng(1).standard_normal((n, 16)).astype(np.float32)
    return Dataset.from_arrays({"x": x})


def _ops(model) -> set[str]:  # type: ignore[no-untyped-def]
    return {n.op_type for n in model.proto.graph.node}


def test_dynamic_int8_quantizes_matmuls() -> None:
    model = model_of(mlp(hidden=512))  # big enough that weights dominate the file
    out = DynamicInt8()(model, PassContext.for_model(model, _data()))
    assert "MatMulInteger" in _ops(out) or "DynamicQuantizeMatMul" in _ops(out)
    assert out.size_bytes < 0.5 * model.size_bytes


def test_static_int8_inserts_qdq_from_calibration() -> None:
    model = model_of(mlp(hidden=64))
    out = StaticInt8(calibration="percentile")(model, PassContext.for_model(model, _data()))
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(out)
    assert out.provenance.steps[-1]["report"]["calibrated_tensors"] >= 3


def test_static_int8_without_data_or_with_wrong_data_is_refused() -> None:
    model = model_of(mlp())
    with pytest.raises(InputError, match="needs calibration data"):
        StaticInt8()(model, PassContext.for_model(model))
    wrong = Dataset.from_arrays({"x": np.zeros((8, 15), dtype=np.float32)})
    with pytest.raises(InputError, match=r"'x' has shape \[1, 15\]"):
        StaticInt8()(model, PassContext.for_model(model, wrong))


def test_model_without_quantizable_ops_is_left_as_it_was_and_says_so() -> None:
    model = model_of(constant_subgraph())
    context = PassContext.for_model(model)
    out = DynamicInt8()(model, context)
    report = out.provenance.steps[-1]["report"]
    assert report["changed"] is False and "changed nothing" in report["note"]
    assert [n.op_type for n in out.proto.graph.node] == [n.op_type for n in model.proto.graph.node]
    assert any("changed nothing: it quantizes MatMul, Gemm" in note for note in context.notes)


def test_fallback_keeps_sensitive_nodes_in_float_and_ranks_them() -> None:
    model = model_of(mlp(hidden=64))
    context = PassContext.for_model(model, _data())
    out = DynamicInt8(fallback=1.0, op_types=("MatMul",))(model, context)
    report = out.provenance.steps[-1]["report"]
    assert [s["node"] for s in report["sensitivity"]] and len(report["sensitivity"]) == 2
    errors = [s["error"] for s in report["sensitivity"]]
    assert errors == sorted(errors, reverse=True)
    # A target of exactly 1.0 can only be met by keeping every node in float.
    assert sorted(report["excluded"]) == ["fc1", "fc2"]


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="weights must be"):
        DynamicInt8(weights="int4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fallback is a target cosine"):
        DynamicInt8(fallback=1.5)
    with pytest.raises(ValueError, match="calibration method"):
        StaticInt8(calibration="kl")  # type: ignore[arg-type]


# --- fused attention: int8 must keep the padding mask -------------------------------------


@pytest.mark.parametrize("mask_as", ["attention_bias", "mask_index"])
def test_dynamic_int8_on_fused_attention_keeps_the_padding_mask(mask_as: str) -> None:
    model = model_of(attention_model(mask_as))
    out = DynamicInt8()(model, PassContext.for_model(model))
    assert "QAttention" not in _ops(out) and "MultiHeadAttention" in _ops(out)
    report = out.provenance.steps[-1]["report"]
    assert report["attention"] == {"split": {"attn": "attn/projection"}, "kept_float": {}}
    quantized = {n.name for n in out.proto.graph.node if n.op_type == "MatMulInteger"}
    assert any(name.startswith("attn/projection") for name in quantized)
    assert min(padded_vs_alone(out)) > 0.999


def test_attention_that_cannot_be_split_stays_float_and_says_why() -> None:
    model = model_of(attention_model(constant_weights=False))
    context = PassContext.for_model(model)
    out = DynamicInt8()(model, context)
    assert "Attention" in _ops(out) and "QAttention" not in _ops(out)
    kept = out.provenance.steps[-1]["report"]["attention"]["kept_float"]
    assert "weights are computed" in kept["attn"]
    assert any("Attention 'attn' kept in float" in note for note in context.notes)
    assert min(padded_vs_alone(out)) > 0.999
    only = PassContext.for_model(model)
    DynamicInt8(op_types=("Attention",))(model, only)
    assert any("Attention 'attn' stays float: its weights" in note for note in only.notes)


def test_attention_only_quantizes_the_projection_and_names_map_to_it() -> None:
    model = model_of(attention_model())
    out = DynamicInt8(op_types=("Attention",))(model, PassContext.for_model(model))
    nodes = {n.name: n for n in out.proto.graph.node}
    assert nodes["out"].op_type == "MatMul"  # not asked for: stays float
    assert "MatMulInteger" in _ops(out)
    excluded = DynamicInt8(exclude=("attn",))(model, PassContext.for_model(model))
    report = excluded.provenance.steps[-1]["report"]
    assert report["excluded"] == ["attn/projection"]
    assert {"MatMulInteger", "MultiHeadAttention"} <= _ops(excluded)
    assert "attn/projection" in {n.name for n in excluded.proto.graph.node}


@pytest.mark.slow
def test_fused_bert_rows_answer_the_same_alone_and_in_a_padded_batch() -> None:
    fused, context = fused_bert()
    out = DynamicInt8()(fused, context)
    feed, lengths = bert_batch()
    batched = out.run(feed)[out.io.output_names[0]]
    for row, n in enumerate(lengths):
        alone = out.run({k: v[row : row + 1, :n] for k, v in feed.items()})
        got = alone[out.io.output_names[0]]
        assert mean_cosine(got, batched[row : row + 1]) > 0.999, (row, n)


@pytest.mark.parametrize("mask_as", ["attention_bias", "mask_index"])
def test_attention_split_is_exact_in_float(mask_as: str) -> None:
    model = model_of(attention_model(mask_as))
    split = split_attention(model.proto)
    assert split.projections == {"attn": "attn/projection"} and not split.kept
    rewritten = model_of(split.proto)
    rng = np.random.default_rng(1)
    feed = {
        "x": rng.standard_normal((2, 5, HIDDEN)).astype(np.float32),
        "mask": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
    }
    np.testing.assert_allclose(rewritten.run(feed)["y"], model.run(feed)["y"], atol=1e-5)


def test_attention_with_a_past_state_is_not_split() -> None:
    proto = attention_model()
    node = next(n for n in proto.graph.node if n.op_type == "Attention")
    node.input[4] = "past"  # a key/value cache: MultiHeadAttention takes it in another form
    split = split_attention(proto)
    assert not split.projections and "past key/value state" in split.kept["attn"]


def test_static_int8_leaves_fused_attention_whole_with_its_mask() -> None:
    model = model_of(attention_model())
    rng = np.random.default_rng(2)
    data = Dataset.from_arrays(
        {
            "x": rng.standard_normal((16, 6, HIDDEN)).astype(np.float32),
            "mask": np.ones((16, 6), dtype=np.int64),
        }
    )
    out = StaticInt8()(model, PassContext.for_model(model, data))
    assert "Attention" in _ops(out) and "QuantizeLinear" in _ops(out)
    assert min(padded_vs_alone(out)) > 0.999
