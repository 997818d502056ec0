"""`inferopt bench URL --model NAME [--concurrency N,.. | --rate R,..]`: load an Open Inference
Protocol server, closed or open loop, and report throughput, latency percentiles, goodput,
refusals and (with our server's /metrics) queue vs compute time. See docs/bench.md.

Exit status: 0 when requests succeeded (a warning above the table when most failed), 1 when
none did (one line says the most common status and the server's message), 2 for bad input."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from functools import partial
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
    from inferopt.loadgen.stats import Summary, Tally
    from inferopt.loadgen.sweep import BenchResult

console = Console()
EXIT_NOTHING_SUCCEEDED = 1


def add_parser(subparsers: Any) -> None:
    from inferopt.commands.bench_streams import add_stream_options
    from inferopt.loadgen.streaming import APIS

    parser = subparsers.add_parser(
        "bench",
        help="load an inference server (closed or open loop) and measure it",
        description="Load generator for Open Inference Protocol (KServe v2) servers. "
        "Closed loop: --concurrency N,N,..; open loop: --rate R,R,.. (latency counted from "
        "the scheduled send time). A list is a sweep, stopped when the SLO breaks or "
        "throughput stops growing. With --api openai-completions|openai-chat|oip-generate: "
        "streaming text generation, measuring TTFT, ITL, TPOT and goodput.",
    )
    parser.add_argument("url", help="server address, host:port (HTTP or gRPC port)")
    parser.add_argument("--model", required=True, help="model name on the server")
    parser.add_argument(
        "--api", choices=("oip-infer", *APIS), default="oip-infer",
        help="oip-infer: tensors to /v2/models/NAME/infer (default); the others stream text "
        "generation: OpenAI /v1/completions or /v1/chat/completions, or the Open Inference "
        "Protocol's /v2/models/NAME/generate_stream (see 'Streams' in docs/bench.md)",
    )  # fmt: skip
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--binary", action="store_true", help="HTTP: binary tensor extension")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--concurrency", help="closed loop: requests outstanding, e.g. 1,4,16")
    load.add_argument("--rate", help="open loop: requests per second, e.g. 50,100,200")
    parser.add_argument("--arrival", choices=ARRIVALS, default="constant", help="open loop")
    parser.add_argument("--duration", default="30", help="max seconds per load level")
    # No argparse defaults (None when not given, so that streaming APIs can refuse them);
    # settings() applies them.
    parser.add_argument("--window", help="seconds per measurement window (2)")
    parser.add_argument("--warmup", help="seconds excluded at each level's start (2)")
    parser.add_argument("--tolerance", help="%% the last 3 windows must agree (10)")
    parser.add_argument("--slo-ms", help="latency objective for goodput and to stop a sweep")
    parser.add_argument("--max-outstanding", default="1024", help="open loop: cap, then drop")
    parser.add_argument("--timeout", default="30", help="seconds before a request times out")
    inputs = parser.add_mutually_exclusive_group()
    inputs.add_argument("--data", help=".npz of inputs keyed by name (first axis: samples)")
    inputs.add_argument(
        "--tokenizer",
        help="text inputs from corpus sentences tokenized by the model's own tokenizer: an HF "
        "tokenizer folder, a zoo name (minilm) or an `inferopt optimize` artifact folder; "
        "streaming APIs: a tokenizer.json (or its folder) that measures --prompt-tokens",
    )
    inputs.add_argument("--int-range", help="random integer inputs within LOW..HIGH (inclusive)")
    parser.add_argument(
        "--seq-len", help="generated data: variable axes length (default: like real sentences "
        "for text models with the server's spec, else 16)"
    )  # fmt: skip
    add_shape_option(parser)
    parser.add_argument("--metrics-url", help="where /metrics is (default: URL/metrics, HTTP)")
    parser.add_argument("--seed", default="0", help="Poisson arrivals seed")
    add_stream_options(parser)
    parser.add_argument("--json", help="write the result as JSON here")
    parser.add_argument("--html", help="write an HTML report with plots here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from inferopt.loadgen import report
    from inferopt.loadgen.sweep import bench
    from inferopt.serve import eventloop

    if args.api != "oip-infer":
        from inferopt.commands import bench_streams

        return bench_streams.run(args)
    target, loads, config, data = settings(args)
    with progress_bar() as progress:
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
    return write_and_status(args, result.tally, partial(report.write_json, result),
                            partial(report.write_html, result))  # fmt: skip


def write_and_status(
    args: argparse.Namespace,
    tally: Tally,
    write_json: Callable[[str], Path],
    write_html: Callable[[str], Path],
) -> int:
    """Write --json and --html; the exit status: EXIT_NOTHING_SUCCEEDED, with the reason on
    stderr, when no request succeeded, else 0."""
    from inferopt.loadgen import report

    if args.json:
        console.print(f"wrote {write_json(args.json)}")
    if args.html:
        console.print(f"wrote {write_html(args.html)}")
    failed = report.failure(tally)
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


def progress_bar() -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console, transient=True)


def settings(args: argparse.Namespace) -> tuple[Target, list[Load], RunConfig, DataSource]:
    """The command line as the loadgen's frozen configs; a bad value is a one-line BenchError."""
    from inferopt.commands.bench_streams import refuse_stream_flags
    from inferopt.loadgen.client import Target
    from inferopt.loadgen.inputs import DataSource
    from inferopt.loadgen.run import Load, RunConfig

    refuse_stream_flags(args)
    mode: Mode = "open" if args.rate is not None else "closed"
    loads_spec = args.rate if mode == "open" else (args.concurrency or "1")
    try:
        levels = [number_arg(x, "--rate" if mode == "open" else "--concurrency") for x in
                  loads_spec.split(",")]  # fmt: skip
        loads = [Load(mode, level, args.arrival) for level in levels]
        slo = None if args.slo_ms is None else number_arg(args.slo_ms, "--slo-ms")
        config = RunConfig(
            window_s=number_arg(args.window or "2", "--window"),
            warmup_s=number_arg(args.warmup or "2", "--warmup"),
            max_duration_s=number_arg(args.duration, "--duration"),
            tolerance=number_arg(args.tolerance or "10", "--tolerance") / 100.0,
            max_outstanding=int(number_arg(args.max_outstanding, "--max-outstanding")),
            slo_ms=slo,
            seed=int(number_arg(args.seed, "--seed")),
        )
        target = Target(args.url, args.model, args.protocol, args.binary,
                        number_arg(args.timeout, "--timeout"))  # fmt: skip
        data = DataSource(
            npz=Path(args.data) if args.data else None,
            seq_len=None if args.seq_len is None else int(number_arg(args.seq_len, "--seq-len")),
            tokenizer=args.tokenizer,
            int_range=None if args.int_range is None else _int_range(args.int_range),
            shapes=shapes(args),
        )
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    return target, loads, config, data


def number_arg(text: str, flag: str) -> float:
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
