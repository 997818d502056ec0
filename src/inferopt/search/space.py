"""The search space: the recipes worth trying on this model, on this machine, cheapest first.

Built from what each pass declares (`Pass.search`: its option sets worth trying) and from what
applies to the model: int8 needs MatMul/Gemm/Conv with constant weights, smoothing needs
MatMul, static int8 needs calibration data, training passes need a PyTorch source. Fallback
depths (keeping the most sensitive nodes in float) are not in the first list: `fallbacks`
proposes them only for int8 recipes that missed the budget, because their sensitivity scan
costs as much as several plain candidates."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any

from inferopt import hardware
from inferopt.model import Model
from inferopt.passes import blockwise, unpad
from inferopt.passes.fuse import Fuse
from inferopt.passes.precision import BFloat16Weights, Float16
from inferopt.passes.quantize import DynamicInt8, StaticInt8, quantizable_nodes
from inferopt.passes.recipe import Recipe
from inferopt.passes.smooth import SMOOTHED_OPS, Smooth


@dataclass(frozen=True)
class Candidate:
    recipe: Recipe
    family: str  # graph, precision, int8-block, int8-dynamic, int8-static, train

    @property
    def text(self) -> str:
        return recipe_text(self.recipe)


@dataclass(frozen=True)
class Facts:
    """What decides which passes apply."""

    block_int8: bool  # MatMul with a constant 2-D weight, or fused Attention
    dynamic_int8: bool  # MatMul/Gemm/Attention with constant weights
    static_int8: bool  # Conv/MatMul/Gemm with constant weights, and calibration data
    smoothable: bool  # MatMul with constant weights fed by activations
    fast_fp16: bool  # the CPU has native fp16 arithmetic (not just conversion): fp16 tried early
    trainable: bool  # the source is a PyTorch module we can prune or distill
    unpaddable: bool = False  # one [batch, seq] mask input, and MatMuls: padding can be skipped

    @staticmethod
    def of(model: Model, *, has_data: bool, trainable: bool) -> Facts:
        proto = model.proto
        features = set(hardware.probe().cpu_features)
        return Facts(
            block_int8=blockwise.applies(model),
            unpaddable=unpad.applies(model),
            dynamic_int8=bool(quantizable_nodes(proto, DynamicInt8.op_types)),
            static_int8=has_data and bool(quantizable_nodes(proto, StaticInt8.op_types)),
            smoothable=bool(quantizable_nodes(proto, SMOOTHED_OPS)),
            fast_fp16=bool(features & {"avx512_fp16", "asimdhp", "fphp"}),
            trainable=trainable,
        )


def recipe_text(recipe: Recipe) -> str:
    """The recipe as a user writes it, options included (`fuse,smooth:alpha=0.5,...`)."""
    parts = []
    for step in recipe.steps:
        defaults = {f.name: f.default for f in dataclasses.fields(step)}  # type: ignore[arg-type]
        changed = {k: v for k, v in step.options().items() if defaults.get(k) != getattr(step, k)}
        parts.append(":".join([step.name, *(f"{k}={_text(v)}" for k, v in changed.items())]))
    return ",".join(parts)


def _text(value: Any) -> str:
    if isinstance(value, tuple | list):
        return "+".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def candidates(facts: Facts, training: tuple[str, ...] = ()) -> list[Candidate]:
    """Every first-round candidate, in the order they are tried (cheap first). `training`
    holds recipe prefixes of training passes (pruning, distillation) that apply."""
    fuse = Fuse()
    found = [Candidate(Recipe((fuse,)), "graph")]
    # Skipping padding is exact for real tokens; block-wise INT8 quantizes each row on its own,
    # so it gives the same answers on the packed rows, and runs on the real tokens only.
    packed = (fuse, unpad.Unpad()) if facts.unpaddable else (fuse,)
    if facts.unpaddable:
        found.append(Candidate(Recipe(packed), "graph"))
    # fp16/bf16 go right after the graph only where the CPU computes in fp16: elsewhere ONNX
    # Runtime mostly casts around float kernels (fuse,fp16 0.66x and fuse,bf16 0.89x on
    # minilm, AVX-512 BF16 present), and they would take the time a short budget has for INT8.
    precision = [
        Candidate(Recipe((fuse, cls(**o))), "precision")
        for cls in (Float16, BFloat16Weights)
        for o in cls.search
    ]
    if facts.fast_fp16:
        found += precision
    if facts.block_int8:  # the int8 closest to float first: per-row, per-block scales
        found += [
            Candidate(Recipe((*packed, blockwise.BlockInt8(**o))), "int8-block")
            for o in blockwise.BlockInt8.search
        ]
    smooths = [None, *(Smooth(**o) for o in Smooth.search)] if facts.smoothable else [None]
    for quantizer, family, applies in (
        (DynamicInt8, "int8-dynamic", facts.dynamic_int8),
        (StaticInt8, "int8-static", facts.static_int8),
    ):
        if not applies:
            continue
        for smooth in smooths:  # every option plain first: the family's spread shows early
            prefix = (fuse,) if smooth is None else (fuse, smooth)
            for options in quantizer.search:
                found.append(Candidate(Recipe((*prefix, quantizer(**options))), family))
    if not facts.fast_fp16:
        found += precision
    if facts.trainable:
        found += _with_training(training, found, facts)
    return found


def _with_training(
    prefixes: tuple[str, ...], post: list[Candidate], facts: Facts
) -> list[Candidate]:
    """Each training prefix alone, then before the INT8 recipes that suit the model
    (block-wise and dynamic for MatMul-heavy models, static for the others): the combination
    is where the big gains are, and each costs only its post-training passes once the
    training is cached."""
    suited = ("int8-block", "int8-dynamic") if facts.smoothable else ("int8-static",)
    found = []
    for prefix in prefixes:
        found.append(Candidate(Recipe.parse(f"{prefix},fuse"), "train"))
        for c in post:
            if c.family in suited:
                found.append(Candidate(Recipe.parse(f"{prefix},{c.text}"), "train"))
    return found


def fallbacks(candidate: Candidate) -> list[Candidate]:
    """Deeper float fallback for an int8 candidate that missed the budget, shallowest first."""
    *prefix, last = candidate.recipe.passes
    if not isinstance(last, DynamicInt8 | StaticInt8) or last.fallback is not None:
        return []
    return [
        Candidate(
            Recipe((*prefix, replace(last, fallback=target)), candidate.recipe.torch_steps),
            candidate.family,
        )
        for target in type(last).fallback_targets
    ]
