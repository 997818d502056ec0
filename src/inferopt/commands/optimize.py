"""`inferopt optimize MODEL --recipe PASSES --out DIR`: apply an explicit recipe, then state
fidelity, latency ratio (measured interleaved) and size ratio against the input model."""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.status import Status
from rich.table import Table
from rich.text import Text

from inferopt import zoo
from inferopt.commands import inputs
from inferopt.errors import InputError
from inferopt.passes.recipe import PASSES, RecipeError
from inferopt.search.distributed import HARDWARE, RESOURCE
from inferopt.search.select import OBJECTIVES, RULES

if TYPE_CHECKING:
    from inferopt.recipes import RecipeResult
    from inferopt.search.distributed import RayConfig

console = Console()
EXIT_NONE_WITHIN_BUDGET = 1  # the closest candidates are written; none is within budget


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "optimize",
        help="find the fastest model within an accuracy budget, or apply a recipe",
        description="Without --recipe: search the recipes that apply to the model, measure "
        "each here, and keep the best on --objective within --max-drop. With --recipe: apply "
        f"an ordered recipe, e.g. fuse,smooth:0.75,int8-dynamic. Passes: {', '.join(PASSES)}; "
        "PyTorch steps, first in a recipe: prune, sparsify, distill (docs/compress.md).",
    )
    parser.add_argument(
        "model", nargs="?", default=None, help=f"model source (default: {zoo.DEFAULT})"
    )
    parser.add_argument("--out", help="artifact folder to write (default: optimized/MODEL)")
    parser.add_argument("--data", help=".npz of inputs by name, or .txt: one text a line")
    inputs.add_shape_option(parser)
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--recipe", help="comma-separated passes, in order (no search)")
    how.add_argument("--recipe-from", help="an artifact's inferopt.json: apply its recipe again")
    search = parser.add_argument_group("search (without --recipe)")
    search.add_argument(
        "--max-drop",
        default=None,
        help="accuracy budget: 1%% (relative) or 0.01 (absolute, in the metric's units) "
        "(default: the metric's own: 1%% of mean nDCG@10 for retrieval, else 0.5%%)",
    )
    parser.add_argument(
        "--channel-axis", action="append", default=[], metavar="OUTPUT:AXIS",
        help="the axis of OUTPUT whose entries are compared one by one (default: the last; "
        "none: the whole output as one); repeatable",
    )  # fmt: skip
    search.add_argument(
        "--budget-rule", choices=RULES, default="upper",
        help="upper: within budget only when the drop's 95%% interval is (default); "
        "point: when the measured drop is",
    )  # fmt: skip
    search.add_argument(
        "--metric",
        help="top1 | retrieval | embedding | agreement | module:function "
        "(called as function(outputs, labels) -> float, higher is better); default: the "
        "model's own, else top1 with labels, retrieval (nDCG@10) for embeddings, agreement",
    )
    search.add_argument(
        "--objective", choices=(*OBJECTIVES, "decode", "ttft"), default="latency",
        help="what the chosen model is best at: latency (batch 1), throughput (at "
        "--throughput-shape), size or memory; both speeds are reported either way. "
        "Generators: decode (tokens/s, batch 1; latency means it), ttft, size, memory",
    )  # fmt: skip
    search.add_argument(
        "--throughput-shape", default="32x128", metavar="BATCHxTOKENS",
        help="the batch throughput is timed at: held-out samples cut or padded (mask 0) to "
        "TOKENS; BATCH alone for models without a sequence axis (default: %(default)s)",
    )  # fmt: skip
    search.add_argument(
        "--time-budget",
        type=_seconds,
        default=600.0,
        metavar="S",
        help="stop trying new candidates after this long (default: 600)",
    )
    search.add_argument(
        "--fresh", action="store_true", help="measure again the candidates an earlier run finished"
    )
    search.add_argument(
        "--variants", metavar="LIST",
        help="generators: comma-separated variants to try (default: fp32, int8-weight, "
        "int8-weight-fp32-compute, int4-weight, int4-weight-float-zp, "
        "int4-weight-float-zp-fp32-compute, int4-weight-mixed, w8a8; "
        "also int4-weight-hqq)",
    )  # fmt: skip
    search.add_argument("--no-training", action="store_true",
                        help="leave out pruning and distillation")  # fmt: skip
    search.add_argument(
        "--ray", metavar="ADDRESS",
        help="measure on a Ray cluster's nodes that declare the resource "
        f"{RESOURCE} 1 (ray start --resources '{{\"{RESOURCE}\": 1}}'): auto, "
        "ray://HOST:PORT or HOST:PORT; this process keeps the search, cache and artifact",
    )  # fmt: skip
    search.add_argument(
        "--ray-hardware", choices=HARDWARE, default=None,
        help="nodes whose hardware fingerprint differs from this machine's: refuse them "
        "(default), or group the nodes by fingerprint and search once per group, writing "
        "OUT/FINGERPRINT/",
    )  # fmt: skip
    parser.set_defaults(func=run)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    from inferopt.commands import profile_generator

    kind = profile_generator.kind_of(str(args.model)) if args.model else None
    if kind is not None:  # a causal LM: the generator search (docs/generate.md)
        from rich.console import Console

        from inferopt.commands import optimize_generator

        return optimize_generator.run(args, kind, Console())
    if args.variants or args.objective in ("decode", "ttft"):
        raise InputError("--variants and --objective decode|ttft are for generators")
    if args.recipe or args.recipe_from:
        if args.ray:
            raise InputError("--ray runs the search on a cluster; --recipe applies one recipe here")
        return run_recipe(args)
    return run_search(args)


def run_recipe(args: argparse.Namespace) -> int:
    from inferopt.artifact import read_manifest
    from inferopt.passes.recipe import Recipe
    from inferopt.recipes import optimize_recipe

    model = args.model
    if args.recipe_from:
        manifest = read_manifest(Path(args.recipe_from))
        if manifest.get("recipe") is None:
            raise RecipeError(f"{args.recipe_from}: the manifest holds no recipe to apply")
        recipe = Recipe.from_json(manifest["recipe"])
        model = model or manifest.get("source")
    else:
        recipe = Recipe.parse(args.recipe)
    model = model or zoo.DEFAULT
    out = args.out or default_out(model)
    with console.status(f"applying {recipe.text()} to {model} and measuring ..."):
        result = optimize_recipe(
            model,
            recipe,
            out,
            data=args.data,
            shapes=inputs.shapes(args),
            channel_axes=channel_axes(args),
        )
    show(result)
    console.print(f"wrote {result.out}/model.onnx, inferopt.json, report.md")
    return 0


def run_search(args: argparse.Namespace) -> int:
    from inferopt.search import view
    from inferopt.search.auto import SearchConfig, optimize
    from inferopt.search.screen import ThroughputShape
    from inferopt.search.select import Budget

    config = SearchConfig(
        max_drop=None if args.max_drop is None else Budget.parse(args.max_drop, args.budget_rule),
        budget_rule=args.budget_rule,
        channel_axes=channel_axes(args),
        objective=args.objective,
        time_budget_s=args.time_budget,
        metric=args.metric,
        fresh=args.fresh,
        training=not args.no_training,
        throughput=ThroughputShape.parse(args.throughput_shape),
    )
    cluster = ray_config(args)
    model = args.model or zoo.DEFAULT
    out = args.out or default_out(model)
    log = ProgressLog(console)
    options: dict[str, Any] = dict(data=args.data, config=config, progress=log)
    try:
        with log.live(f"optimizing {model}: loading it ..."):
            if cluster is None:
                results = [optimize(model, out, shapes=inputs.shapes(args), **options)]
            else:  # one search, or one per kind of machine (OUT/FINGERPRINT/)
                from inferopt.search.distributed import optimize_on_ray

                searches = optimize_on_ray(
                    model, out, cluster=cluster, shapes=inputs.shapes(args), **options
                )
                results = [search.result for search in searches]
    except KeyboardInterrupt:
        console.print(
            f"interrupted: {out} holds the best candidate so far (status in-progress), if "
            "any; the same command again resumes, reusing every finished candidate"
        )
        raise
    for result in results:
        view.show(result, console)
    done = all(r.chosen is not None or r.kept_original for r in results)
    return 0 if done else EXIT_NONE_WITHIN_BUDGET


def ray_config(args: argparse.Namespace) -> RayConfig | None:
    """The cluster --ray names, or None. Raises InputError for --ray-hardware alone."""
    if args.ray is None:
        if args.ray_hardware is not None:
            raise InputError("--ray-hardware applies to a search on a Ray cluster (--ray)")
        return None
    from inferopt.search.distributed import RayConfig

    try:
        return RayConfig(args.ray, args.ray_hardware or "refuse")
    except ValueError as exc:
        raise InputError(f"--ray {args.ray!r}: {exc}") from None


class ProgressLog:
    """The search's progress, one line per message with the time since the start ("[ 42s]
    ..."), flushed as it comes: plain text when the output is not a terminal (a log, a pipe,
    CI), with a spinner showing the current step beneath the lines in a terminal."""

    def __init__(self, out: Console) -> None:
        self.out = out
        self.start = time.perf_counter()
        self.status: Status | None = None

    @contextlib.contextmanager
    def live(self, first: str) -> Iterator[None]:
        if not self.out.is_terminal:  # the search's own first line comes at once
            yield
            return
        with self.out.status(first) as self.status:
            yield
        self.status = None

    def __call__(self, message: str) -> None:
        line = f"[{time.perf_counter() - self.start:3.0f}s] {message}"
        if self.status is None:
            print(line, file=self.out.file, flush=True)
            return
        self.out.print(Text(line), soft_wrap=True)
        self.status.update(Text(message))


def channel_axes(args: argparse.Namespace) -> dict[str, int | None]:
    from inferopt.search.metric import parse_channel_axis

    return dict(parse_channel_axis(text) for text in args.channel_axis)


def default_out(model: str) -> str:
    name = Path(model).stem if Path(model).suffix else Path(model).name
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "model"
    return str(Path("optimized") / safe)


def _step_summary(step: dict[str, Any]) -> str:
    report = step.get("report", {})
    if "fired" in report:
        return ", ".join(f"{k} x{v}" for k, v in report["fired"].items()) or "no fusion matched"
    if "fallback_cosine" in report:
        kept = len(report["excluded"])
        return f"{kept} nodes kept in float (cosine {report['fallback_cosine']:.4f})"
    parts = [f"{k}={v}" for k, v in report.items() if not isinstance(v, list | dict)]
    return ", ".join(parts)


def show(result: RecipeResult) -> None:
    from inferopt.search.fidelity import condition_lines, describe_checks

    evaluation = result.evaluation
    table = Table(show_header=False, title="result", title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for step in result.model.provenance.steps:
        table.add_row(f"pass {step['pass']}", Text(_step_summary(step)))
    f, lat = evaluation.fidelity, evaluation.latency
    fid = f"drop {f.drop:.4f} (up to {f.drop_high:.4f} at 95%); worst: {f.decided_by()}"
    table.add_row("fidelity", Text(fid))
    summary = (
        f"cosine {f.cosine:.4f}, agreement {f.agreement:.4f} ({f.metric}; {result.data_origin})"
    )
    if f.task_score is not None:
        summary += f"; top-1 {f.task_score:.4f} vs {f.baseline_task_score:.4f}"
    table.add_row("", Text(summary))
    for line in condition_lines(f):
        table.add_row("", Text(line))
    if result.checks:
        table.add_row("checked on", Text(describe_checks(result.checks)))
    table.add_row(
        "latency",
        Text(
            f"{lat.speedup:.2f}x ({lat.candidate_ms:.2f} vs {lat.baseline_ms:.2f} ms at batch 1, "
            f"interleaved, spread {lat.ratio_spread:.1%})"
        ),
    )
    table.add_row("size", Text(f"{evaluation.size_ratio:.2f}x of the input"))
    for note in result.notes:
        table.add_row("note", Text(note))
    console.print(table)
