import pytest

from inferopt.passes.quantize import DynamicInt8, StaticInt8
from inferopt.passes.recipe import Recipe, RecipeError


def test_parse_main_options_keys_and_lists() -> None:
    recipe = Recipe.parse("fuse, int8-static:entropy:samples=64:exclude=a+b")
    step = recipe.passes[1]
    assert isinstance(step, StaticInt8)
    assert (step.calibration, step.samples, step.exclude) == ("entropy", 64, ("a", "b"))
    dynamic = Recipe.parse("int8-dynamic:0.999").passes[0]
    assert isinstance(dynamic, DynamicInt8) and dynamic.fallback == 0.999


def test_json_round_trip() -> None:
    recipe = Recipe.parse("fold,fuse,int8-dynamic:fallback=0.99:per_channel=false")
    assert Recipe.from_json(recipe.to_json()) == recipe


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the recipe is empty"),
        ("fuse,shrink", "unknown pass 'shrink'"),
        ("int8-dynamic:speed=fast", "has no option 'speed'"),
        ("int8-static:samples=many", "expected a number"),
        ("int8-dynamic:per_channel=maybe", "expected true or false"),
        ("fp16,int8-dynamic", "changes precision twice"),
        ("int8-static,fuse", "'fuse' comes after 'int8-static'"),
        ("fuse:1", "takes key=value options"),
    ],
)
def test_bad_recipes_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        Recipe.parse(text)
