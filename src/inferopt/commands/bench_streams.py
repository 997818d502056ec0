"""`inferopt bench URL --model NAME --api openai-completions|openai-chat|oip-generate`: load a
text-generation server's streaming endpoint, closed (--concurrency N) or open loop (--rate R),
and report TTFT, ITL, TPOT, e2e latency, output tokens/s, goodput against --ttft-slo-ms and
--tpot-slo-ms, and failures by HTTP status and kind. See "Streams" in docs/bench.md.

Exit status as for the tensor bench: 0 when requests succeeded, 1 when none did, 2 for bad
input (a one-line BenchError, raised before any request is sent)."""

from __future__ import annotations

import argparse
import math
import time
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from rich.text import Text

from inferopt.commands.bench import console, number_arg, progress_bar, write_and_status
from inferopt.loadgen.inputs import BenchError
from inferopt.loadgen.streaming import APIS

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from inferopt.loadgen.run import Mode
    from inferopt.loadgen.streaming import Timing
    from inferopt.loadgen.streams import StreamConfig, StreamResult

# (flag, dest) of the options only streams take, None when not given.
STREAM_FLAGS = (
    ("--prompt-tokens", "prompt_tokens"),
    ("--max-tokens", "max_tokens"),
    ("--requests", "requests"),
    ("--ttft-slo-ms", "ttft_slo_ms"),
    ("--tpot-slo-ms", "tpot_slo_ms"),
    ("--ignore-eos", "ignore_eos"),
    ("--shared-prefix-tokens", "shared_prefix_tokens"),
)
# (flag, dest, value when not given) of tensor-only options, refused with a streaming API.
TENSOR_FLAGS: tuple[tuple[str, str, object], ...] = (
    ("--protocol grpc", "protocol", "http"),
    ("--binary", "binary", False),
    ("--data", "data", None),
    ("--int-range", "int_range", None),
    ("--seq-len", "seq_len", None),
    ("--input-shape", "input_shapes", []),
    ("--metrics-url", "metrics_url", None),
    ("--slo-ms (use --ttft-slo-ms, --tpot-slo-ms)", "slo_ms", None),
    ("--window", "window", None),
    ("--warmup", "warmup", None),
    ("--tolerance", "tolerance", None),
)
PROGRESS_EVERY_S = 1.0  # plain progress lines (no terminal): at most one a second


def add_stream_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("streaming APIs (--api other than oip-infer)")
    group.add_argument(
        "--prompt-tokens", metavar="MEAN[:STDDEV]",
        help="prompt lengths, normal: tokens of --tokenizer, else words (default 128)",
    )  # fmt: skip
    group.add_argument(
        "--shared-prefix-tokens", metavar="N",
        help="put the same N tokens (words) of text before every prompt, as a shared system "
        "prompt: measures a server's prefix cache (default 0)",
    )  # fmt: skip
    group.add_argument("--max-tokens", help="output tokens requested per request (default 128)")
    group.add_argument("--requests", help="send at most this many requests (default 200)")
    group.add_argument("--ttft-slo-ms", help="goodput: time to first token objective")
    group.add_argument("--tpot-slo-ms", help="goodput: time per output token objective")
    group.add_argument(
        "--ignore-eos", action="store_const", const=True,
        help="ask for max-tokens past EOS (vLLM's and inferopt's extension field ignore_eos), "
        "so outputs have a known length",
    )  # fmt: skip


def refuse_stream_flags(args: argparse.Namespace) -> None:
    """Raises BenchError when a stream-only option comes without a streaming --api."""
    for flag, dest in STREAM_FLAGS:
        if getattr(args, dest) is not None:
            raise BenchError(f"{flag} is for streaming APIs only (--api {'|'.join(APIS)})")


def settings(args: argparse.Namespace) -> StreamConfig:
    """The command line as a StreamConfig; a bad value is a one-line BenchError."""
    from inferopt.loadgen.prompts import PromptLength
    from inferopt.loadgen.run import Load
    from inferopt.loadgen.stream_stats import Objectives
    from inferopt.loadgen.streams import StreamConfig

    for flag, dest, unset in TENSOR_FLAGS:
        if getattr(args, dest) != unset:
            raise BenchError(f"{flag} does not apply to --api {args.api}")
    mode: Mode = "open" if args.rate is not None else "closed"
    flag, level = ("--rate", args.rate) if mode == "open" else ("--concurrency", args.concurrency)
    if level is not None and "," in level:
        raise BenchError(f"{flag}: streaming APIs run one load level, got {level!r}")
    tpot = _slo(args.tpot_slo_ms, "--tpot-slo-ms")
    try:
        return StreamConfig(
            url=args.url,
            model=args.model,
            api=args.api,
            load=Load(mode, number_arg(level or "1", flag), args.arrival),
            prompt_length=PromptLength.parse(args.prompt_tokens or "128"),
            max_tokens=_count(args.max_tokens or "128", "--max-tokens"),
            max_requests=_count(args.requests or "200", "--requests"),
            duration_s=number_arg(args.duration, "--duration"),
            timeout_s=number_arg(args.timeout, "--timeout"),
            objectives=Objectives(_slo(args.ttft_slo_ms, "--ttft-slo-ms"), tpot),
            max_outstanding=_count(args.max_outstanding, "--max-outstanding"),
            tokenizer=args.tokenizer,
            seed=_whole(args.seed, "--seed"),
            ignore_eos=bool(args.ignore_eos),
            shared_prefix=_at_least_0(args.shared_prefix_tokens or "0", "--shared-prefix-tokens"),
        )
    except ValueError as exc:
        raise BenchError(str(exc)) from None


def _whole(text: str, flag: str) -> int:
    value = number_arg(text, flag)
    if value != int(value):
        raise BenchError(f"{flag} must be a whole number, got {text!r}")
    return int(value)


def _at_least_0(text: str, flag: str) -> int:
    value = _whole(text, flag)
    if value < 0:
        raise BenchError(f"{flag} must be >= 0, got {text!r}")
    return value


def _count(text: str, flag: str) -> int:
    value = _whole(text, flag)
    if value < 1:
        raise BenchError(f"{flag} must be >= 1, got {text!r}")
    return value


def _slo(text: str | None, flag: str) -> float | None:
    if text is None:
        return None
    value = number_arg(text, flag)
    if not value > 0:
        raise BenchError(f"{flag} must be > 0 ms, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from inferopt.loadgen import stream_report
    from inferopt.loadgen.streams import bench_streams
    from inferopt.serve import eventloop

    config = settings(args)
    with progress_bar() as progress:
        shown = Shown(progress, config.max_requests, console.is_terminal)
        result = eventloop.run(bench_streams(config, shown.on_done))
    console.print(stream_report.title(result), markup=False, highlight=False)
    for table in stream_report.tables(result):
        console.print(table)
    console.print(f"prompts: {result.prompts.origin}", markup=False, highlight=False)
    _say(result)
    return write_and_status(args, result.tally, partial(stream_report.write_json, result),
                            partial(stream_report.write_html, result))  # fmt: skip


def _say(result: StreamResult) -> None:
    from inferopt.loadgen import report

    warning = report.warning(result.tally)
    if warning is not None:
        line = Text.assemble(("warning: ", "bold yellow"), warning)
        console.print(line, soft_wrap=True, highlight=False)


class Shown:
    """Progress as requests end: a rich bar in a terminal, else a plain line a second."""

    def __init__(self, progress: Progress, total: int, terminal: bool) -> None:
        self.progress, self.terminal, self.total = progress, terminal, total
        self.task: TaskID = progress.add_task("streams", total=total)
        self.ttfts: list[float] = []
        self.tokens, self.ended, self.last = 0, 0, -math.inf

    def on_done(self, timing: Timing, elapsed: float) -> None:
        self.ended += 1
        if timing.outcome == "ok":
            self.ttfts.append(timing.ttft)
            self.tokens += timing.output_tokens
        if time.monotonic() - self.last < PROGRESS_EVERY_S and self.ended < self.total:
            return  # a percentile per request would cost the generator's CPU
        self.last = time.monotonic()
        ttft = f"{np.median(self.ttfts) * 1000:.1f}" if self.ttfts else "-"
        text = (
            f"{self.ended} ended, {len(self.ttfts)} ok, TTFT p50 {ttft} ms, "
            f"{self.tokens / max(elapsed, 1e-9):,.1f} tokens/s"
        )
        if self.terminal:
            self.progress.update(self.task, completed=self.ended, description=text)
        else:
            console.print(f"{elapsed:6.1f} s  {text}", markup=False, highlight=False)
