"""Issue: load generator and serving benchmark (first part; MLServer not yet included).

On `digits-cnn`, side by side in one run: inferopt's server with batching, with batching off
(alternated, twice each), and the in-process ceiling (the same ONNX Runtime model called
directly at its best batch size); then an open-loop overload at 3x the batching server's
capacity for 30 s: goodput, 429s and how fast they come, server memory at start and end.
The generator shares the 2 cores with the server; its own CPU use is reported per run.

    .venv/bin/python benchmarks/serving.py && .venv/bin/python benchmarks/render.py
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).parent))
from common import save, table

from inferopt.loadgen.client import Target
from inferopt.loadgen.run import Load, Point, RunConfig
from inferopt.loadgen.sweep import bench
from inferopt.sources import load

CONCURRENCY = 16
CLOSED = RunConfig(window_s=2.0, warmup_s=2.0, max_duration_s=16.0)
OVERLOAD = RunConfig(window_s=3.0, warmup_s=2.0, max_duration_s=32.0, stable_windows=99, slo_ms=100)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    def __init__(self, repo: Path, batching: bool) -> None:
        self.port = free_port()
        extra = [] if batching else ["--max-batch-size", "0"]
        command = [sys.executable, "-m", "inferopt.serve", str(repo), "--http-port",
                   str(self.port), "--no-grpc", *extra]  # fmt: skip
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                url = f"http://127.0.0.1:{self.port}/v2/health/ready"
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("server did not become ready")

    def rss_mb(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def run(server: ServerProcess, load_level: Load, config: RunConfig) -> Point:
    target = Target(f"127.0.0.1:{server.port}", "digits", "http", binary=True)
    result = asyncio.run(bench(target, [load_level], config))
    return result.points[0]


def in_process_ceiling(path: Path, seconds: float = 5.0) -> tuple[float, int]:
    """Items per second of the model called directly, at its best batch size."""
    model = load(path)
    session = model.session()
    best = (0.0, 1)
    for batch in (1, 8, 32, 64):
        feed = model.io.sample_inputs(batch=batch)
        session.run(None, feed)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 4:
            session.run(None, feed)
            count += batch
        best = max(best, (count / (time.perf_counter() - start), batch))
    return best


def closed_rows(repo: Path) -> tuple[list[list[Any]], float]:
    rows, capacity = [], 0.0
    for repeat in range(2):
        for batching in (True, False):
            server = ServerProcess(repo, batching)
            try:
                point = run(server, Load("closed", CONCURRENCY), CLOSED)
            finally:
                server.stop()
            s = point.summary
            times = point.server
            batch = f"{times.batch_size:.1f}" if times and times.batch_size else ""
            label = "batching on" if batching else "batching off"
            rows.append([f"{label} (run {repeat + 1})", round(s.throughput, 1),
                         round(s.percentiles_ms["p50"], 2), round(s.p99_ms, 2), batch,
                         f"{point.generator_cpu:.0%}", s.errors])  # fmt: skip
            if batching:
                capacity = max(capacity, s.throughput)
    return rows, capacity


def overload(repo: Path, capacity: float) -> list[list[Any]]:
    server = ServerProcess(repo, batching=True)
    try:
        rss_start = server.rss_mb()
        point = run(server, Load("open", round(3 * capacity), "poisson"), OVERLOAD)
        rss_end = server.rss_mb()
    finally:
        server.stop()
    s = point.summary
    refused = [x.latency * 1e3 for x in point.samples if x.outcome == "429"]
    other_errors = {k: v for k, v in s.outcomes.items() if k not in ("ok", "429") and v}
    return [[
        round(3 * capacity), round(s.throughput, 1), round(s.goodput, 1),
        f"{s.goodput / capacity:.0%}", s.outcomes.get("429", 0),
        round(float(np.median(refused)), 2) if refused else "",
        str(other_errors or "none"), f"{rss_start:.0f} -> {rss_end:.0f}",
        f"{point.generator_cpu:.0%}",
    ]]  # fmt: skip


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        model_path = repo / "digits" / "1" / "model.onnx"
        load("digits-cnn").save(model_path)
        ceiling, best_batch = in_process_ceiling(model_path)
        rows, capacity = closed_rows(repo)
        rows.append([f"in-process ceiling (batch {best_batch})", round(ceiling, 1), "", "", "",
                     "", ""])  # fmt: skip
        over = overload(repo, capacity)
    tables = [
        table(
            f"digits-cnn over HTTP (binary), closed loop, {CONCURRENCY} outstanding requests",
            ["server", "req/s", "p50 ms", "p99 ms", "avg batch", "generator CPU", "errors"],
            rows,
            f"Batching server's best: {capacity / ceiling:.0%} of the in-process ceiling. "
            "Generator and server share the 2 cores; generator CPU is its share of one core.",
        ),
        table(
            "overload: open loop (Poisson) at 3x the batching server's capacity, 30 s, SLO 100 ms",
            [
                "offered req/s",
                "answered req/s",
                "goodput req/s",
                "goodput / capacity",
                "429s",
                "median 429 time ms",
                "other errors",
                "server RSS MiB",
                "generator CPU",
            ],
            over,
        ),
    ]
    path = save("serving", {"command": "python benchmarks/serving.py", "tables": tables})
    print(path.read_text())


if __name__ == "__main__":
    main()
