"""Load on a text-generation server's streaming endpoint: closed loop (N requests outstanding)
or open loop (sends on a schedule, constant or Poisson, from loadgen.schedule; TTFT and e2e
count from the scheduled send), prompts from held-out text, every request timed chunk by chunk.

    result = asyncio.run(bench_streams(StreamConfig("127.0.0.1:8000", "llama",
                                                     load=Load("open", 4.0, "poisson"))))
    result.summary.ttft_ms["p99"], result.to_json()

A run sends until `max_requests` are sent or `duration_s` has passed, whichever is first, then
waits for the requests still streaming, each bounded by `timeout_s`: at most duration_s +
timeout_s in all. Every request that was sent is measured (no warm-up is dropped).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from inferopt.loadgen.prompts import PromptLength, Prompts, load_tokenizer, make_prompts
from inferopt.loadgen.run import Load, sleep_until
from inferopt.loadgen.schedule import arrivals
from inferopt.loadgen.stats import Tally
from inferopt.loadgen.stream_stats import Objectives, StreamSummary, summarize
from inferopt.loadgen.streaming import APIS, Api, StreamClient, Timing

SCHEMA = "inferopt-bench-streams/1"
OnDone = Callable[[Timing, float], None]  # a request that ended, seconds since the start


@dataclass(frozen=True)
class StreamConfig:
    """What `bench_streams` runs. `url`: the server's root (host:port, or with a scheme).

    Raises:
        ValueError: an unknown api, an empty model, max_tokens or max_requests below 1, a
            duration or timeout not > 0, or an objective not > 0 (Load, PromptLength and
            Objectives check their own).
    """

    url: str
    model: str
    api: Api = "openai-completions"
    load: Load = field(default_factory=lambda: Load("closed", 1))
    prompt_length: PromptLength = field(default_factory=lambda: PromptLength(128))
    max_tokens: int = 128  # output tokens requested per request
    max_requests: int = 200
    duration_s: float = 60.0  # of sending
    timeout_s: float = 60.0  # per request, its whole stream included
    objectives: Objectives = field(default_factory=Objectives)
    max_outstanding: int = 1024  # open loop: a send past this many streaming is dropped
    tokenizer: str | None = None  # a tokenizer.json (or its folder): prompt lengths in tokens
    seed: int = 0  # prompt lengths and Poisson arrivals
    ignore_eos: bool = False  # send ignore_eos (vLLM's extension): outputs of max_tokens
    shared_prefix: int = 0  # tokens (words) of one text before every prompt (prefix caching)

    def __post_init__(self) -> None:
        if self.api not in APIS:
            raise ValueError(f"unknown api {self.api!r}; choose from {', '.join(APIS)}")
        if not self.model:
            raise ValueError("the model name must not be empty")
        if self.shared_prefix < 0:
            raise ValueError(f"the shared prefix must be >= 0, got {self.shared_prefix}")
        for name in ("max_tokens", "max_requests", "max_outstanding"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("duration_s", "timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 s, got {getattr(self, name)}")


@dataclass
class StreamResult:
    config: StreamConfig
    prompts: Prompts
    timings: list[Timing]  # in the order requests ended
    summary: StreamSummary
    tally: Tally  # every answer by status or kind, with the first message of each failure

    def to_json(self) -> dict[str, Any]:
        """The record docs/bench.md ("Streams", JSON) describes; NaN stays NaN (orjson and
        report.write_json write it as null)."""
        c, p = self.config, self.prompts
        return {
            "schema": SCHEMA,
            "target": {"url": c.url, "model": c.model, "api": c.api},
            "config": {
                "mode": c.load.mode,
                "level": c.load.level,
                "arrival": c.load.arrival if c.load.mode == "open" else None,
                "prompt_length": {"mean": c.prompt_length.mean, "stddev": c.prompt_length.stddev},
                "shared_prefix": c.shared_prefix,
                "ignore_eos": c.ignore_eos,
                "max_tokens": c.max_tokens,
                "max_requests": c.max_requests,
                "duration_s": c.duration_s,
                "timeout_s": c.timeout_s,
                "ttft_slo_ms": c.objectives.ttft_ms,
                "tpot_slo_ms": c.objectives.tpot_ms,
                "max_outstanding": c.max_outstanding,
                "tokenizer": c.tokenizer,
                "seed": c.seed,
            },
            "prompts": {
                "origin": p.origin,
                "unit": p.unit,
                "count": len(p.texts),
                "mean": sum(p.lengths) / len(p.lengths),
                "min": min(p.lengths),
                "max": max(p.lengths),
                "repeats": p.repeats,
            },
            **self.summary.to_json(),
            "answers": {  # as report.to_json's, without importing matplotlib with report
                "total": self.tally.total,
                "ok": self.tally.ok,
                "failed": self.tally.failed,
                "by_status": dict(self.tally.counts.most_common()),
                "messages": self.tally.messages,
            },
            "samples": [_timing_json(t) for t in self.timings],
        }


def _timing_json(t: Timing) -> dict[str, Any]:
    return {
        "sent_s": t.sent,
        "outcome": t.outcome,
        "ttft_ms": t.ttft * 1000.0,
        "tpot_ms": t.tpot * 1000.0,
        "e2e_ms": t.e2e * 1000.0,
        "output_tokens": t.output_tokens,
    }


async def bench_streams(config: StreamConfig, on_done: OnDone | None = None) -> StreamResult:
    """Run `config`; `on_done` hears of each request as it ends.

    Raises:
        BenchError: the tokenizer cannot be read, or nothing answers at the URL.
    """
    tokenizer = load_tokenizer(config.tokenizer) if config.tokenizer else None
    prompts = make_prompts(config.max_requests, config.prompt_length, tokenizer, config.seed,
                           config.shared_prefix)  # fmt: skip
    level = int(config.load.level) if config.load.mode == "closed" else config.max_outstanding
    client = StreamClient(
        config.url, config.model, config.api, config.max_tokens, config.timeout_s, level,
        ignore_eos=config.ignore_eos,
    )  # fmt: skip
    timings: list[Timing] = []
    try:
        await client.check()
        start = time.monotonic()
        if config.load.mode == "closed":
            await _closed(client, config, prompts.texts, start, timings, on_done)
        else:
            await _open(client, config, prompts.texts, start, timings, on_done)
    finally:
        await client.close()
    # Until the last request ended; the ends of failed ones count too, they held the server.
    seconds = max((t.sent + t.e2e for t in timings), default=0.0) or 1e-9
    summary = summarize(timings, seconds, config.objectives)
    return StreamResult(config, prompts, timings, summary, client.tally)


def _record(timings: list[Timing], timing: Timing, start: float, on_done: OnDone | None) -> None:
    timings.append(timing)
    if on_done is not None:
        on_done(timing, time.monotonic() - start)


async def _closed(
    client: StreamClient,
    config: StreamConfig,
    texts: list[str],
    start: float,
    timings: list[Timing],
    on_done: OnDone | None,
) -> None:
    """`load.level` workers, each sending its next request when the last one's stream ends,
    until max_requests are sent or duration_s has passed."""
    sent = iter(range(config.max_requests))

    async def worker() -> None:
        for index in sent:  # one shared iterator: each index goes to one worker
            now = time.monotonic() - start
            if now >= config.duration_s:
                return
            timing = await client.send(texts[index % len(texts)], start, now)
            _record(timings, timing, start, on_done)

    await asyncio.gather(*(worker() for _ in range(int(config.load.level))))


async def _open(
    client: StreamClient,
    config: StreamConfig,
    texts: list[str],
    start: float,
    timings: list[Timing],
    on_done: OnDone | None,
) -> None:
    """Send on schedule whatever the server does; past max_outstanding streaming, a send is
    not made and counts as "dropped"."""
    outstanding: set[asyncio.Task[None]] = set()

    async def one(prompt: str, scheduled: float) -> None:
        _record(timings, await client.send(prompt, start, scheduled), start, on_done)

    offsets = arrivals(config.load.level, config.load.arrival, config.seed)
    for index, offset in zip(range(config.max_requests), offsets, strict=False):
        if offset >= config.duration_s:
            break
        await sleep_until(start + offset)
        if len(outstanding) >= config.max_outstanding:
            late = time.monotonic() - start - offset
            client.tally.add_failure("dropped", lambda: f"{len(outstanding)} still streaming")
            _record(timings, Timing(offset, "dropped", late), start, on_done)
            continue
        task = asyncio.create_task(one(texts[index % len(texts)], offset))
        outstanding.add(task)
        task.add_done_callback(outstanding.discard)
    await asyncio.gather(*outstanding)  # each bounded by the client's timeout
