import numpy as np
import pytest
from graphs import attention_model, constant_subgraph, mlp, model_of, padded_vs_alone

from inferopt.measure.fidelity import mean_cosine
from inferopt.passes.base import PassContext
from inferopt.passes.blockwise import BlockInt8
from inferopt.passes.quantize import DynamicInt8
from inferopt.passes.recipe import Recipe, RecipeError


def _ops(model) -> list[str]:  # type: ignore[no-untyped-def]
    return [n.op_type for n in model.proto.graph.node]


def _outlier_rows(n: int = 64) -> np.ndarray:
    """Inputs where one row of each batch holds a value 1000x the rest: one scale per tensor
    (int8-dynamic) spends its whole range on it, one scale per row and block does not."""
    x = np.random.default_rng(1).standard_normal((n, 16)).astype(np.float32)
    x[::8, 3] *= 1000.0
    return x


def test_matmuls_become_8_bit_matmulnbits_with_int8_compute() -> None:
    model = model_of(mlp(hidden=512))
    out = BlockInt8()(model, PassContext.for_model(model))
    nbits = [n for n in out.proto.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 2 and "MatMul" not in _ops(out)
    attrs = {a.name: a.i for a in nbits[0].attribute}
    assert attrs["bits"] == 8 and attrs["block_size"] == 32 and attrs["accuracy_level"] == 4
    assert out.size_bytes < 0.6 * model.size_bytes  # 1 byte a weight, plus scales
    assert out.provenance.steps[-1]["report"]["quantized"] == 2


def test_rows_keep_their_own_scales_where_one_scale_per_tensor_does_not() -> None:
    model = model_of(mlp(hidden=64))
    x = _outlier_rows()
    reference = model.run({"x": x})["y"]
    ordinary = np.ones(len(x), bool)
    ordinary[::8] = False  # the rows without the outlier, which its scale should not touch
    block = BlockInt8()(model, PassContext.for_model(model)).run({"x": x})["y"]
    dynamic = DynamicInt8()(model, PassContext.for_model(model)).run({"x": x})["y"]
    assert mean_cosine(reference[ordinary], block[ordinary]) > 0.9999
    assert mean_cosine(reference[ordinary], dynamic[ordinary]) < 0.999


def test_fused_attention_is_split_and_keeps_the_padding_mask() -> None:
    model = model_of(attention_model())
    out = BlockInt8()(model, PassContext.for_model(model))
    assert "MultiHeadAttention" in _ops(out) and _ops(out).count("MatMulNBits") == 2
    report = out.provenance.steps[-1]["report"]
    assert report["attention"] == {"split": {"attn": "attn/projection"}, "kept_float": {}}
    assert min(padded_vs_alone(out)) > 0.999


def test_excluded_nodes_stay_float_and_attention_names_map_to_the_projection() -> None:
    model = model_of(attention_model())
    out = BlockInt8(exclude=("attn",))(model, PassContext.for_model(model))
    nodes = {n.name: n.op_type for n in out.proto.graph.node}
    assert nodes["attn/projection"] == "MatMul" and _ops(out).count("MatMulNBits") == 1
    assert out.provenance.steps[-1]["report"]["kept_float"] == ["attn/projection"]


def test_a_model_without_matmul_weights_is_left_as_it_was_and_says_so() -> None:
    model = model_of(constant_subgraph())
    context = PassContext.for_model(model)
    out = BlockInt8()(model, context)
    assert out.provenance.steps[-1]["report"]["changed"] is False
    assert any("'int8-block' changed nothing" in note for note in context.notes)
    every = model_of(mlp())
    context = PassContext.for_model(every)
    BlockInt8(exclude=("fc1", "fc2"))(every, context)
    assert any("every MatMul it could take is excluded" in note for note in context.notes)


def test_recipe_text_and_option_errors() -> None:
    step = Recipe.parse("fuse,int8-block:64").passes[-1]
    assert isinstance(step, BlockInt8) and step.block_size == 64
    with pytest.raises(RecipeError, match="block_size must be one of"):
        Recipe.parse("int8-block:48")
    with pytest.raises(RecipeError, match="accuracy_level must be one of"):
        Recipe.parse("int8-block:accuracy_level=0")
    with pytest.raises(RecipeError, match="changes precision twice"):
        Recipe.parse("int8-block,int8-dynamic")
