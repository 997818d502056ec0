"""`inferopt optimize --recipe`: apply an explicit, ordered recipe to a model and state what it
cost and saved, measured here. One straight line of named stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferopt import artifact, hardware, zoo
from inferopt.data import Dataset
from inferopt.errors import InputError
from inferopt.model import Model
from inferopt.passes.base import PassContext
from inferopt.passes.recipe import Recipe
from inferopt.search.evaluate import Evaluation, MetricName, evaluate, metric_for, outputs
from inferopt.sources import load

EVAL_EVERY = 5  # from a user's data file, every 5th sample is held out for evaluation
GENERATED_SAMPLES = 32


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
    out: Path | None = None


def resolve_data(model: Model, data_path: str | Path | None) -> Data:
    """The user's .npz (split deterministically), else the zoo model's own data, else
    generated inputs (and the report says so)."""
    if data_path is not None:
        data = Dataset.from_npz(data_path)
        data = Dataset(data.samples, data.labels, model.io.seq_axis)
        data.check_against(model.io)
        if len(data) < 2 * EVAL_EVERY:
            raise InputError(f"{data_path}: {len(data)} samples; at least {2 * EVAL_EVERY} needed")
        held_out = [i for i in range(len(data)) if i % EVAL_EVERY == 0]
        rest = [i for i in range(len(data)) if i % EVAL_EVERY != 0]
        evaluation = data.subset(held_out)
        return Data(data.subset(rest), evaluation, metric_for(evaluation, model), str(data_path))
    if model.provenance.kind == "zoo" and zoo.is_zoo_name(model.provenance.source):
        own = zoo.get(model.provenance.source).data()
        return Data(own.calibration, own.evaluation, own.metric, f"zoo {model.provenance.source}")
    generated = Dataset(
        tuple(model.io.sample_inputs(batch=1, seq=32, seed=s) for s in range(GENERATED_SAMPLES)),
        None,
        model.io.seq_axis,
    )
    return Data(generated, generated, "agreement", "generated inputs (pass --data for real ones)")


def apply(recipe: Recipe, model: Model, context: PassContext) -> Model:
    for step in recipe.passes:
        model = step(model, context)
    return model


def manifest(result: RecipeResult, recipe: Recipe, source: str) -> dict[str, Any]:
    return {
        "source": source,
        "recipe": recipe.to_json(),
        "provenance": result.model.provenance.to_json(),
        "evaluation": result.evaluation.to_json(),
        "data": result.data_origin,
        "notes": result.notes,
        "hardware": hardware.probe().to_json(),
        "hardware_fingerprint": hardware.probe().fingerprint(),
    }


def report_text(result: RecipeResult, recipe: Recipe, source: str) -> str:
    e = result.evaluation
    f, lat = e.fidelity, e.latency
    lines = [
        f"# {source}: {recipe.text()}",
        "",
        f"- fidelity ({f.metric}, {result.data_origin}): cosine to baseline {f.cosine:.4f}, "
        f"agreement {f.agreement:.4f}"
        + (
            f", top-1 {f.task_score:.4f} (baseline {f.baseline_task_score:.4f})"
            if f.task_score is not None
            else ""
        ),
        f"- latency at batch 1: {lat.candidate_ms:.2f} ms vs {lat.baseline_ms:.2f} ms, "
        f"{lat.speedup:.2f}x (interleaved, {lat.rounds} rounds x {lat.samples} samples, "
        f"ratio spread {lat.ratio_spread:.1%})",
        f"- size: {e.size_bytes / 2**20:.2f} MiB vs {e.baseline_size_bytes / 2**20:.2f} MiB "
        f"({e.size_ratio:.2f}x)",
    ]
    lines += [f"- note: {n}" for n in result.notes]
    return "\n".join(lines) + "\n"


def optimize_recipe(
    source: Any,
    recipe: Recipe | str,
    out: str | Path | None = None,
    *,
    data: str | Path | None = None,
) -> RecipeResult:
    """Load, apply the recipe, evaluate against the input model, write the artifact."""
    recipe = Recipe.parse(recipe) if isinstance(recipe, str) else recipe
    if out is not None:
        artifact.check_destination(Path(out))
    baseline = load(source)
    chosen = resolve_data(baseline, data)
    context = PassContext.for_model(baseline, chosen.calibration)
    optimized = apply(recipe, baseline, context)
    reference = outputs(baseline, chosen.evaluation)
    evaluation = evaluate(optimized, baseline, reference, chosen.evaluation, chosen.metric)
    result = RecipeResult(optimized, baseline, evaluation, chosen.origin, context.notes)
    if out is None:
        return result
    label = str(source) if isinstance(source, str | Path) else type(source).__name__
    artifact.write(
        Path(out), optimized, manifest(result, recipe, label), report_text(result, recipe, label)
    )
    return RecipeResult(optimized, baseline, evaluation, chosen.origin, context.notes, Path(out))
