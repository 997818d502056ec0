"""Which recipes the search tries, from what applies to the model."""

from inferopt.passes.recipe import Recipe
from inferopt.search.space import Candidate, Facts, candidates, fallbacks, recipe_text

TRANSFORMER = Facts(
    block_int8=True,
    dynamic_int8=True,
    static_int8=True,
    smoothable=True,
    fast_fp16=False,
    trainable=False,
)
NO_WEIGHTS = Facts(
    block_int8=False,
    dynamic_int8=False,
    static_int8=False,
    smoothable=False,
    fast_fp16=False,
    trainable=False,
)


def test_a_transformer_gets_every_family_with_smoothing_variants() -> None:
    texts = [c.text for c in candidates(TRANSFORMER)]
    assert texts[0] == "fuse"  # cheapest first
    assert "fuse,fp16" in texts and "fuse,bf16" in texts
    assert "fuse,int8-dynamic" in texts and "fuse,smooth:alpha=0.5,int8-dynamic" in texts
    assert "fuse,smooth,int8-static:calibration=entropy" in texts
    # int8 closest to float first, largest (fastest) block first
    blocks = [t for t in texts if "int8-block" in t]
    assert blocks == ["fuse,int8-block:block_size=128", "fuse,int8-block:block_size=64",
                      "fuse,int8-block"]  # fmt: skip
    assert texts.index(blocks[-1]) < texts.index("fuse,int8-dynamic")
    # no fp16 arithmetic on this CPU: fp16/bf16 after every INT8 recipe
    assert texts.index("fuse,fp16") > texts.index("fuse,smooth,int8-static:calibration=entropy")
    assert len(texts) == len(set(texts))
    assert all(Recipe.parse(t).to_json() == c.recipe.to_json()
               for t, c in zip(texts, candidates(TRANSFORMER), strict=True))  # fmt: skip


def test_fp16_comes_right_after_the_graph_where_the_cpu_computes_in_fp16() -> None:
    fast = Facts(**{**vars(TRANSFORMER), "fast_fp16": True})
    texts = [c.text for c in candidates(fast)]
    assert texts[:3] == ["fuse", "fuse,fp16", "fuse,bf16"]
    assert sorted(texts) == sorted(c.text for c in candidates(TRANSFORMER))  # only the order


def test_int8_is_left_out_when_nothing_has_constant_weights() -> None:
    families = {c.family for c in candidates(NO_WEIGHTS)}
    assert families == {"graph", "precision"}


def test_training_prefixes_combine_with_the_int8_recipes_only_when_trainable() -> None:
    assert not any(c.family == "train" for c in candidates(TRANSFORMER, ("fuse",)))
    trainable = Facts(**{**vars(TRANSFORMER), "trainable": True})
    train = [c.text for c in candidates(trainable, ("fold",)) if c.family == "train"]
    assert train[0] == "fold,fuse" and "fold,fuse,int8-dynamic" in train
    assert "fold,fuse,int8-block" in train
    assert not any("fp16" in t or "int8-static" in t for t in train)  # dynamic suits MatMuls


def test_fallback_depths_are_offered_once_for_int8_recipes() -> None:
    int8 = Candidate(Recipe.parse("fuse,int8-dynamic"), "int8-dynamic")
    deeper = fallbacks(int8)
    assert [c.text for c in deeper] == [
        "fuse,int8-dynamic:fallback=0.999", "fuse,int8-dynamic:fallback=0.9997",
    ]  # fmt: skip
    assert fallbacks(deeper[0]) == []  # already has one
    assert fallbacks(Candidate(Recipe.parse("fuse,fp16"), "precision")) == []


def test_recipe_text_writes_only_options_that_differ_from_defaults() -> None:
    assert recipe_text(Recipe.parse("fuse,smooth:0.75,int8-static:entropy")) == (
        "fuse,smooth,int8-static:calibration=entropy"
    )


def test_training_steps_are_part_of_the_text_and_kept_by_fallbacks() -> None:
    recipe = Recipe.parse("distill:layers=3,fuse,int8-dynamic")
    assert recipe_text(recipe) == "distill:layers=3,fuse,int8-dynamic"
    deeper = fallbacks(Candidate(recipe, "train"))
    assert deeper[0].text == "distill:layers=3,fuse,int8-dynamic:fallback=0.999"


def test_a_model_with_a_padding_mask_gets_unpad_before_block_int8() -> None:
    texts = [c.text for c in candidates(Facts(**{**vars(TRANSFORMER), "unpaddable": True}))]
    assert texts[:2] == ["fuse", "fuse,unpad"]
    assert [t for t in texts if "int8-block" in t] == [
        "fuse,unpad,int8-block:block_size=128", "fuse,unpad,int8-block:block_size=64",
        "fuse,unpad,int8-block",
    ]  # fmt: skip
    assert "fuse,int8-dynamic" in texts  # the other families keep the padded layout
