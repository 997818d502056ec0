"""`inferopt profile MODEL [MODEL2]`: what a model costs to run here, or two models compared
with their runs interleaved. Flags map one to one onto ProfileConfig fields, whose defaults are
the only defaults (a flag left out is not passed on)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from inferopt import zoo
from inferopt.commands import inputs, profile_generator
from inferopt.errors import InputError
from inferopt.measure.config import DEFAULT_BATCH_SIZES, DEFAULT_SEQ_LENS, ProfileConfig
from inferopt.model import Model
from inferopt.report.schema import Comparison, Measurement, dumps

DEFAULTS = ProfileConfig()


def add_parser(subparsers: Any) -> None:
    """Register `profile` on the CLI's subparsers (argparse's private _SubParsersAction)."""
    p = subparsers.add_parser(
        "profile",
        help="measure what a model costs to run on this machine (or compare two)",
        description="Latency, throughput, threads, memory, size, FLOPs, roofline, per-op time, "
        "energy and cost of a model on this machine. With two models, their runs are "
        "interleaved and ratios (second / first) reported.",
    )
    sources = f"model.onnx | artifact folder | zoo name ({', '.join(zoo.names())})"
    sources += f" | generator: zoo name ({', '.join(zoo.generator_names())}), decoder artifact "
    sources += "folder or Hugging Face causal-LM folder"
    p.add_argument(
        "model", nargs="?", default=zoo.DEFAULT, help=f"{sources}; default {zoo.DEFAULT}"
    )
    p.add_argument("model2", nargs="?", help="a second model to compare against the first")
    for names, field, parse, text in _valued_flags():
        # SUPPRESS: a flag left out sets nothing, so ProfileConfig's default applies.
        p.add_argument(*names, dest=field, type=parse, default=argparse.SUPPRESS, help=text)
    for name, field, action, text in SWITCHES:
        p.add_argument(name, dest=field, action=action, default=argparse.SUPPRESS, help=text)
    inputs.add_options(p)
    profile_generator.add_options(p)
    p.add_argument("--json", metavar="FILE", help="write the measurement (documented schema)")
    p.add_argument("--html", metavar="FILE", help="write a self-contained HTML report with plots")
    p.set_defaults(func=run)


def _valued_flags() -> list[tuple[tuple[str, ...], str, Callable[[str], Any], str]]:
    """(flags, ProfileConfig field, parser, help) for every flag that takes a value."""
    d = DEFAULTS
    return [
        (("--batch-sizes", "--batch-size"), "batch_sizes", _ints("--batch-sizes"),
         f"comma-separated; default {_csv(DEFAULT_BATCH_SIZES)} (1 without a batch axis)"),
        (("--seq-lens", "--seq-len"), "seq_lens", _ints("--seq-lens"),
         f"comma-separated, sequence models only; default {_csv(DEFAULT_SEQ_LENS)}"),
        (("--threads",), "threads", _ints("--threads"),
         "intra-op thread counts to sweep; default 1..usable cores (a generator: one count, "
         "default ORT's)"),
        (("--sessions",), "concurrent_sessions", _number(int, "--sessions"),
         "sessions you will run side by side, to flag oversubscription; "
         f"default {d.concurrent_sessions}"),
        (("--target-ci",), "target_ci_pct", _number(float, "--target-ci"),
         "repeat until the median's 95%% CI is within this %% of it; "
         f"default {d.target_ci_pct:g}"),
        (("--max-time",), "max_time_per_point_s", _number(float, "--max-time"),
         f"seconds per point at most; default {d.max_time_per_point_s:g}"),
        (("--min-time",), "min_time_per_point_s", _number(float, "--min-time", zero_ok=True),
         f"seconds per point at least; default {d.min_time_per_point_s:g}"),
        (("--sweep-time",), "sweep_time_s", _number(float, "--sweep-time"),
         f"seconds for the whole thread sweep; default {d.sweep_time_s:g}"),
        (("--price-per-hour",), "price_per_hour", _number(float, "--price-per-hour", zero_ok=True),
         f"machine price per hour, for the cost figures; default {d.price_per_hour:g}"),
        (("--watts-per-core",), "watts_per_core", _number(float, "--watts-per-core", zero_ok=True),
         "power of a busy core, for the energy estimate when RAPL is not readable; "
         f"default {d.watts_per_core:g}"),
    ]  # fmt: skip


SWITCHES = (
    ("--no-memory", "memory", "store_false", "skip the memory measurement (fresh processes)"),
    ("--remeasure-peaks", "remeasure_peaks", "store_true",
     "measure this machine's GEMM peaks again instead of using the cached ones"),
    ("--no-samples", "keep_samples", "store_false", "leave per-run latencies out of the JSON"),
)  # fmt: skip


def _csv(values: tuple[int, ...]) -> str:
    return ",".join(map(str, values))


def _ints(flag: str) -> Callable[[str], tuple[int, ...]]:
    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers, got {text!r}"
            ) from None
        if not values or min(values) < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be integers >= 1, got {text!r}")
        return values

    return parse


def _number(
    kind: Callable[[str], Any], flag: str, *, zero_ok: bool = False
) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
            rule = ">= 0" if zero_ok else "> 0"
            raise argparse.ArgumentTypeError(f"{flag} must be {rule}, got {text!r}")
        return value

    return parse


def config_from(args: argparse.Namespace) -> ProfileConfig:
    fields = ProfileConfig.__dataclass_fields__
    given = {name: value for name, value in vars(args).items() if name in fields}
    try:
        return ProfileConfig(**given)
    except ValueError as exc:  # combinations argparse cannot see (--min-time > --max-time)
        raise InputError(str(exc)) from exc


def run(args: argparse.Namespace) -> int:
    from inferopt.measure.pipeline import compare, profile

    console = Console()
    kinds = [profile_generator.kind_of(s) for s in (args.model, args.model2) if s is not None]
    if any(kinds):
        if args.model2 is not None:
            raise InputError("profile: comparing a generator with a second model is not "
                             "supported yet; profile one generator at a time")  # fmt: skip
        _refuse(_encoder_flags(args), "does not apply to a generator")
        return profile_generator.run(args, kinds[0] or "artifact", console)
    _refuse(profile_generator.given_flags(args), "applies to generators only")
    config = config_from(args)
    sources = [s for s in (args.model, args.model2) if s is not None]
    models: list[Model] = []
    for source in sources:
        with console.status(f"loading {source} ..."):
            models.append(inputs.load_model(source, args))
    with RichProgress(console) as progress:
        record: Measurement | Comparison = (
            compare(models[0], models[1], config, progress)
            if len(models) == 2
            else profile(models[0], config, progress)
        )
    _show_and_write(record, args, console)
    return 0


def _encoder_flags(args: argparse.Namespace) -> list[str]:
    """The encoder-only flags given (--threads is shared: a generator takes one count)."""
    given = vars(args)
    flags = [names[0] for names, field, _, _ in _valued_flags() if field in given]
    flags += [name for name, field, _, _ in SWITCHES if field in given]
    flags += [f"--{k}" for k in ("html", "data") if given.get(k)]
    flags += ["--input-shape"] if given.get("input_shapes") else []
    return [flag for flag in flags if flag != "--threads"]


def _refuse(flags: list[str], why: str) -> None:
    if flags:
        raise InputError(f"profile: {', '.join(flags)} {why}")


def _show_and_write(
    record: Measurement | Comparison, args: argparse.Namespace, console: Console
) -> None:
    from inferopt.report import console as tables

    console.print(tables.render(record))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dumps(record))
        console.print(f"wrote {path}")
    if args.html:
        from inferopt.report.html import write_html

        console.print(f"wrote {write_html(record, args.html)}")


class RichProgress:
    """The pipeline's Progress hook as a rich progress display: one bar per stage."""

    def __init__(self, console: Console) -> None:
        self.display = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichProgress:
        self.display.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.display.stop()

    def __call__(self, stage: str, done: int, total: int, detail: str = "") -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.display.add_task(stage, total=total, detail=detail)
        self.display.update(self.tasks[stage], completed=done, total=total, detail=detail)
