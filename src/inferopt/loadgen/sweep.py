"""A whole benchmark: connect, read the model's inputs, prepare data, then run load levels
in order until the list ends, the SLO is broken, or the server saturates.

    result = asyncio.run(bench(Target("127.0.0.1:8000", "digits"), loads, RunConfig()))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from inferopt.loadgen.client import Client, Target, make_client
from inferopt.loadgen.inputs import (
    BenchError,
    TensorMeta,
    Tensors,
    corpus_pool,
    is_text_model,
    npz_pool,
    random_pool,
)
from inferopt.loadgen.metrics import Snapshot, scrape
from inferopt.loadgen.run import Load, OnWindow, Point, RunConfig, Scrape, run_point

SATURATION_GAIN = 0.05  # a level must add this much throughput over the last, else: saturated


@dataclass(frozen=True)
class DataSource:
    npz: Path | None = None  # else random from metadata, or the corpus for text models
    seq_len: int = 16  # for random data: the length of variable non-batch axes
    corpus: bool = True  # text models: real sentences rather than random ids

    def __post_init__(self) -> None:
        if self.seq_len < 1:
            raise ValueError(f"the sequence length must be >= 1, got {self.seq_len}")


@dataclass
class BenchResult:
    target: Target
    config: RunConfig
    data: str  # where the inputs came from, in words
    points: list[Point]
    stopped: str  # why the sweep ended


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
        pool, origin = _pool(metas, data or DataSource())
        client.prepare(pool)
        async with httpx.AsyncClient() as http:
            url = metrics_url or _default_metrics_url(target)

            async def snapshot() -> Snapshot | None:
                return await scrape(http, url, target.model) if url else None

            points, stopped = await _sweep(client, loads, config, snapshot, on_window)
    finally:
        await client.close()
    return BenchResult(target, config, origin, points, stopped)


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


def _pool(metas: list[TensorMeta], data: DataSource) -> tuple[list[Tensors], str]:
    if not metas:
        raise BenchError("the model's metadata lists no inputs")
    if data.npz is not None:
        return npz_pool(data.npz, metas), f"file {data.npz}"
    if data.corpus and is_text_model(metas):
        pool = corpus_pool(metas)
        lengths = [s["input_ids"].shape[-1] for s in pool]
        return pool, f"zoo corpus: {len(pool)} sentences, {min(lengths)}-{max(lengths)} tokens"
    shapes = ", ".join(f"{m.name} {m.datatype}{list(m.shape)}" for m in metas)
    return random_pool(metas, data.seq_len), f"random from metadata ({shapes})"


def _default_metrics_url(target: Target) -> str | None:
    """Our server's /metrics shares the HTTP port; for gRPC the HTTP port is not known."""
    return f"http://{target.address}/metrics" if target.protocol == "http" else None
