"""The generator against the real server on loopback: protocols, server-side metrics, and
statistics checked against a server whose latency we chose (a runner that sleeps)."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable
from pathlib import Path

import pytest

from inferopt.iospec import IOSpec
from inferopt.loadgen.client import Target, make_client
from inferopt.loadgen.inputs import BenchError
from inferopt.loadgen.run import Load, Point, RunConfig, run_point
from inferopt.loadgen.sweep import BenchResult, bench
from inferopt.serve import BackgroundServer

SHORT = RunConfig(window_s=0.5, warmup_s=0.3, max_duration_s=2.5, tolerance=0.2)


def measure(server: BackgroundServer, load: Load, config: RunConfig = SHORT) -> Point:
    result = asyncio.run(bench(Target(server.http_url, "double"), [load], config))
    return result.points[0]


@pytest.mark.parametrize(("protocol", "binary"), [("http", False), ("http", True), ("grpc", False)])
def test_every_protocol_gets_answers_and_server_metrics(
    server: BackgroundServer, protocol: str, binary: bool
) -> None:
    url = server.grpc_url if protocol == "grpc" else server.http_url
    target = Target(url, "double", protocol, binary)  # type: ignore[arg-type]
    metrics = f"http://{server.http_url}/metrics"
    config = RunConfig(window_s=0.4, warmup_s=0.2, max_duration_s=1.5)
    result = asyncio.run(bench(target, [Load("closed", 4)], config, metrics_url=metrics))
    s = result.points[0].summary
    assert s.outcomes["ok"] > 20 and s.errors == 0
    assert s.percentiles_ms["p50"] <= s.percentiles_ms["p99"] <= s.percentiles_ms["p99.9"]
    times = result.points[0].server
    # The server counts a request when its batch starts, the generator when it is answered:
    # up to 4 (the concurrency) measured answers may have started before the first scrape.
    assert times is not None and times.requests_queued >= s.outcomes["ok"] - 4
    assert 1.0 <= times.batch_size <= 4.0  # never more rows than requests outstanding
    # Our server publishes its spec over HTTP only (Triton's gRPC message has no field for it)
    spec_origin = "the server's input spec (x: float32[batch, 4])"
    expected = "random from metadata (x FP32[-1, 4])" if protocol == "grpc" else spec_origin
    assert result.data.startswith(expected)


def test_closed_loop_at_concurrency_1_sees_the_servers_own_latency(
    sleepy: Callable[..., BackgroundServer], double_repo: Path, sleep_s: float
) -> None:
    point = measure(sleepy(double_repo), Load("closed", 1))
    s = point.summary
    capacity = 1 / sleep_s
    # Generous bounds: the generator's round trip adds to the sleep, and other work may
    # share the two cores.
    assert 0.5 * capacity <= s.throughput <= 1.02 * capacity
    assert sleep_s * 1000 <= s.percentiles_ms["p50"] <= sleep_s * 1000 * 1.8
    assert s.errors == 0
    assert 0 < point.generator_cpu < 2.5  # CPU seconds per wall second, 2 cores at most-ish


def test_open_loop_above_capacity_counts_queueing_from_the_scheduled_time(
    sleepy: Callable[..., BackgroundServer], double_repo: Path, sleep_s: float
) -> None:
    server = sleepy(double_repo)
    # Twice the capacity for 2 s, no warm-up: a backlog grows by ~50 requests per second.
    config = RunConfig(window_s=0.5, warmup_s=0.0, max_duration_s=2.0, tolerance=0.01)
    point = measure(server, Load("open", 2 / sleep_s), config)
    ok = sorted((x for x in point.samples if x.outcome == "ok"), key=lambda x: x.sent)
    assert len(ok) > 40
    # Request i is sent at i * sleep / 2 and answered at (i + 1) * sleep: its latency grows
    # by half a sleep per request.
    early = statistics.median(x.latency for x in ok[:5])
    late = statistics.median(x.latency for x in ok[-10:])
    assert early < 5 * sleep_s
    assert late > 10 * sleep_s  # waited in the queue, and that wait is counted
    assert point.windows[-1].p99_ms > 3 * point.windows[0].p99_ms
    assert point.summary.throughput <= 1.1 / sleep_s  # the server still answers at capacity

    # A closed loop on the same server never sees the queue: it waits for each answer.
    closed = measure(server, Load("closed", 1), SHORT)  # warm-up: the open run's backlog
    assert closed.summary.percentiles_ms["p99"] < 5 * sleep_s * 1000


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_refusals_are_counted_by_status(
    sleepy: Callable[..., BackgroundServer], double_repo: Path, sleep_s: float, protocol: str
) -> None:
    server = sleepy(double_repo, max_queue_size=2)
    url = server.grpc_url if protocol == "grpc" else server.http_url
    config = RunConfig(window_s=0.5, warmup_s=0.2, max_duration_s=1.5)
    target = Target(url, "double", protocol)  # type: ignore[arg-type]
    load = Load("open", 4 / sleep_s, "poisson")
    s = asyncio.run(bench(target, [load], config)).points[0].summary
    assert s.outcomes["429"] > s.outcomes["ok"] > 10  # most of 4x capacity refused
    assert s.outcomes["other"] == s.outcomes["timeout"] == 0
    assert s.goodput <= s.throughput <= 1.1 / sleep_s


def test_overload_is_refused_quickly_and_what_is_admitted_meets_the_target(
    sleepy: Callable[..., BackgroundServer], double_repo: Path, sleep_s: float
) -> None:
    """4x capacity, open loop, with max_queue_wait_ms: the server answers at capacity within
    about its target, and refuses the rest at once (without it, the queue would grow to
    max_queue_size and every answer would wait seconds)."""
    target_ms = 3 * sleep_s * 1000  # room for about three requests pending
    server = sleepy(double_repo, max_queue_wait_ms=target_ms)
    config = RunConfig(window_s=0.5, warmup_s=0.5, max_duration_s=2.5, slo_ms=4 * target_ms)
    point = measure(server, Load("open", 4 / sleep_s, "poisson"), config)
    s = point.summary
    assert s.outcomes["429"] > s.outcomes["ok"]  # most of 4x capacity refused
    assert s.throughput >= 0.6 / sleep_s  # yet the server keeps answering near capacity
    assert s.goodput >= 0.9 * s.throughput  # and in time
    assert s.outcomes["other"] == s.outcomes["timeout"] == s.outcomes["dropped"] == 0
    refused = sorted(x.latency for x in point.samples if x.outcome == "429")
    assert refused[len(refused) // 2] < sleep_s  # refused before a single run could finish


def test_the_cap_on_outstanding_requests_drops_the_excess(
    sleepy: Callable[..., BackgroundServer], double_repo: Path, sleep_s: float
) -> None:
    server = sleepy(double_repo)
    config = RunConfig(window_s=0.5, warmup_s=0.0, max_duration_s=1.0, max_outstanding=3)
    s = measure(server, Load("open", 4 / sleep_s), config).summary
    assert s.outcomes["dropped"] > s.outcomes["ok"] > 10


def test_a_sweep_stops_when_the_server_saturates(
    sleepy: Callable[..., BackgroundServer], double_repo: Path
) -> None:
    server = sleepy(double_repo)
    config = RunConfig(window_s=0.4, warmup_s=0.2, max_duration_s=1.5)
    loads = [Load("closed", n) for n in (1, 2, 4, 8, 16)]
    result: BenchResult = asyncio.run(bench(Target(server.http_url, "double"), loads, config))
    # One run at a time: past concurrency 2 (which hides the generator's round trip),
    # more requests outstanding only queue.
    assert 2 <= len(result.points) <= 3
    assert result.stopped.startswith("saturated at concurrency")


def test_a_sweep_stops_when_the_slo_breaks(
    sleepy: Callable[..., BackgroundServer], double_repo: Path, sleep_s: float
) -> None:
    server = sleepy(double_repo)
    config = RunConfig(window_s=0.4, warmup_s=0.2, max_duration_s=1.2, slo_ms=sleep_s * 500)
    loads = [Load("closed", 1), Load("closed", 2)]
    result = asyncio.run(bench(Target(server.http_url, "double"), loads, config))
    assert len(result.points) == 1 and result.stopped.startswith("SLO broken")
    assert result.points[0].summary.goodput == 0  # nothing answered within half the sleep


def test_an_unknown_model_and_an_unreachable_server_are_clear_errors(
    server: BackgroundServer, closed_port: int
) -> None:
    async def metadata(target: Target) -> None:
        client = make_client(target)
        try:
            await client.metadata()
        finally:
            await client.close()

    with pytest.raises(BenchError, match="model 'nope' not found"):
        asyncio.run(metadata(Target(server.http_url, "nope")))
    with pytest.raises(BenchError, match="model 'nope' not found"):
        asyncio.run(metadata(Target(server.grpc_url, "nope", "grpc")))
    with pytest.raises(BenchError, match="cannot reach"):
        asyncio.run(metadata(Target(f"127.0.0.1:{closed_port}", "double")))
    with pytest.raises(BenchError, match="cannot reach"):
        asyncio.run(metadata(Target(f"127.0.0.1:{closed_port}", "double", "grpc")))


def test_run_point_windows_are_consistent(server: BackgroundServer) -> None:
    async def go() -> Point:
        client = make_client(Target(server.http_url, "double"))
        try:
            from inferopt.loadgen.inputs import random_pool

            client.prepare(random_pool(await client.metadata(), 16))
            return await run_point(client, Load("closed", 2), SHORT)
        finally:
            await client.close()

    point = asyncio.run(go())
    count = 3 if point.stable else len(point.windows)
    assert point.summary.requests == sum(w.requests for w in point.windows[-count:])
    assert len(point.samples) == point.summary.requests


def test_our_server_publishes_each_inputs_role_and_range_over_http(
    vocab_server: BackgroundServer,
) -> None:
    async def specs() -> list[IOSpec | None]:
        found = []
        for target in (
            Target(vocab_server.http_url, "vocab50"),
            Target(vocab_server.grpc_url, "vocab50", "grpc"),
            Target(vocab_server.http_url, "nope"),  # no config: like a server without one
        ):
            client = make_client(target)
            try:
                found.append(await client.spec())
            finally:
                await client.close()
        return found

    http, grpc, unknown = asyncio.run(specs())
    assert http is not None and grpc is None and unknown is None
    ids, mask = http.inputs
    assert (ids.role, ids.value_range, mask.role) == ("ids", (0.0, 49.0), "mask")


def test_by_default_a_model_gets_ids_from_its_own_vocabulary(
    vocab_server: BackgroundServer,
) -> None:
    config = RunConfig(window_s=0.4, warmup_s=0.2, max_duration_s=1.2)
    target = Target(vocab_server.http_url, "vocab50")
    result = asyncio.run(bench(target, [Load("closed", 2)], config))
    assert result.tally.ok == result.tally.total > 10  # every request answered
    assert result.data.startswith(
        "the server's input spec (input_ids: int64[batch, seq] (ids 0..49)"
    )
    assert not result.notes


def test_a_level_where_nothing_succeeds_ends_the_sweep_and_says_why(
    vocab_server: BackgroundServer,
) -> None:
    config = RunConfig(window_s=0.3, warmup_s=0.1, max_duration_s=0.7)
    target = Target(vocab_server.grpc_url, "vocab50", "grpc")  # no spec: ids 0..99
    result = asyncio.run(bench(target, [Load("closed", 1), Load("closed", 2)], config))
    assert result.stopped == "nothing succeeded at concurrency 1" and len(result.points) == 1
    assert result.tally.ok == 0 and result.tally.counts["INVALID_ARGUMENT"] == result.tally.total
    assert "out of data bounds" in result.tally.messages["INVALID_ARGUMENT"]
    assert result.notes[0].startswith("integer inputs are random 0..99 (input_ids)")
