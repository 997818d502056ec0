import numpy as np
import pytest
from graphs import attention_model, bert_batch, fused_bert, mlp, model_of, padded_vs_alone

from inferopt.passes.base import PassContext
from inferopt.passes.blockwise import BlockInt8
from inferopt.passes.recipe import Recipe, RecipeError
from inferopt.passes.unpad import Unpad, applies


def _ops(model) -> list[str]:  # type: ignore[no-untyped-def]
    return [n.op_type for n in model.proto.graph.node]


def _padded_batch(hidden: int = 16) -> dict[str, np.ndarray]:
    lengths = (7, 4, 2)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((len(lengths), max(lengths), hidden)).astype(np.float32)
    mask = (np.arange(max(lengths)) < np.array(lengths)[:, None]).astype(np.int64)
    return {"x": x, "mask": mask}


def test_row_wise_work_runs_on_the_real_tokens_and_their_answers_do_not_change() -> None:
    model = model_of(attention_model())
    assert applies(model)
    out = Unpad()(model, PassContext.for_model(model))
    report = out.provenance.steps[-1]["report"]
    # The split attention's projection and the output MatMul both run on packed tokens.
    assert report["packed_matmuls"] == 2 and report["attention_split"] == ["attn"]
    assert {"NonZero", "Gather", "ScatterND", "MultiHeadAttention"} <= set(_ops(out))
    feed = _padded_batch()
    before, after = model.run(feed)["y"], out.run(feed)["y"]
    real = feed["mask"].astype(bool)
    assert np.allclose(before[real], after[real], atol=1e-5)
    assert not after[~real].any()  # padded positions come back as zeros
    assert min(padded_vs_alone(out)) > 0.99999


def test_block_int8_after_unpad_quantizes_the_packed_matmuls_row_by_row() -> None:
    model = model_of(attention_model())
    context = PassContext.for_model(model)
    packed = BlockInt8()(Unpad()(model, context), context)
    plain = BlockInt8()(model, context)
    assert _ops(packed).count("MatMulNBits") == 2
    feed = _padded_batch()
    real = feed["mask"].astype(bool)
    # Each row has its own activation scales, so packing the rows changes nothing.
    assert np.allclose(packed.run(feed)["y"][real], plain.run(feed)["y"][real], atol=1e-5)


def test_a_model_without_a_mask_or_attention_is_left_as_it_was_and_says_so() -> None:
    model = model_of(mlp())
    context = PassContext.for_model(model)
    out = Unpad()(model, context)
    assert out.provenance.steps[-1]["report"]["changed"] is False
    assert any("no [batch, seq] attention mask input" in note for note in context.notes)
    assert not applies(model)


def test_recipes_put_unpad_after_fuse_and_before_any_precision_change() -> None:
    assert [p.name for p in Recipe.parse("fuse,unpad,int8-block").passes] == [
        "fuse", "unpad", "int8-block",
    ]  # fmt: skip
    with pytest.raises(RecipeError, match="put unpad after fuse"):
        Recipe.parse("unpad,fuse")
    with pytest.raises(RecipeError, match="'unpad' comes after 'int8-block'"):
        Recipe.parse("fuse,int8-block,unpad")


@pytest.mark.slow
def test_an_exported_bert_skips_its_padding_and_each_row_answers_as_alone() -> None:
    fused, context = fused_bert()
    out = Unpad()(fused, context)
    # Q/K/V projection, attention output, and the two feed-forward MatMuls.
    assert out.provenance.steps[-1]["report"]["packed_matmuls"] == 4
    feed, lengths = bert_batch()
    name = out.io.output_names[0]
    batched = out.run(feed)[name]
    for row, n in enumerate(lengths):
        alone = fused.run({k: v[row : row + 1, :n] for k, v in feed.items()})[name]
        assert np.allclose(alone, batched[row : row + 1], atol=1e-5), (row, n)
