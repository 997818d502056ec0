"""What serving on Ray Serve costs against `inferopt serve` alone, on digits-cnn: Ray's start
and ready time, its idle memory, and the per-request overhead (latency at concurrency 1,
throughput at concurrency 8).

Both servers run at once, on different ports, with the same model settings (one ONNX Runtime
thread, the Ray replica's default under its 1 CPU; batching as shipped):
- "alone": `inferopt serve REPO --http-port P --grpc-port Q --host 127.0.0.1` in a subprocess;
- "Ray": a local Ray instance started here (`ray.init(address="local", num_cpus=2,
  include_dashboard=False)`, its own temp dir, so it never joins another Ray instance on the
  machine) with the app deployed by `rayserve.deploy`, as `inferopt serve --ray` does it (the
  proxy's retry middleware loaded through RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH), first
  with 1 replica, then redeployed with 2.
Measurements alternate between the two within each round (the order rotating), several
rounds per phase (alone vs 1 replica, then alone vs 2 replicas); figures are medians over
rounds, and Ray's added latency and throughput ratio are medians of per-round differences.

Load: this process, closed loops of HTTP/JSON requests (httpx, one persistent client per
thread), and of gRPC requests (tritonclient) at concurrency 1. The servers and this process
share the machine's cores, as Ray's proxy and replicas share a node with whatever else runs.

Memory: resident set (RSS) and proportional set (PSS: shared pages split between the
processes sharing them, so the sum does not count shared libraries twice) of every process
of the Ray instance, idle after a first request: the descendants of this process (ray.init
starts gcs_server, raylet and the agents as its children, and the raylet starts the workers:
Serve's controller, proxy, the replicas, idle workers), less the `inferopt serve` subprocess.
This driver process is not counted (it is also the load generator); its own growth from
starting Ray is recorded apart.

    flock /tmp/inferopt-bench.lock nice -n 5 .venv/bin/python benchmarks/scaleout.py
    .venv/bin/python benchmarks/render.py
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import psutil

sys.path.insert(0, str(Path(__file__).parent))
import ray
import servers
from common import save, table
from ray import serve

from inferopt.serve import rayserve
from inferopt.serve.config import ModelConfig, ServerConfig
from inferopt.serve.rayconfig import RaySettings
from inferopt.serve.rayproxy import CALLBACK, CALLBACK_ENV, REPLICA_HEADER
from inferopt.sources import load

MODEL = "digits-cnn"
ROUNDS = 3  # per phase (alone vs 1 replica, alone vs 2 replicas)
LATENCY_REQUESTS = 300  # concurrency 1, HTTP
GRPC_REQUESTS = 200  # concurrency 1, gRPC
WARMUP_REQUESTS = 20
CLIENTS = 8
DURATION_S = 8.0  # each throughput window
IDLE_S = 5.0  # settle before reading idle memory
COMMAND = "flock /tmp/inferopt-bench.lock nice -n 5 .venv/bin/python benchmarks/scaleout.py"
MODEL_CONFIG = ModelConfig(intra_op_threads=1)
RAY_TEMP = "/tmp/inferopt-scaleout-ray"  # short: Ray's socket paths live under it


def body() -> bytes:
    x = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
    tensor = {
        "name": "image",
        "shape": [1, 1, 8, 8],
        "datatype": "FP32",
        "data": x.ravel().tolist(),
    }
    return orjson.dumps({"inputs": [tensor]})


BODY = body()


class Server:
    """One candidate: where it answers, and the processes whose CPU it spends."""

    def __init__(self, name: str, http: str, grpc: str, procs: Callable[[], list[Any]]) -> None:
        self.name, self.http, self.grpc, self.procs = name, http, grpc, procs

    @property
    def url(self) -> str:
        return f"http://{self.http}/v2/models/{MODEL}/infer"


def infer_once(server: Server) -> dict[str, Any]:
    answer = httpx.post(server.url, content=BODY, timeout=60)
    answer.raise_for_status()
    parsed: dict[str, Any] = answer.json()
    return parsed


def latency(server: Server) -> dict[str, float]:
    """Closed loop, one request at a time, over HTTP/JSON: percentiles in ms."""
    times = []
    with httpx.Client(timeout=30) as client:
        for i in range(WARMUP_REQUESTS + LATENCY_REQUESTS):
            start = time.perf_counter()
            client.post(server.url, content=BODY).raise_for_status()
            if i >= WARMUP_REQUESTS:
                times.append(time.perf_counter() - start)
    return percentiles(times)


def grpc_latency(server: Server) -> dict[str, float]:
    import tritonclient.grpc as tgrpc  # type: ignore[import-untyped]

    x = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
    inputs = [tgrpc.InferInput("image", list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x)
    client = tgrpc.InferenceServerClient(server.grpc)
    times = []
    try:
        for i in range(WARMUP_REQUESTS + GRPC_REQUESTS):
            start = time.perf_counter()
            client.infer(MODEL, inputs)
            if i >= WARMUP_REQUESTS:
                times.append(time.perf_counter() - start)
    finally:
        client.close()
    return percentiles(times)


def percentiles(seconds: list[float]) -> dict[str, float]:
    p50, p90, p99 = np.percentile(np.array(seconds) * 1e3, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99)}


def cpu_snapshot(procs: list[Any]) -> dict[tuple[int, float], tuple[str, float]]:
    """CPU seconds (user + system) of each process by (pid, start time), with its role."""
    out = {}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            out[(p.pid, p.create_time())] = (label(p), t.user + t.system)
    return out


def throughput(server: Server) -> dict[str, Any]:
    """Closed loop, CLIENTS threads each with its own persistent client, for DURATION_S:
    answers per second, latency, the servers' CPU per request and this process's CPU."""
    barrier = threading.Barrier(CLIENTS + 1)
    stop = threading.Event()
    lock = threading.Lock()
    times: list[float] = []
    outcomes: Counter[str] = Counter()
    replicas: set[str] = set()

    def run() -> None:
        mine, seen, counts = [], set(), Counter[str]()
        with httpx.Client(timeout=30) as client:
            for _ in range(5):
                client.post(server.url, content=BODY)
            barrier.wait()
            while not stop.is_set():
                start = time.perf_counter()
                try:
                    answer = client.post(server.url, content=BODY)
                    counts[str(answer.status_code)] += 1
                    seen.add(answer.headers.get(REPLICA_HEADER.decode(), ""))
                    if answer.status_code == 200:
                        mine.append(time.perf_counter() - start)
                except httpx.HTTPError as exc:
                    counts[type(exc).__name__] += 1
        with lock:
            times.extend(mine)
            outcomes.update(counts)
            replicas.update(seen)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    barrier.wait()
    procs = server.procs()
    cpu, own = cpu_snapshot(procs), time.process_time()
    start = time.perf_counter()
    time.sleep(DURATION_S)
    stop.set()
    wall = time.perf_counter() - start
    after, own = cpu_snapshot(procs), time.process_time() - own
    for thread in threads:
        thread.join(timeout=60)
    answered = len(times)
    by_role: dict[str, float] = {}
    for key, (role, seconds) in after.items():
        if key in cpu:
            spent = (seconds - cpu[key][1]) / max(answered, 1) * 1e3
            by_role[role] = by_role.get(role, 0.0) + spent
    used = sum(by_role.values())
    return {
        "req_s": answered / wall,
        "p50": float(np.percentile(np.array(times) * 1e3, 50)) if times else float("nan"),
        "server_cpu_ms": used if answered else float("nan"),
        "generator_cpu": own / wall,
        "errors": sum(n for k, n in outcomes.items() if k != "200"),
        "replicas_seen": len(replicas - {""}),
        "cpu_ms_by_role": by_role,
    }


def measure(server: Server) -> dict[str, Any]:
    print(f"  {server.name}", flush=True)
    return {"http": latency(server), "grpc": grpc_latency(server), "c8": throughput(server)}


def rounds(candidates: list[Server]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {s.name: [] for s in candidates}
    for r in range(ROUNDS):
        print(f"round {r + 1}", flush=True)
        order = candidates[r % len(candidates) :] + candidates[: r % len(candidates)]
        for server in order:
            out[server.name].append(measure(server))
    return out


def tree(root: psutil.Process) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return [root, *root.children(recursive=True)]
    return []


def ray_processes(exclude: int | None) -> list[psutil.Process]:
    """This process's descendants, less the subprocess `exclude` and its own children."""
    skip = {p.pid for p in tree(psutil.Process(exclude))} if exclude else set()
    return [p for p in psutil.Process().children(recursive=True) if p.pid not in skip]


def label(p: psutil.Process) -> str:
    """A process's role: Ray workers name themselves `ray::<actor class>[.<method running>]`;
    the daemons and agents by their executable or script."""
    cmd: list[str] = p.cmdline()
    if not cmd:
        return str(p.name())
    head = cmd[0].split()[0]
    if head.startswith("ray::"):
        return str(head.split(".")[0])  # less the method it runs now: ray::ProxyActor.receive_...
    if any(Path(part).name == "inferopt" for part in cmd[:2]):
        return "inferopt serve"
    for part in cmd[:3]:
        if part.endswith(".py"):
            return Path(part).name
    return Path(head).name


def memory(procs: list[psutil.Process], role: str = "") -> dict[str, dict[str, float]]:
    """RSS and PSS (MiB) and count by role (each process's own, or `role` for all)."""
    out: dict[str, dict[str, float]] = {}
    for p in procs:
        try:
            name, full = role or label(p), p.memory_full_info()
        except psutil.Error:
            continue
        entry = out.setdefault(name, {"count": 0, "rss": 0.0, "pss": 0.0})
        entry["count"] += 1
        entry["rss"] += full.rss / 2**20
        entry["pss"] += full.pss / 2**20
    return out


def total(mem: dict[str, dict[str, float]], key: str) -> float:
    return sum(v[key] for v in mem.values())


def replica_names() -> list[str]:
    actors = ray.util.list_named_actors(all_namespaces=True)
    return sorted(a["name"] for a in actors if "InferoptReplica" in a["name"])


def start_ray(metrics_port: int) -> float:
    os.environ[CALLBACK_ENV] = CALLBACK  # inherited by the Ray processes started below
    start = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        _temp_dir=RAY_TEMP,
        _node_ip_address="127.0.0.1",
        _metrics_export_port=metrics_port,
    )
    return time.perf_counter() - start


def deploy(repo: Path, config: ServerConfig, replicas: int) -> float:
    start = time.perf_counter()
    rayserve.deploy(repo, MODEL_CONFIG, config, RaySettings(replicas=replicas))
    return time.perf_counter() - start


def shutdown_ray(alone_pid: int | None) -> None:
    """Serve and Ray down; then any process of this Ray instance still alive, by pid."""
    leftover = ray_processes(alone_pid)
    with contextlib.suppress(Exception):
        serve.shutdown()  # type: ignore[no-untyped-call]
    with contextlib.suppress(Exception):
        ray.shutdown()
    time.sleep(1.0)
    for p in leftover:
        with contextlib.suppress(psutil.Error):
            if p.is_running():
                p.kill()
    shutil.rmtree(RAY_TEMP, ignore_errors=True)


def med(values: list[float]) -> float:
    return statistics.median(values)


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "p50": med([r["http"]["p50"] for r in runs]),
        "p90": med([r["http"]["p90"] for r in runs]),
        "p99": med([r["http"]["p99"] for r in runs]),
        "grpc_p50": med([r["grpc"]["p50"] for r in runs]),
        "grpc_p99": med([r["grpc"]["p99"] for r in runs]),
        "req_s": med([r["c8"]["req_s"] for r in runs]),
        "c8_p50": med([r["c8"]["p50"] for r in runs]),
        "server_cpu_ms": med([r["c8"]["server_cpu_ms"] for r in runs]),
        "generator_cpu": med([r["c8"]["generator_cpu"] for r in runs]),
        "errors": sum(r["c8"]["errors"] for r in runs),
        "replicas_seen": max(r["c8"]["replicas_seen"] for r in runs),
    }


def paired(base: list[dict[str, Any]], ray_runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Ray's cost in each round against the alone server's in the same round."""

    def diffs(kind: str, key: str) -> list[float]:
        return [r[kind][key] - b[kind][key] for b, r in zip(base, ray_runs, strict=True)]

    ratios = [r["c8"]["req_s"] / b["c8"]["req_s"] for b, r in zip(base, ray_runs, strict=True)]
    cpu = [
        r["c8"]["server_cpu_ms"] / b["c8"]["server_cpu_ms"]
        for b, r in zip(base, ray_runs, strict=True)
    ]
    return {
        "added_p50": diffs("http", "p50"),
        "added_p99": diffs("http", "p99"),
        "added_grpc_p50": diffs("grpc", "p50"),
        "throughput_ratio": ratios,
        "cpu_ratio": cpu,
    }


def cpu_by_role(runs: dict[str, list[dict[str, Any]]]) -> list[list[Any]]:
    """Rows: each process role, its CPU ms per answer at c=8 (median over rounds) under
    each server; the roles ordered by their cost."""
    figures = {
        server: {
            role: med([r["c8"]["cpu_ms_by_role"].get(role, 0.0) for r in rs])
            for role in {k for r in rs for k in r["c8"]["cpu_ms_by_role"]}
        }
        for server, rs in runs.items()
    }
    roles = sorted(
        {k for f in figures.values() for k in f},
        key=lambda k: -max(f.get(k, 0.0) for f in figures.values()),
    )
    rows = [
        [role, *(round(f[role], 3) if role in f else "" for f in figures.values())]
        for role in roles
    ]
    rows.append(["**all**", *(round(sum(f.values()), 3) for f in figures.values())])
    return rows


def spread(values: list[float], digits: int = 2) -> str:
    """Median with the range over rounds."""
    return f"{med(values):.{digits}f} [{min(values):.{digits}f}, {max(values):.{digits}f}]"


def main() -> None:
    load_before = list(os.getloadavg())
    started = time.time()
    me = psutil.Process()
    tmp = Path(tempfile.mkdtemp(prefix="scaleout-"))
    repo = tmp / "repo"
    load(MODEL).save(repo / MODEL / "1" / "model.onnx")
    ports = {
        k: servers.free_port()
        for k in ("alone_http", "alone_grpc", "ray_http", "ray_grpc", "metrics")
    }
    alone_cmd = [
        str(Path(sys.executable).parent / "inferopt"),
        "serve",
        str(repo),
        "--http-port",
        str(ports["alone_http"]),
        "--grpc-port",
        str(ports["alone_grpc"]),
        "--host",
        "127.0.0.1",
        "--intra-op-threads",
        "1",
    ]
    alone_proc: servers.Process | None = None
    ray_started = False
    try:
        t0 = time.perf_counter()
        alone_proc = servers.Process(alone_cmd, ports["alone_http"], MODEL)
        alone_pid = alone_proc.proc.pid
        alone = Server(
            "inferopt serve alone",
            f"127.0.0.1:{ports['alone_http']}",
            f"127.0.0.1:{ports['alone_grpc']}",
            lambda: tree(psutil.Process(alone_pid)),
        )
        reference = infer_once(alone)["outputs"]
        alone_ready = time.perf_counter() - t0
        time.sleep(IDLE_S)
        alone_mem = memory(tree(psutil.Process(alone_pid)), "inferopt serve")

        driver_before = me.memory_info().rss / 2**20
        ray_started = True
        ray_init = start_ray(ports["metrics"])
        config = ServerConfig(
            host="127.0.0.1", http_port=ports["ray_http"], grpc_port=ports["ray_grpc"]
        )
        ray_deploy = deploy(repo, config, 1)
        via_ray = Server(
            "Ray Serve, 1 replica",
            f"127.0.0.1:{ports['ray_http']}",
            f"127.0.0.1:{ports['ray_grpc']}",
            lambda: ray_processes(alone_pid),
        )
        t1 = time.perf_counter()
        answer = infer_once(via_ray)["outputs"]
        ray_first = time.perf_counter() - t1
        same = answer == reference
        print(
            f"ray.init {ray_init:.1f} s, deploy {ray_deploy:.1f} s, first {ray_first:.2f} s",
            flush=True,
        )
        time.sleep(IDLE_S)
        mem1 = memory(ray_processes(alone_pid))
        driver_after = me.memory_info().rss / 2**20

        phase1 = rounds([alone, via_ray])

        first_replicas = replica_names()
        ray_redeploy = deploy(repo, config, 2)
        second_replicas = replica_names()
        kept = len(set(first_replicas) & set(second_replicas))
        via_ray2 = Server("Ray Serve, 2 replicas", via_ray.http, via_ray.grpc, via_ray.procs)
        infer_once(via_ray2)
        time.sleep(IDLE_S)
        mem2 = memory(ray_processes(alone_pid))
        phase2 = rounds([alone, via_ray2])
        ray_version = ray.__version__
    finally:
        if ray_started:
            shutdown_ray(alone_proc.proc.pid if alone_proc else None)
        if alone_proc is not None:
            alone_proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = list(os.getloadavg())
    wall = time.time() - started

    s_alone1, s_ray1 = summary(phase1[alone.name]), summary(phase1[via_ray.name])
    s_alone2, s_ray2 = summary(phase2[alone.name]), summary(phase2[via_ray2.name])
    cost1 = paired(phase1[alone.name], phase1[via_ray.name])
    cost2 = paired(phase2[alone.name], phase2[via_ray2.name])

    start_rows = [
        ["inferopt serve alone: process start to first answer", round(alone_ready, 2)],
        ["Ray: ray.init (local, 2 CPUs, no dashboard)", round(ray_init, 2)],
        ["Ray: rayserve.deploy, 1 replica ready (returns)", round(ray_deploy, 2)],
        ["Ray: first inference after deploy", round(ray_first, 3)],
        ["Ray: ray.init to first answer (ready time)", round(ray_init + ray_deploy + ray_first, 2)],
        [
            "Ray: redeploy to 2 replicas (returns; first replica kept: "
            + ("yes)" if kept else "no, both new)"),
            round(ray_redeploy, 2),
        ],
    ]
    roles = sorted(set(mem1) | set(mem2), key=lambda k: -mem2.get(k, mem1.get(k, {})).get("pss", 0))
    empty = {"count": 0, "rss": 0.0, "pss": 0.0}
    mem_rows = [
        [
            role,
            int(mem1.get(role, empty)["count"]),
            round(mem1.get(role, empty)["rss"]),
            round(mem1.get(role, empty)["pss"]),
            int(mem2.get(role, empty)["count"]),
            round(mem2.get(role, empty)["rss"]),
            round(mem2.get(role, empty)["pss"]),
        ]
        for role in roles
    ]
    mem_rows.append(
        [
            "**Ray, all processes**",
            sum(int(v["count"]) for v in mem1.values()),
            round(total(mem1, "rss")),
            round(total(mem1, "pss")),
            sum(int(v["count"]) for v in mem2.values()),
            round(total(mem2, "rss")),
            round(total(mem2, "pss")),
        ]
    )
    mem_rows.append(
        [
            "**inferopt serve alone**",
            sum(int(v["count"]) for v in alone_mem.values()),
            round(total(alone_mem, "rss")),
            round(total(alone_mem, "pss")),
            "",
            "",
            "",
        ]
    )

    def row(name: str, s: dict[str, Any], runs: list[dict[str, Any]]) -> list[Any]:
        return [
            name,
            round(s["p50"], 2),
            round(s["p90"], 2),
            round(s["p99"], 2),
            ", ".join(f"{r['http']['p50']:.2f}" for r in runs),
            round(s["grpc_p50"], 2),
            round(s["req_s"]),
            ", ".join(f"{r['c8']['req_s']:.0f}" for r in runs),
            round(s["c8_p50"], 2),
            round(s["server_cpu_ms"], 3),
            f"{s['generator_cpu']:.0%}",
            s["errors"],
        ]

    latency_rows = [
        row("inferopt serve alone (phase 1)", s_alone1, phase1[alone.name]),
        row("Ray Serve, 1 replica", s_ray1, phase1[via_ray.name]),
        row("inferopt serve alone (phase 2)", s_alone2, phase2[alone.name]),
        row("Ray Serve, 2 replicas", s_ray2, phase2[via_ray2.name]),
    ]

    def cost_row(name: str, c: dict[str, list[float]]) -> list[Any]:
        return [
            name,
            spread(c["added_p50"]),
            spread(c["added_p99"]),
            spread(c["added_grpc_p50"]),
            spread(c["throughput_ratio"], 3),
            spread(c["cpu_ratio"]),
        ]

    cost_rows = [cost_row("1 replica", cost1), cost_row("2 replicas", cost2)]
    cpu_rows = cpu_by_role(
        {
            "inferopt serve alone": phase1[alone.name] + phase2[alone.name],
            "Ray, 1 replica": phase1[via_ray.name],
            "Ray, 2 replicas": phase2[via_ray2.name],
        }
    )
    ray_total_1 = total(mem1, "pss")
    tables = [
        table(
            "Ray Serve vs inferopt serve alone: added cost per request (digits-cnn)",
            [
                "Ray Serve",
                "added p50 ms (HTTP, c=1)",
                "added p99 ms (HTTP, c=1)",
                "added p50 ms (gRPC, c=1)",
                "throughput ratio (HTTP, c=8)",
                "server CPU per request, ratio",
            ],
            cost_rows,
            f"Each figure: the median over {ROUNDS} rounds of Ray's figure minus (or over) the "
            "alone server's in the same round, [min, max] over rounds. Server CPU: user + "
            "system time of the server's processes (for Ray: every process of the instance, "
            "proxy, replicas, controller and daemons) during the c=8 window, per answer. "
            f"Ray {ray_version}; answers through Ray equal the alone server's: {same}.",
        ),
        table(
            "Ray Serve vs inferopt serve alone: latency and throughput (digits-cnn)",
            [
                "server",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "p50 by round",
                "gRPC p50 ms",
                "req/s c=8",
                "req/s by round",
                "p50 ms c=8",
                "server CPU ms / request",
                "generator CPU",
                "errors",
            ],
            latency_rows,
            f"Latency: closed loop at concurrency 1, {LATENCY_REQUESTS} HTTP/JSON requests "
            f"(httpx, keep-alive) and {GRPC_REQUESTS} gRPC ones (tritonclient) per round "
            f"after {WARMUP_REQUESTS} warm-up requests; throughput: {CLIENTS} threads, closed "
            f"loop, {DURATION_S:g} s per round. Medians over {ROUNDS} rounds per phase, the "
            "two servers alternating within each round (both up at once). All processes, "
            "servers and this load generator (generator CPU: share of one core), share the "
            f"machine's {os.cpu_count()} cores. Same model settings on both (one ONNX Runtime "
            "thread, batching as shipped); Ray's proxy runs inferopt's retry middleware. "
            f"Distinct replicas answering at c=8 with 2 replicas: {s_ray2['replicas_seen']}.",
        ),
        table(
            "Where the CPU goes: CPU ms per answer at c=8, by process",
            ["process", "inferopt serve alone", "Ray, 1 replica", "Ray, 2 replicas"],
            cpu_rows,
            "User + system CPU of each of the server's processes over the c=8 window, divided "
            "by the answers in it; medians over rounds (the alone server over both phases). "
            "Processes idle in the window show 0.",
        ),
        table(
            "Ray Serve: start and ready time (s)",
            ["step", "seconds"],
            start_rows,
            "One cold start each (the files already in the page cache). Ready time: from "
            "ray.init to the first inference answered through Ray's HTTP proxy.",
        ),
        table(
            "Ray Serve vs inferopt serve alone: idle memory (MiB)",
            ["process", "1 replica: n", "RSS", "PSS", "2 replicas: n", "RSS", "PSS"],
            mem_rows,
            f"Idle {IDLE_S:g} s after a first answer. The Ray instance's processes are this "
            "process's descendants (ray.init starts the daemons and agents, the raylet the "
            "workers), less the alone server's subprocess; a process started by another Ray "
            "instance on the machine is no descendant. PSS splits shared pages among the "
            "processes sharing them, so its sum counts a shared library once; RSS counts it "
            f"in each. Ray idle with 1 replica: {ray_total_1:.0f} MiB PSS, "
            f"{ray_total_1 / total(alone_mem, 'pss'):.1f}x the alone server's. Not counted: "
            f"the driver (this process) grew by {driver_after - driver_before:.0f} MiB RSS "
            "when it started Ray and deployed (ray already imported).",
        ),
    ]
    payload = {
        "command": COMMAND,
        "tables": tables,
        "load_average_after": load_after,
        "ray_version": ray_version,
        "raw": {
            "phase1": phase1,
            "phase2": phase2,
            "replicas": {"1": first_replicas, "2": second_replicas},
            "memory": {"ray_1_replica": mem1, "ray_2_replicas": mem2, "alone": alone_mem},
            "start_s": {
                "alone_ready": alone_ready,
                "ray_init": ray_init,
                "ray_deploy": ray_deploy,
                "ray_first": ray_first,
                "ray_redeploy_2": ray_redeploy,
            },
        },
        "machine": {"load_average": load_before, "wall_s": round(wall)},
    }
    print(save("scaleout", payload).read_text())


if __name__ == "__main__":
    main()
