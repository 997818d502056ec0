"""`inferopt bench URL --model NAME [--concurrency N,.. | --rate R,..]`: load an Open Inference
Protocol server, closed or open loop, and report throughput, latency percentiles, goodput,
refusals and (with our server's /metrics) queue vs compute time. See docs/bench.md.

Exit status: 0 when requests succeeded (a warning above the table when most failed), 1 when
none did (one line says the most common status and the server's message), 2 for bad input."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from inferopt.commands.inputs import add_shape_option, shapes
from inferopt.loadgen.inputs import BenchError
from inferopt.loadgen.schedule import ARRIVALS

if TYPE_CHECKING:
    from inferopt.loadgen.client import Target
    from inferopt.loadgen.inputs import DataSource
    from inferopt.loadgen.run import Load, Mode, RunConfig
    from inferopt.loadgen.stats import Summary
    from inferopt.loadgen.sweep import BenchResult

console = Console()
EXIT_NOTHING_SUCCEEDED = 1


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="load an inference server (closed or open loop) and measure it",
        description="Load generator for Open Inference Protocol (KServe v2) servers. "
        "Closed loop: --concurrency N,N,..; open loop: --rate R,R,.. (latency counted from "
        "the scheduled send time). A list is a sweep, stopped when the SLO breaks or "
        "throughput stops growing.",
    )
    parser.add_argument("url", help="server address, host:port (HTTP or gRPC port)")
    parser.add_argument("--model", required=True, help="model name on the server")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--binary", action="store_true", help="HTTP: binary tensor extension")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--concurrency", help="closed loop: requests outstanding, e.g. 1,4,16")
    load.add_argument("--rate", help="open loop: requests per second, e.g. 50,100,200")
    parser.add_argument("--arrival", choices=ARRIVALS, default="constant", help="open loop")
    parser.add_argument("--duration", default="30", help="max seconds per load level")
    parser.add_argument("--window", default="2", help="seconds per measurement window")
    parser.add_argument("--warmup", default="2", help="seconds excluded at each level's start")
    parser.add_argument("--tolerance", default="10", help="%% the last 3 windows must agree")
    parser.add_argument("--slo-ms", help="latency objective for goodput and to stop a sweep")
    parser.add_argument("--max-outstanding", default="1024", help="open loop: cap, then drop")
    parser.add_argument("--timeout", default="30", help="seconds before a request times out")
    inputs = parser.add_mutually_exclusive_group()
    inputs.add_argument("--data", help=".npz of inputs keyed by name (first axis: samples)")
    inputs.add_argument(
        "--tokenizer",
        help="text inputs from corpus sentences tokenized by the model's own tokenizer: an HF "
        "tokenizer folder, a zoo name (minilm) or an `inferopt optimize` artifact folder",
    )
    inputs.add_argument("--int-range", help="random integer inputs within LOW..HIGH (inclusive)")
    parser.add_argument(
        "--seq-len", help="generated data: variable axes length (default: like real sentences "
        "for text models with the server's spec, else 16)"
    )  # fmt: skip
    add_shape_option(parser)
    parser.add_argument("--metrics-url", help="where /metrics is (default: URL/metrics, HTTP)")
    parser.add_argument("--seed", default="0", help="Poisson arrivals seed")
    parser.add_argument("--json", help="write the result as JSON here")
    parser.add_argument("--html", help="write an HTML report with plots here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from inferopt.loadgen import report
    from inferopt.loadgen.sweep import bench
    from inferopt.serve import eventloop

    target, loads, config, data = settings(args)
    with _progress() as progress:
        tasks: dict[Load, TaskID] = {}

        def on_window(load: Load, elapsed: float, window: Summary) -> None:
            if load not in tasks:
                tasks[load] = progress.add_task(load.label, total=config.max_duration_s)
            p99 = "-" if math.isnan(window.p99_ms) else f"{window.p99_ms:.1f}"
            text = f"{load.label}: {window.throughput:.1f}/s, p99 {p99} ms"
            progress.update(tasks[load], completed=elapsed, description=text)

        coroutine = bench(target, loads, config, data, args.metrics_url, on_window)
        result = eventloop.run(coroutine)  # uvloop: less of the shared CPU for the generator
    _say_above_table(result)
    console.print(report.table(result))
    console.print(f"data: {result.data}; {result.stopped}", markup=False)  # [batch, seq]
    if args.json:
        console.print(f"wrote {report.write_json(result, args.json)}")
    if args.html:
        console.print(f"wrote {report.write_html(result, args.html)}")
    failed = report.failure(result.tally)
    if failed is not None:
        line = Text.assemble(("inferopt bench: ", "bold red"), failed)
        Console(stderr=True, soft_wrap=True).print(line, highlight=False)
        return EXIT_NOTHING_SUCCEEDED
    return 0


def _say_above_table(result: BenchResult) -> None:
    from inferopt.loadgen import report

    for note in result.notes:
        console.print(Text.assemble(("note: ", "yellow"), note), soft_wrap=True, highlight=False)
    warning = report.warning(result.tally)
    if warning is not None:
        line = Text.assemble(("warning: ", "bold yellow"), warning)
        console.print(line, soft_wrap=True, highlight=False)


def _progress() -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console, transient=True)


def settings(args: argparse.Namespace) -> tuple[Target, list[Load], RunConfig, DataSource]:
    """The command line as the loadgen's frozen configs; a bad value is a one-line BenchError."""
    from inferopt.loadgen.client import Target
    from inferopt.loadgen.inputs import DataSource
    from inferopt.loadgen.run import Load, RunConfig

    mode: Mode = "open" if args.rate is not None else "closed"
    loads_spec = args.rate if mode == "open" else (args.concurrency or "1")
    try:
        levels = [_number(x, "--rate" if mode == "open" else "--concurrency") for x in
                  loads_spec.split(",")]  # fmt: skip
        loads = [Load(mode, level, args.arrival) for level in levels]
        slo = None if args.slo_ms is None else _number(args.slo_ms, "--slo-ms")
        config = RunConfig(
            window_s=_number(args.window, "--window"),
            warmup_s=_number(args.warmup, "--warmup"),
            max_duration_s=_number(args.duration, "--duration"),
            tolerance=_number(args.tolerance, "--tolerance") / 100.0,
            max_outstanding=int(_number(args.max_outstanding, "--max-outstanding")),
            slo_ms=slo,
            seed=int(_number(args.seed, "--seed")),
        )
        target = Target(args.url, args.model, args.protocol, args.binary,
                        _number(args.timeout, "--timeout"))  # fmt: skip
        data = DataSource(
            npz=Path(args.data) if args.data else None,
            seq_len=None if args.seq_len is None else int(_number(args.seq_len, "--seq-len")),
            tokenizer=args.tokenizer,
            int_range=None if args.int_range is None else _int_range(args.int_range),
            shapes=shapes(args),
        )
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    return target, loads, config, data


def _number(text: str, flag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BenchError(f"{flag} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise BenchError(f"{flag} must be a finite number, got {text!r}")
    return value


def _int_range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("..")
    try:
        if not sep:
            raise ValueError
        return int(low), int(high)
    except ValueError:
        raise BenchError(f"--int-range must be LOW..HIGH (integers), got {text!r}") from None
