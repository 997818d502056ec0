"""A whole benchmark: connect, read the model's inputs (and its input spec, where the server
publishes one), prepare data, then run load levels in order until the list ends, the SLO is
broken, nothing succeeds, or the server saturates.

    result = asyncio.run(bench(Target("127.0.0.1:8000", "digits"), loads, RunConfig()))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from inferopt.loadgen.client import Client, Target, make_client
from inferopt.loadgen.inputs import DataSource, choose
from inferopt.loadgen.metrics import Snapshot, scrape
from inferopt.loadgen.run import Load, OnWindow, Point, RunConfig, Scrape, run_point
from inferopt.loadgen.stats import Tally

SATURATION_GAIN = 0.05  # a level must add this much throughput over the last, else: saturated


@dataclass
class BenchResult:
    target: Target
    config: RunConfig
    data: str  # where the inputs came from, in words
    points: list[Point]
    stopped: str  # why the sweep ended
    tally: Tally = field(default_factory=Tally)  # every answer by status, warm-up included
    notes: list[str] = field(default_factory=list)  # about the inputs, for the user


async def bench(
    target: Target,
    loads: Sequence[Load],
    config: RunConfig,
    data: DataSource | None = None,
    metrics_url: str | None = None,
    on_window: OnWindow | None = None,
) -> BenchResult:
    if not loads:
        raise ValueError("give at least one load level")
    client = make_client(target)
    try:
        metas = await client.metadata()
        inputs = choose(metas, await client.spec(), data or DataSource())
        client.prepare(inputs.pool)
        async with httpx.AsyncClient() as http:
            url = metrics_url or _default_metrics_url(target)

            async def snapshot() -> Snapshot | None:
                return await scrape(http, url, target.model) if url else None

            points, stopped = await _sweep(client, loads, config, snapshot, on_window)
    finally:
        await client.close()
    return BenchResult(target, config, inputs.origin, points, stopped, client.tally, inputs.notes)


async def _sweep(
    client: Client,
    loads: Sequence[Load],
    config: RunConfig,
    snapshot: Scrape,
    on_window: OnWindow | None,
) -> tuple[list[Point], str]:
    points: list[Point] = []
    for load in loads:
        points.append(await run_point(client, load, config, snapshot, on_window))
        reason = stop_reason(points, config.slo_ms)
        if reason:
            return points, reason
    return points, "every load level ran"


def stop_reason(points: Sequence[Point], slo_ms: float | None) -> str | None:
    """Why a sweep should not go on after the last point, or None."""
    last = points[-1].summary
    if last.requests and not last.outcomes["ok"]:  # more load will not make them succeed
        return f"nothing succeeded at {points[-1].load.label}"
    if slo_ms is not None and not last.p99_ms <= slo_ms:  # NaN (nothing answered) breaks it
        return f"SLO broken at {points[-1].load.label}: p99 {last.p99_ms:.1f} > {slo_ms:g} ms"
    if len(points) >= 2:
        best = max(p.summary.throughput for p in points[:-1])
        if not last.throughput > best * (1 + SATURATION_GAIN):
            return (
                f"saturated at {points[-1].load.label}: {last.throughput:.1f}/s is not "
                f"{SATURATION_GAIN:.0%} above the best before ({best:.1f}/s)"
            )
    return None


def _default_metrics_url(target: Target) -> str | None:
    """Our server's /metrics shares the HTTP port; for gRPC the HTTP port is not known."""
    return f"http://{target.address}/metrics" if target.protocol == "http" else None
