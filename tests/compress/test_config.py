"""Configs and recipe steps validate on creation, with ValueError / RecipeError."""

import pytest

from inferopt.compress import DistillConfig, FinetuneConfig, PruneConfig, SparsityConfig
from inferopt.compress.steps import DistillStep, PruneStep, SparsifyStep
from inferopt.passes.recipe import Recipe, RecipeError


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: PruneConfig(ratio=1.0), r"ratio must be in \[0, 1\)"),
        (lambda: PruneConfig(ratio=-0.1), r"ratio must be in \[0, 1\)"),
        (lambda: PruneConfig(criterion="random"), "criterion must be one of"),  # type: ignore[arg-type]
        (lambda: PruneConfig(scope="model"), "scope must be"),  # type: ignore[arg-type]
        (lambda: PruneConfig(round_to=0), "round_to must be at least 1"),
        (lambda: PruneConfig(layer_ratios=(("fc", 1.2),)), "ratio of layer 'fc'"),
        (lambda: SparsityConfig(pattern="4:2"), "0 < N < M"),
        (lambda: SparsityConfig(pattern="half"), "unstructured' or N:M"),
        (lambda: SparsityConfig(ratio=1.0), r"ratio must be in \[0, 1\)"),
        (lambda: FinetuneConfig(lr=0), "lr must be positive"),
        (lambda: FinetuneConfig(epochs=-1), "epochs must not be negative"),
        (lambda: FinetuneConfig(validation_every=1), "validation_every"),
        (lambda: DistillConfig(temperature=0), "temperature must be positive"),
        (lambda: DistillConfig(0.5, 0, 0, 0, 0), "at least one loss weight"),
        (lambda: DistillStep(), "exactly one of layers=K"),
        (lambda: DistillStep(layers=3, width=8), "exactly one of layers=K"),
        (lambda: DistillStep(layers=0), "layers must be at least 1"),
    ],
)
def test_bad_configs_raise_value_error(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


def test_nm_patterns_parse() -> None:
    assert SparsityConfig(pattern="2:4").nm == (2, 4)
    assert SparsityConfig(pattern="2of4").effective_ratio == 0.5
    assert SparsityConfig(ratio=0.7).effective_ratio == 0.7


def test_recipe_parses_torch_steps_first_and_round_trips() -> None:
    recipe = Recipe.parse("prune:0.4:criterion=taylor:ignore=head+fc,fuse,int8-static")
    (step,) = recipe.torch_steps
    assert isinstance(step, PruneStep)
    assert (step.ratio, step.criterion, step.ignore) == (0.4, "taylor", ("head", "fc"))
    assert [p.name for p in recipe.passes] == ["fuse", "int8-static"]
    assert recipe.text() == "prune,fuse,int8-static"
    assert Recipe.from_json(recipe.to_json()) == recipe
    sparse = Recipe.parse("sparsify:pattern=2of4").torch_steps[0]
    assert isinstance(sparse, SparsifyStep) and sparse.config().nm == (2, 4)
    distill = Recipe.parse("distill:layers=3:epochs=2,fuse,int8-dynamic").torch_steps[0]
    assert isinstance(distill, DistillStep) and (distill.layers, distill.epochs) == (3, 2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fuse,prune:0.5", "'prune' is a PyTorch step and comes after the ONNX pass 'fuse'"),
        ("prune:1.5", r"ratio must be in \[0, 1\)"),
        ("prune:0.5,prune:0.2", "has 'prune' twice"),
        ("sparsify:0.5,prune:0.5", "comes after 'sparsify'"),
        ("distill:depth=3", "has no option 'depth'"),
        ("sparsify:pattern=5of4", "0 < N < M"),
    ],
)
def test_bad_torch_recipes_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        Recipe.parse(text)
