"""`inferopt optimize --recipe`: apply an explicit, ordered recipe to a model and state what it
cost and saved, measured here. One straight line of named stages. The search
(`inferopt.search`) builds its candidates with the same functions."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from inferopt import artifact, hardware, textdata, zoo
from inferopt.data import Dataset
from inferopt.errors import InputError
from inferopt.model import Model
from inferopt.passes.base import PassContext
from inferopt.passes.recipe import Recipe
from inferopt.search.evaluate import Evaluation, MetricName, evaluate, metric_for
from inferopt.search.fidelity import (
    checks,
    condition_lines,
    describe_checks,
    noise_floor,
    run_outputs,
)
from inferopt.search.metric import Metric
from inferopt.sources import load

EVAL_EVERY = 5  # from a user's data file, every 5th sample is held out for evaluation
GENERATED_SAMPLES = 32
GENERATED_ORIGIN = "generated inputs (pass --data for real ones)"


@dataclass(frozen=True)
class Data:
    calibration: Dataset
    evaluation: Dataset
    metric: MetricName
    origin: str  # where the data came from, for the report


@dataclass(frozen=True)
class RecipeResult:
    model: Model
    baseline: Model
    evaluation: Evaluation
    data_origin: str
    notes: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)  # what fidelity was measured on
    out: Path | None = None


def resolve_data(model: Model, data_path: str | Path | None) -> Data:
    """The user's .npz or .txt (split deterministically), else the zoo model's own data, else
    generated inputs (and the report says so). Every set batches as the model wants."""
    if data_path is not None:
        data = textdata.read(model, data_path).for_model(model.io)
        data.check_against(model.io)
        if len(data) < 2 * EVAL_EVERY:
            raise InputError(f"{data_path}: {len(data)} samples; at least {2 * EVAL_EVERY} needed")
        held_out = [i for i in range(len(data)) if i % EVAL_EVERY == 0]
        rest = [i for i in range(len(data)) if i % EVAL_EVERY != 0]
        evaluation = data.subset(held_out)
        return Data(data.subset(rest), evaluation, metric_for(evaluation, model), str(data_path))
    if model.provenance.kind == "zoo" and zoo.is_zoo_name(model.provenance.source):
        own = zoo.get(model.provenance.source).data()
        calibration, evaluation = (d.for_model(model.io) for d in (own.calibration, own.evaluation))
        return Data(calibration, evaluation, own.metric, f"zoo {model.provenance.source}")
    generated = Dataset(tuple(generated_samples(model, GENERATED_SAMPLES))).for_model(model.io)
    return Data(generated, generated, "agreement", GENERATED_ORIGIN)


def generated_samples(model: Model, count: int) -> list[dict[str, np.ndarray]]:
    """One-row generated inputs; for a sequence model, of mixed lengths (4 to 48), so that
    padded batches of them have real padding in them."""
    has_seq = model.io.seq_axis is not None
    return [
        model.io.sample_inputs(batch=1, seq=4 + (11 * s) % 45 if has_seq else 32, seed=s)
        for s in range(count)
    ]


def apply(recipe: Recipe, model: Model, context: PassContext) -> Model:
    for step in recipe.passes:
        model = step(model, context)
    return model


def build_candidate(
    source: Any,
    recipe: Recipe | str,
    data: Data,
    *,
    baseline: Model | None = None,
    example_inputs: Any = None,
    notes: list[str] | None = None,
    max_train_seconds: float | None = None,
) -> Model:
    """The recipe's model: its PyTorch steps (pruning, sparsity, distillation; trained on the
    data's calibration side, cached) applied to the source and exported with the parity
    check, then its ONNX passes. `baseline` is `load(source)`, given to avoid loading twice."""
    recipe = Recipe.parse(recipe) if isinstance(recipe, str) else recipe
    baseline = baseline or load(source, example_inputs)
    start = baseline
    if recipe.torch_steps:
        if data.origin == GENERATED_ORIGIN:
            raise InputError(
                f"{recipe.torch_steps[0].name!r} trains the model and needs real examples: "
                "pass --data FILE.npz"
            )
        from inferopt.compress.pipeline import compress, training_examples

        own = data.origin == f"zoo {baseline.provenance.source}"
        examples = training_examples(source, data.calibration, own)
        start = compress(
            source,
            recipe.torch_steps,
            examples,
            baseline,
            example_inputs=example_inputs,
            max_train_seconds=max_train_seconds,
        )
    context = PassContext.for_model(start, data.calibration)
    model = apply(recipe, start, context)
    if notes is not None:
        notes.extend(context.notes)
    return model


def manifest(result: RecipeResult, recipe: Recipe, source: str) -> dict[str, Any]:
    return {
        "source": source,
        "recipe": recipe.to_json(),
        "provenance": result.model.provenance.to_json(),
        "evaluation": result.evaluation.to_json(),
        "data": result.data_origin,
        "checks": result.checks,
        "notes": result.notes,
        "hardware": hardware.probe().to_json(),
        "hardware_fingerprint": hardware.probe().fingerprint(),
    }


def report_text(result: RecipeResult, recipe: Recipe, source: str) -> str:
    e = result.evaluation
    f, lat = e.fidelity, e.latency
    task = (
        f", top-1 {f.task_score:.4f} (baseline {f.baseline_task_score:.4f})"
        if f.task_score is not None
        else ""
    )
    lines = [
        f"# {source}: {recipe.text()}",
        "",
        f"- fidelity ({f.metric}, {result.data_origin}): drop {f.drop:.4f} "
        f"[up to {f.drop_high:.4f} at 95%], worst: {f.decided_by()}",
        f"- cosine to baseline {f.cosine:.4f}, agreement {f.agreement:.4f}{task}",
        *[f"- {line}" for line in condition_lines(f)],
        f"- checked on: {describe_checks(result.checks)}" if result.checks else "",
        f"- latency at batch 1: {lat.candidate_ms:.2f} ms vs {lat.baseline_ms:.2f} ms, "
        f"{lat.speedup:.2f}x (interleaved, {lat.rounds} rounds x {lat.samples} samples, "
        f"ratio spread {lat.ratio_spread:.1%})",
        f"- size: {e.size_bytes / 2**20:.2f} MiB vs {e.baseline_size_bytes / 2**20:.2f} MiB "
        f"({e.size_ratio:.2f}x)",
    ]
    lines += [f"- note: {n}" for n in result.notes]
    return "\n".join(line for line in lines if line != "") + "\n"


def optimize_recipe(
    source: Any,
    recipe: Recipe | str,
    out: str | Path | None = None,
    *,
    data: str | Path | None = None,
    example_inputs: Any = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    channel_axes: dict[str, int | None] | None = None,
) -> RecipeResult:
    """Load, apply the recipe, evaluate against the input model (the source as exported,
    untouched by the recipe's PyTorch steps): fidelity alone and in batches, every output and
    channel, with intervals and the metric's noise floor; write the artifact."""
    recipe = Recipe.parse(recipe) if isinstance(recipe, str) else recipe
    if out is not None:
        artifact.check_destination(Path(out))
    baseline = load(source, example_inputs, shapes=shapes)
    chosen = resolve_data(baseline, data)
    notes: list[str] = []
    optimized = build_candidate(
        source, recipe, chosen, baseline=baseline, example_inputs=example_inputs, notes=notes
    )
    reference = run_outputs(baseline, chosen.evaluation)
    judge = Metric.resolve(chosen.metric, chosen.evaluation, baseline).judge(
        chosen.evaluation, reference, channel_axes
    )
    evaluation = evaluate(optimized, baseline, reference, chosen.evaluation, judge)
    noise = noise_floor(judge, reference)
    checked = checks(judge, chosen.evaluation, reference, noise, baseline.io)
    result = RecipeResult(optimized, baseline, evaluation, chosen.origin, notes, checked)
    if out is None:
        return result
    label = str(source) if isinstance(source, str | Path) else type(source).__name__
    artifact.write(
        Path(out), optimized, manifest(result, recipe, label), report_text(result, recipe, label)
    )
    return replace(result, out=Path(out))
