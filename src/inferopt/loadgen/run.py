"""Driving load and measuring it: closed loop (N workers, each sending its next request when
the last is answered) or open loop (a schedule of sends; latency counts from the scheduled
time), in measurement windows repeated until the last few agree.

    point = await run_point(client, Load("open", 100.0), RunConfig(slo_ms=50))

Every loop is bounded: the scheduler by `max_duration_s`, outstanding requests by
`max_outstanding`, and each request by the client's timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from inferopt.loadgen.client import Client
from inferopt.loadgen.metrics import ServerTimes, Snapshot, diff
from inferopt.loadgen.schedule import ARRIVALS, Arrival, arrivals
from inferopt.loadgen.stats import Sample, Summary, summarize, windows_agree

Mode = Literal["closed", "open"]


@dataclass(frozen=True)
class Load:
    mode: Mode
    level: float  # closed: concurrency (requests outstanding); open: requests per second
    arrival: Arrival = "constant"  # open loop only

    def __post_init__(self) -> None:
        if self.mode not in ("closed", "open"):
            raise ValueError(f"mode must be closed or open, got {self.mode!r}")
        if not self.level > 0:
            what = "concurrency" if self.mode == "closed" else "rate"
            raise ValueError(f"the {what} must be > 0, got {self.level:g}")
        if self.mode == "closed" and self.level != int(self.level):
            raise ValueError(f"the concurrency must be a whole number, got {self.level:g}")
        if self.arrival not in ARRIVALS:
            raise ValueError(f"arrival must be one of {', '.join(ARRIVALS)}, got {self.arrival!r}")

    @property
    def label(self) -> str:
        return f"concurrency {self.level:g}" if self.mode == "closed" else f"{self.level:g}/s"


@dataclass(frozen=True)
class RunConfig:
    window_s: float = 2.0
    warmup_s: float = 2.0  # excluded from every statistic
    max_duration_s: float = 30.0  # per load level, warm-up included
    stable_windows: int = 3  # the last this many windows must agree ...
    tolerance: float = 0.10  # ... within this fraction, on throughput and p99
    max_outstanding: int = 1024  # open loop: more are dropped (counted as "dropped")
    slo_ms: float | None = None  # for goodput, and to stop a sweep
    seed: int = 0  # Poisson arrivals

    def __post_init__(self) -> None:
        for name in ("window_s", "max_duration_s", "tolerance"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.warmup_s < 0:
            raise ValueError(f"warmup_s must be >= 0, got {self.warmup_s}")
        if self.max_duration_s < self.warmup_s + self.window_s:
            raise ValueError(
                f"max_duration_s ({self.max_duration_s:g}) must leave room for the warm-up and "
                f"one window ({self.warmup_s + self.window_s:g} s)"
            )
        if self.stable_windows < 1 or self.max_outstanding < 1:
            raise ValueError("stable_windows and max_outstanding must be >= 1")
        if self.slo_ms is not None and not self.slo_ms > 0:
            raise ValueError(f"the SLO must be > 0 ms, got {self.slo_ms}")


@dataclass
class Point:
    """One load level's result."""

    load: Load
    summary: Summary  # over the measured windows
    windows: list[Summary]  # every window after warm-up, in order
    stable: bool  # the last windows agreed (else: every window is measured)
    generator_cpu: float  # this process's CPU seconds per wall second (1.0 = one core)
    server: ServerTimes | None = None
    samples: list[Sample] = field(default_factory=list, repr=False)  # the measured ones


Scrape = Callable[[], Awaitable[Snapshot | None]]
OnWindow = Callable[[Load, float, Summary], None]  # load, seconds elapsed, window


async def run_point(
    client: Client,
    load: Load,
    config: RunConfig,
    scrape: Scrape | None = None,
    on_window: OnWindow | None = None,
) -> Point:
    start = time.monotonic()
    samples: list[Sample] = []
    if load.mode == "closed":
        driver = asyncio.create_task(_closed(client, int(load.level), samples, start))
    else:
        driver = asyncio.create_task(_open(client, load, config, samples, start))
    try:
        await sleep_until(start + config.warmup_s)
        before = await scrape() if scrape else None
        cpu_start, wall_start = time.process_time(), time.monotonic()
        watch = await _watch(samples, start, load, config, on_window)
        cpu = (time.process_time() - cpu_start) / (time.monotonic() - wall_start)
        after = await scrape() if scrape else None
    finally:
        driver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await driver
    windows, bounds, stable = watch
    first = bounds[-config.stable_windows - 1] if stable else bounds[0]
    measured = samples[first : bounds[-1]]
    count = config.stable_windows if stable else len(windows)
    seconds = sum(w.seconds for w in windows[-count:])
    summary = summarize(measured, seconds, config.slo_ms)
    return Point(load, summary, windows, stable, cpu, diff(before, after), measured)


async def _watch(
    samples: list[Sample],
    start: float,
    load: Load,
    config: RunConfig,
    on_window: OnWindow | None,
) -> tuple[list[Summary], list[int], bool]:
    """Cut the samples into windows by when they completed (they are appended on completion),
    until the last windows agree or time is up. Returns windows, their start indices plus the
    end, and whether they agreed."""
    bounds = [len(samples)]
    windows: list[Summary] = []
    window_start = time.monotonic()
    while True:
        end = min(window_start + config.window_s, start + config.max_duration_s)
        await sleep_until(end)
        now = time.monotonic()
        bounds.append(len(samples))
        window = summarize(samples[bounds[-2] : bounds[-1]], now - window_start, config.slo_ms)
        windows.append(window)
        window_start = now
        if on_window:
            on_window(load, now - start, window)
        if windows_agree(windows, config.stable_windows, config.tolerance):
            return windows, bounds, True
        if now - start >= config.max_duration_s - 1e-3:
            return windows, bounds, False


async def sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def _closed(client: Client, workers: int, samples: list[Sample], start: float) -> None:
    """`workers` loops, each with one request outstanding; runs until cancelled."""

    async def worker() -> None:
        while True:
            sent = time.monotonic() - start
            outcome = await client.infer()
            samples.append(Sample(sent, time.monotonic() - start - sent, outcome))

    await asyncio.gather(*(worker() for _ in range(workers)))


async def _open(
    client: Client, load: Load, config: RunConfig, samples: list[Sample], start: float
) -> None:
    """Send on schedule whatever the server does; a request's latency counts from its
    scheduled time, so time it spent waiting for the generator or the server is included."""
    outstanding: set[asyncio.Task[None]] = set()

    async def one(scheduled: float) -> None:
        outcome = await client.infer()
        samples.append(Sample(scheduled, time.monotonic() - start - scheduled, outcome))

    try:
        for offset in arrivals(load.level, load.arrival, config.seed):
            if offset > config.max_duration_s:  # the watcher stops us first; this bounds it
                break
            await sleep_until(start + offset)
            if len(outstanding) >= config.max_outstanding:
                samples.append(Sample(offset, time.monotonic() - start - offset, "dropped"))
                continue
            task = asyncio.create_task(one(offset))
            outstanding.add(task)
            task.add_done_callback(outstanding.discard)
        await asyncio.sleep(config.max_duration_s)  # until cancelled
    finally:
        for task in list(outstanding):
            task.cancel()
        await asyncio.gather(*outstanding, return_exceptions=True)
