"""inferopt's server on Ray Serve: a local Ray instance (2 CPUs, loopback), real replicas,
Ray's HTTP and gRPC proxies, tritonclient. Loads are closed loops of a few threads or an
open loop of bounded length; every wait is bounded in time."""

from __future__ import annotations

import collections
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from inferopt.serve import rayserve  # noqa: E402
from inferopt.serve.config import ModelConfig, ServerConfig  # noqa: E402
from inferopt.serve.rayconfig import RaySettings  # noqa: E402
from inferopt.serve.rayproxy import CALLBACK, CALLBACK_ENV  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
# Ray pushes autoscaling and exported metrics every 10 s by default: too slow for a test.
_ENV = {
    CALLBACK_ENV: CALLBACK,
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    def __init__(self, metrics_port: int) -> None:
        self.metrics_port = metrics_port
        self.server = ServerConfig(http_port=_free_port(), grpc_port=_free_port())
        self.http = f"127.0.0.1:{self.server.http_port}"
        self.grpc = f"127.0.0.1:{self.server.grpc_port}"

    def deploy(self, repo: Path, settings: RaySettings, **model: Any) -> None:
        rayserve.deploy(repo, ModelConfig(**model), self.server, settings)

    def replicas(self) -> list[str]:
        names = ray.util.list_named_actors(all_namespaces=True)
        return sorted(n["name"] for n in names if "InferoptReplica" in n["name"])

    def exported(self, name: str, **labels: str) -> dict[str, float]:
        """Ray's exported series `ray_<name>` with `labels`, by replica."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).text
        found: dict[str, float] = {}
        for line in text.splitlines():
            if not line.startswith(f"ray_{name}{{"):
                continue
            series, value = line.rsplit(" ", 1)
            pairs = dict(p.split("=", 1) for p in series[series.index("{") + 1 : -1].split(","))
            pairs = {k: v.strip('"') for k, v in pairs.items()}
            if all(pairs.get(k) == v for k, v in labels.items()):
                found[pairs["replica"]] = float(value)
        return found


def _start_ray(metrics_port: int) -> None:
    """A new local Ray instance. Started once more when Ray's own start times out: on this
    2-core machine its raylet has failed to register within Ray's wait, once, right after
    another test's cluster shut down (nothing of inferopt runs yet at that point)."""
    for attempt in (1, 2):
        try:
            ray.init(
                address="local",  # a new instance, never a cluster someone else runs here
                num_cpus=2,
                include_dashboard=False,
                log_to_driver=False,
                _metrics_export_port=metrics_port,
                _system_config={"metrics_report_interval_ms": 500},
            )
            return
        except Exception as exc:  # Ray raises a bare Exception for a start that timed out
            if attempt == 2 or "timed out during startup" not in str(exc):
                raise
            ray.shutdown()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    saved = {k: os.environ.get(k) for k in _ENV}
    os.environ.update(_ENV)  # inherited by the Ray processes started here
    port = _free_port()
    _start_ray(port)
    try:
        yield Cluster(port)
    finally:
        serve.shutdown()
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def digits_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from inferopt.sources import load

    root = tmp_path_factory.mktemp("ray-repo")
    load("digits-cnn").save(root / "digits-cnn" / "1" / "model.onnx")
    return root


def _body(rows: int = 1, seed: int = 0) -> tuple[bytes, np.ndarray]:
    x = np.random.default_rng(seed).random((rows, 1, 8, 8), dtype=np.float32)
    payload = {"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32",
                           "data": x.ravel().tolist()}]}  # fmt: skip
    return orjson.dumps(payload), x


class Load:
    """A closed loop of `clients` threads posting `body` to `url` until stopped (at most
    `limit_s`), counting answers by status (or exception name)."""

    def __init__(self, url: str, body: bytes, clients: int = 4, limit_s: float = 60) -> None:
        self.counts: collections.Counter[int | str] = collections.Counter()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._deadline = time.monotonic() + limit_s
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(url, body), daemon=True)
            for _ in range(clients)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self, url: str, body: bytes) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                try:
                    answer = client.post(url, content=body)
                    key: int | str = answer.status_code
                    text = "" if answer.status_code == 200 else answer.text[:200]
                except httpx.HTTPError as exc:
                    key, text = type(exc).__name__, str(exc)[:200]
                with self._lock:
                    self.counts[key] += 1
                    if text:
                        self.errors.append(f"{key}: {text}")

    def successes(self) -> int:
        with self._lock:
            return self.counts[200]


def _wait(condition: Callable[[], bool], limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {limit_s:.0f} s")


def _infer_url(cluster: Cluster, model: str = "digits-cnn") -> str:
    return f"http://{cluster.http}/v2/models/{model}/infer"


def test_tritonclient_answers_equal_the_model_and_bad_requests_are_4xx(
    cluster: Cluster, digits_repo: Path
) -> None:
    import tritonclient.grpc as tgrpc
    import tritonclient.http as thttp

    cluster.deploy(digits_repo, RaySettings(replicas=2))
    _wait(lambda: len(cluster.replicas()) == 2, 60, "two replicas")
    _, x = _body(rows=3, seed=1)
    model = digits_repo / "digits-cnn" / "1" / "model.onnx"
    direct = ort.InferenceSession(str(model)).run(["logits"], {"image": x})[0]
    http = thttp.InferenceServerClient(cluster.http)
    inputs = [thttp.InferInput("image", list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x, binary_data=True)
    np.testing.assert_allclose(
        http.infer("digits-cnn", inputs).as_numpy("logits"), direct, rtol=1e-5, atol=1e-5
    )
    grpc = tgrpc.InferenceServerClient(cluster.grpc)
    assert grpc.is_server_ready()
    ginputs = [tgrpc.InferInput("image", list(x.shape), "FP32")]
    ginputs[0].set_data_from_numpy(x)
    np.testing.assert_allclose(
        grpc.infer("digits-cnn", ginputs).as_numpy("logits"), direct, rtol=1e-5, atol=1e-5
    )

    url = _infer_url(cluster)
    bad = {
        "malformed JSON": httpx.post(url, content=b"{not json"),
        "wrong shape": httpx.post(url, json={"inputs": [
            {"name": "image", "shape": [1, 3], "datatype": "FP32", "data": [0, 0, 0]}]}),
        "unknown model": httpx.post(_infer_url(cluster, "nope"), json={"inputs": []}),
        "load API": httpx.post(f"http://{cluster.http}/v2/repository/models/digits-cnn/load"),
    }  # fmt: skip
    for what, answer in bad.items():
        assert 400 <= answer.status_code < 500, (what, answer.status_code, answer.text)
        assert "error" in answer.json(), what
    assert "image" in bad["wrong shape"].json()["error"]
    assert "Ray" in bad["load API"].json()["error"]
    for path in ("/metrics", "/v2/models/digits-cnn/stats"):  # one replica is not the whole
        answer = httpx.get(f"http://{cluster.http}{path}")
        assert answer.status_code == 404 and "replica" in answer.json()["error"], path
    wrong = [tgrpc.InferInput("image", [1, 3], "FP32")]
    wrong[0].set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(Exception, match="INVALID_ARGUMENT") as info:
        grpc.infer("digits-cnn", wrong)
    assert "image" in str(info.value)
    with pytest.raises(Exception, match="NOT_FOUND"):
        grpc.infer("nope", ginputs)


def test_a_replica_killed_under_load_loses_no_request_and_comes_back(
    cluster: Cluster, digits_repo: Path
) -> None:
    cluster.deploy(digits_repo, RaySettings(replicas=2))
    before = cluster.replicas()
    body, _ = _body()
    with Load(_infer_url(cluster), body, clients=4) as load:
        _wait(lambda: load.successes() > 100, 30, "load started")
        victim = ray.get_actor(before[0], namespace="serve")
        pid = ray.get(victim.__ray_call__.remote(lambda _self: os.getpid()))
        os.kill(pid, signal.SIGKILL)
        killed_at = load.successes()
        _wait(lambda: len(set(cluster.replicas()) - set(before)) == 1, 60, "a new replica")
        _wait(lambda: load.successes() > killed_at + 200, 60, "load after the kill")
    assert set(load.counts) == {200}, (load.counts, load.errors[:5])
    _wait(lambda: len(cluster.replicas()) == 2, 60, "two replicas")


def test_scaling_down_and_rolling_a_version_under_load_lose_no_request(
    cluster: Cluster, tmp_path: Path, digits_repo: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(digits_repo, repo)
    cluster.deploy(repo, RaySettings(replicas=2))
    body, _ = _body()
    with Load(_infer_url(cluster), body, clients=4) as load:
        _wait(lambda: load.successes() > 50, 30, "load started")
        cluster.deploy(repo, RaySettings(replicas=1))
        _wait(lambda: len(cluster.replicas()) == 1, 60, "scaled down to one replica")
        shutil.copytree(repo / "digits-cnn" / "1", repo / "digits-cnn" / "2")
        cluster.deploy(repo, RaySettings(replicas=1))  # the files changed: a rolling update
        served = httpx.get(f"http://{cluster.http}/v2/models/digits-cnn").json()["versions"]
        mark = load.successes()
        _wait(lambda: load.successes() > mark + 50, 30, "load after the rollout")
    assert served == ["2"]
    assert set(load.counts) == {200}, (load.counts, load.errors[:5])


def test_replica_metrics_summed_by_ray_equal_the_clients_successes(
    cluster: Cluster, tmp_path: Path, digits_repo: Path
) -> None:
    repo = tmp_path / "repo"
    # A name no earlier test served: series of replicas gone stay out of the sum.
    (repo / "digits-sum").mkdir(parents=True)
    shutil.copytree(digits_repo / "digits-cnn" / "1", repo / "digits-sum" / "1")
    cluster.deploy(repo, RaySettings(replicas=2))
    body, _ = _body()
    with Load(_infer_url(cluster, "digits-sum"), body, clients=4, limit_s=4) as load:
        _wait(lambda: load.successes() > 200, 30, "load ran")
    sent = load.successes()
    assert set(load.counts) == {200}, load.counts
    by_replica: dict[str, float] = {}

    def summed() -> bool:
        nonlocal by_replica
        by_replica = cluster.exported(
            "inferopt_requests_total", model="digits-sum", outcome="success"
        )
        return sum(by_replica.values()) == sent

    _wait(summed, 30, f"Ray's exported sum equal to {sent}")
    assert len(by_replica) == 2 and min(by_replica.values()) > 0, by_replica


def test_autoscaling_goes_to_two_replicas_under_load_and_back(
    cluster: Cluster, tmp_path: Path, build: Any, save_model: Any, spin_rate: float
) -> None:
    repo = tmp_path / "repo"
    save_model(build(1.0, spin=True), repo / "spin" / "1" / "model.onnx")
    settings = RaySettings(
        replicas=None, min_replicas=1, max_replicas=2, target_ongoing=1,
        upscale_delay_s=0.5, downscale_delay_s=2, look_back_s=1,
    )  # fmt: skip
    cluster.deploy(repo, settings, max_batch_size=0)
    # The previous test's replicas may still be finishing their requests and stopping.
    _wait(lambda: len(cluster.replicas()) == 1, 60, "one replica before the load")
    trips = max(1, int(spin_rate * 0.02))  # about 20 ms of work per request
    payload = {"inputs": [
        {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
        {"name": "spin", "shape": [1, 1], "datatype": "INT64", "data": [trips]}]}  # fmt: skip
    started = time.monotonic()
    with Load(_infer_url(cluster, "spin"), orjson.dumps(payload), clients=4) as load:
        _wait(lambda: len(cluster.replicas()) == 2, 45, "scaled up to two replicas")
        scaled_up_s = time.monotonic() - started
    _wait(lambda: len(cluster.replicas()) == 1, 60, "scaled back to one replica")
    assert set(load.counts) == {200}, (load.counts, load.errors[:5])
    print(f"1 -> 2 replicas {scaled_up_s:.1f} s after the load began")


def test_at_three_times_capacity_refusals_are_429_never_5xx(
    cluster: Cluster, tmp_path: Path, build: Any, save_model: Any, spin_rate: float
) -> None:
    repo = tmp_path / "repo"
    save_model(build(1.0, spin=True), repo / "spin" / "1" / "model.onnx")
    cluster.deploy(repo, RaySettings(replicas=2), max_batch_size=0, max_queue_size=4)
    trips = max(1, int(spin_rate * 0.02))
    payload = orjson.dumps({"inputs": [
        {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
        {"name": "spin", "shape": [1, 1], "datatype": "INT64", "data": [trips]}]})  # fmt: skip
    url = _infer_url(cluster, "spin")
    with Load(url, payload, clients=2, limit_s=4) as probe:
        time.sleep(3)
    capacity = probe.successes() / 3  # requests/s two busy clients get: about the machine's
    statuses = _open_loop(url, payload, rate=3 * capacity, seconds=5)
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[429] > 0 and statuses[200] > 0, statuses


def _open_loop(url: str, body: bytes, rate: float, seconds: float) -> collections.Counter[int]:
    """Requests sent at `rate` per second for `seconds`, whatever the answers' pace."""
    import asyncio

    async def run() -> collections.Counter[int]:
        counts: collections.Counter[int] = collections.Counter()
        limits = httpx.Limits(max_connections=512)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:

            async def one() -> None:
                answer = await client.post(url, content=body)
                counts[answer.status_code] += 1
                if answer.status_code == 429:
                    assert "retry-after" in answer.headers

            tasks = []
            start = time.monotonic()
            for i in range(int(rate * seconds)):
                await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
                tasks.append(asyncio.create_task(one()))
            await asyncio.gather(*tasks)
        return counts

    return asyncio.run(run())


def test_the_cli_deploys_to_a_running_cluster_and_detaches(
    cluster: Cluster, digits_repo: Path
) -> None:
    import subprocess
    import sys

    address = ray.get_runtime_context().gcs_address
    ports = ["--http-port", str(cluster.server.http_port)]
    ports += ["--grpc-port", str(cluster.server.grpc_port)]
    done = subprocess.run(
        [str(Path(sys.executable).parent / "inferopt"), "serve", str(digits_repo), "--ray", address,
         "--detach", "--replicas", "1", *ports],
        capture_output=True, text=True, timeout=120, env={**os.environ},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"http=127.0.0.1:{cluster.server.http_port}" in done.stdout
    body, _ = _body()
    assert httpx.post(_infer_url(cluster), content=body, timeout=30).status_code == 200
    _wait(lambda: len(cluster.replicas()) == 1, 60, "one replica")


def test_the_cli_says_in_one_line_when_ray_is_unreachable(digits_repo: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [str(Path(sys.executable).parent / "inferopt"), "serve", str(digits_repo), "--ray",
         f"127.0.0.1:{_free_port()}", "--detach"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("inferopt")]
    assert len(lines) == 1 and "cannot reach Ray" in lines[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
