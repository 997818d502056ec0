"""A recipe: an ordered list of passes with their options, written as text on the command line
(`fuse,int8-dynamic:fallback=0.999`) or as JSON in an artifact's manifest, so that any result
can be reproduced exactly.

Text syntax: passes separated by commas; each `name`, `name:value` (the pass's main option) or
`name:key=value:key=value`. Lists (node names) join with `+`.

PyTorch steps (`prune`, `sparsify`, `distill`; see inferopt.compress.steps) change and train
the source model before it is exported, so they come first, before every ONNX pass."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from inferopt.compress.steps import MAIN_OPTION as TORCH_MAIN_OPTION
from inferopt.compress.steps import STEPS as TORCH_STEPS
from inferopt.compress.steps import TorchStep
from inferopt.errors import InferoptError
from inferopt.passes.base import Pass
from inferopt.passes.blockwise import BlockInt8
from inferopt.passes.fuse import Fuse
from inferopt.passes.graph import EliminateDeadNodes, FoldConstants, OrtOptimize
from inferopt.passes.precision import BFloat16Weights, Float16
from inferopt.passes.quantize import DynamicInt8, StaticInt8
from inferopt.passes.smooth import Smooth
from inferopt.passes.unpad import Unpad


class RecipeError(InferoptError):
    """A recipe names an unknown pass or option, or orders passes in a way that cannot work."""


PASSES: dict[str, type[Pass]] = {
    cls.name: cls
    for cls in (
        FoldConstants,
        EliminateDeadNodes,
        Fuse,
        Unpad,
        OrtOptimize,
        Smooth,
        Float16,
        BFloat16Weights,
        DynamicInt8,
        StaticInt8,
        BlockInt8,
    )
}
MAIN_OPTION = {
    "ort-optimize": "level",
    "smooth": "alpha",
    "int8-static": "calibration",
    "int8-dynamic": "fallback",
    "int8-block": "block_size",
    **TORCH_MAIN_OPTION,
}
PRECISION = {"fp16", "bf16", "int8-dynamic", "int8-static", "int8-block"}  # change number formats
# Rewrites match float patterns; after a precision change they find nothing, or break it.
FLOAT_ONLY = {"fold", "fuse", "smooth", "unpad"}


Step = Pass | TorchStep


@dataclass(frozen=True)
class Recipe:
    passes: tuple[Pass, ...]  # ONNX passes, in order
    torch_steps: tuple[TorchStep, ...] = ()  # PyTorch steps, applied before export

    @property
    def steps(self) -> tuple[Step, ...]:
        return (*self.torch_steps, *self.passes)

    def to_json(self) -> list[dict[str, Any]]:
        return [{"pass": p.name, "options": p.options()} for p in self.steps]

    def text(self) -> str:
        return ",".join(p.name for p in self.steps)

    @staticmethod
    def from_json(steps: list[dict[str, Any]]) -> Recipe:
        return validated(tuple(build(s["pass"], s.get("options", {})) for s in steps))

    @staticmethod
    def parse(text: str) -> Recipe:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise RecipeError("the recipe is empty: name at least one pass")
        return validated(tuple(_parse_item(item) for item in items))


def _parse_item(item: str) -> Step:
    name, *args = item.split(":")
    options: dict[str, Any] = {}
    for arg in args:
        if "=" in arg:
            key, _, value = arg.partition("=")
        elif name in MAIN_OPTION:
            key, value = MAIN_OPTION[name], arg
        else:
            raise RecipeError(f"pass {name!r} takes key=value options, got {arg!r}")
        options[key.strip().replace("-", "_")] = value.strip()
    return build(name, options)


def build(name: str, options: dict[str, Any]) -> Step:
    if name not in PASSES and name not in TORCH_STEPS:
        known = ", ".join([*PASSES, *TORCH_STEPS])
        raise RecipeError(f"unknown pass {name!r}; passes are {known}")
    cls: type[Step] = PASSES[name] if name in PASSES else TORCH_STEPS[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(options) - set(fields)
    if unknown:
        raise RecipeError(
            f"pass {name!r} has no option {sorted(unknown)[0]!r}; options are {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    try:
        values = {k: _convert(v, hints[k]) for k, v in options.items()}
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"pass {name!r}: {exc}") from exc


def _convert(value: Any, hint: Any) -> Any:
    """Text from the command line into the option's declared type (JSON values pass through)."""
    if not isinstance(value, str):
        return tuple(value) if isinstance(value, list) else value
    kinds = set(typing.get_args(hint)) or {hint}
    if bool in kinds:
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected true or false, got {value!r}")
        return value.lower() in ("true", "1")
    if typing.get_origin(hint) is tuple:
        return tuple(v for v in value.split("+") if v)
    for kind in (int, float):
        if kind in kinds:
            try:
                return kind(value)
            except ValueError:
                continue
    if kinds <= {int, float, type(None)}:
        raise ValueError(f"expected a number, got {value!r}")
    return value


def validated(steps: tuple[Step, ...]) -> Recipe:
    torch_steps = _torch_prefix(steps)
    passes = tuple(s for s in steps if isinstance(s, Pass))
    precision = [i for i, p in enumerate(passes) if p.name in PRECISION]
    if len(precision) > 1:
        names = " and ".join(passes[i].name for i in precision)
        raise RecipeError(f"the recipe changes precision twice ({names}); choose one")
    if precision:
        later = [p.name for p in passes[precision[0] + 1 :] if p.name in FLOAT_ONLY]
        if later:
            raise RecipeError(
                f"{later[0]!r} comes after {passes[precision[0]].name!r}: its rewrites match "
                "float graphs, so put it before the precision change"
            )
    order = [p.name for p in passes]
    if "unpad" in order and "fuse" in order[order.index("unpad") :]:
        raise RecipeError(
            "'fuse' comes after 'unpad': its attention fusion needs the padded layout, so put "
            "unpad after fuse"
        )
    return Recipe(passes, torch_steps)


def _torch_prefix(steps: tuple[Step, ...]) -> tuple[TorchStep, ...]:
    """The PyTorch steps, which must all come before the first ONNX pass (they change the
    model that is exported), each at most once, and `sparsify` last: training after it
    would fill the zeros back in."""
    onnx_seen: Pass | None = None
    torch_steps: list[TorchStep] = []
    for step in steps:
        if isinstance(step, Pass):
            onnx_seen = onnx_seen or step
            continue
        if onnx_seen is not None:
            raise RecipeError(
                f"{step.name!r} is a PyTorch step and comes after the ONNX pass "
                f"{onnx_seen.name!r}: put the PyTorch steps (prune, sparsify, distill) first"
            )
        if any(s.name == step.name for s in torch_steps):
            raise RecipeError(f"the recipe has {step.name!r} twice; give it once")
        if torch_steps and torch_steps[-1].name == "sparsify":
            raise RecipeError(
                f"{step.name!r} comes after 'sparsify': its training would undo the zeros, "
                "so put sparsify last among the PyTorch steps"
            )
        torch_steps.append(step)
    return tuple(torch_steps)
