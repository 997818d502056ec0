"""`inferopt optimize MODEL --recipe PASSES --out DIR`: apply an explicit recipe, then state
fidelity, latency ratio (measured interleaved) and size ratio against the input model."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from inferopt import zoo
from inferopt.passes.recipe import PASSES

console = Console()


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "optimize",
        help="apply a recipe of passes and measure what it costs and saves",
        description="Apply an ordered recipe of passes, e.g. "
        f"--recipe fuse,smooth:0.75,int8-dynamic. Passes: {', '.join(PASSES)}.",
    )
    parser.add_argument(
        "model", nargs="?", default=zoo.DEFAULT, help="model source (default: %(default)s)"
    )
    parser.add_argument("--recipe", required=True, help="comma-separated passes, in order")
    parser.add_argument("--out", required=True, help="artifact folder to write")
    parser.add_argument("--data", help=".npz with inputs keyed by name (and optional labels)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from inferopt.optimize import optimize_recipe
    from inferopt.passes.recipe import Recipe

    recipe = Recipe.parse(args.recipe)
    with console.status(f"applying {recipe.text()} to {args.model} and measuring ..."):
        result = optimize_recipe(args.model, recipe, args.out, data=args.data)
    show(
        result.evaluation,
        [s for s in result.model.provenance.steps],
        result.notes,
        result.data_origin,
    )
    console.print(f"wrote {result.out}/model.onnx, inferopt.json, report.md")
    return 0


def _step_summary(step: dict[str, Any]) -> str:
    report = step.get("report", {})
    if "fired" in report:
        return ", ".join(f"{k} x{v}" for k, v in report["fired"].items()) or "no fusion matched"
    if "fallback_cosine" in report:
        kept = len(report["excluded"])
        return f"{kept} nodes kept in float (cosine {report['fallback_cosine']:.4f})"
    parts = [f"{k}={v}" for k, v in report.items() if not isinstance(v, list | dict)]
    return ", ".join(parts)


def show(evaluation: Any, steps: list[dict[str, Any]], notes: list[str], origin: str) -> None:
    table = Table(show_header=False, title="result", title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for step in steps:
        table.add_row(f"pass {step['pass']}", Text(_step_summary(step)))
    f, lat = evaluation.fidelity, evaluation.latency
    fid = f"cosine {f.cosine:.4f}, agreement {f.agreement:.4f} ({f.metric}; {origin})"
    if f.task_score is not None:
        fid += f"; top-1 {f.task_score:.4f} vs {f.baseline_task_score:.4f}"
    table.add_row("fidelity", Text(fid))
    table.add_row(
        "latency",
        Text(
            f"{lat.speedup:.2f}x ({lat.candidate_ms:.2f} vs {lat.baseline_ms:.2f} ms at batch 1, "
            f"interleaved, spread {lat.ratio_spread:.1%})"
        ),
    )
    table.add_row("size", Text(f"{evaluation.size_ratio:.2f}x of the input"))
    for note in notes:
        table.add_row("note", Text(note))
    console.print(table)
