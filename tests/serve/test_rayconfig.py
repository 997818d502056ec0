"""inferopt's settings in Ray Serve's terms (no Ray instance), the printed Serve config, and
the proxy's retry middleware driven as a plain ASGI app."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from inferopt.serve.config import ModelConfig, ServerConfig
from inferopt.serve.rayconfig import (
    RaySettings,
    deployment_options,
    replica_threads,
    repository_revision,
    serve_config,
)
from inferopt.serve.rayproxy import PROXY_HEADER, REPLICA_HEADER, RetryLostRequests


def test_the_settings_map_to_ray_cpus_limits_and_429() -> None:
    model = ModelConfig(max_queue_size=12)
    options = deployment_options(model, ServerConfig(drain_timeout_s=7), RaySettings(replicas=3))
    assert options["num_replicas"] == 3 and "autoscaling_config" not in options
    assert options["ray_actor_options"] == {"num_cpus": 1.0}
    assert options["max_ongoing_requests"] == 12 == options["max_queued_requests"]
    assert options["backpressure_config"]["status_code"] == 429
    assert options["backpressure_config"]["retry_after_s"] > 0
    assert options["graceful_shutdown_timeout_s"] == 7
    assert options["logging_config"] == {"enable_access_log": False}

    auto = RaySettings(replicas=None, min_replicas=2, max_replicas=5, target_ongoing=3)
    scaling = deployment_options(model, ServerConfig(), auto)["autoscaling_config"]
    assert "num_replicas" not in deployment_options(model, ServerConfig(), auto)
    assert (scaling["min_replicas"], scaling["max_replicas"]) == (2, 5)
    assert scaling["target_ongoing_requests"] == 3


def test_each_replica_runs_as_many_threads_as_its_cpus() -> None:
    assert replica_threads(ModelConfig(), RaySettings(cpus_per_replica=4)) == 4
    assert replica_threads(ModelConfig(instances=2), RaySettings(cpus_per_replica=4)) == 2
    assert replica_threads(ModelConfig(), RaySettings(cpus_per_replica=0.5)) == 1
    assert replica_threads(ModelConfig(intra_op_threads=3), RaySettings()) == 3


@pytest.mark.parametrize(
    ("changes", "word"),
    [
        ({"replicas": 0}, "replicas"),
        ({"replicas": None, "min_replicas": 3, "max_replicas": 2}, "max_replicas"),
        ({"cpus_per_replica": 0}, "cpus_per_replica"),
        ({"target_ongoing": -1}, "target_ongoing"),
        ({"look_back_s": 0}, "look_back_s"),
    ],
)
def test_bad_settings_are_refused(changes: dict[str, Any], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        RaySettings(**changes)


def test_the_serve_config_passes_rays_own_schema(tmp_path: Path) -> None:
    schema = pytest.importorskip("ray.serve.schema")
    config = serve_config(str(tmp_path), ModelConfig(), ServerConfig(), RaySettings(), None, "r1")
    parsed = schema.ServeDeploySchema.model_validate(config)
    app = parsed.applications[0]
    assert app.import_path == "inferopt.serve.rayserve:build"
    assert app.args["revision"] == "r1"
    assert parsed.grpc_options.port == ServerConfig().grpc_port
    http_only = serve_config("/m", ModelConfig(), ServerConfig(grpc_port=None), RaySettings())
    assert "grpc_options" not in http_only


def test_the_revision_follows_the_repositorys_files(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"a")
    first = repository_revision(tmp_path)
    assert repository_revision(tmp_path) == first
    (tmp_path / "m" / "2").mkdir()
    (tmp_path / "m" / "2" / "model.onnx").write_bytes(b"b")
    assert repository_revision(tmp_path) != first


def _inferopt(*args: str) -> subprocess.CompletedProcess[str]:
    program = str(Path(sys.executable).parent / "inferopt")
    return subprocess.run([program, *args], capture_output=True, text=True, timeout=120)


def test_ray_config_prints_what_serve_deploy_reads(tmp_path: Path) -> None:
    (tmp_path / "digits").mkdir()
    done = _inferopt(
        "serve", str(tmp_path), "--ray-config", "--replicas", "auto", "--max-replicas", "3",
        "--cpus-per-replica", "2", "--max-queue-size", "40", "--host", "0.0.0.0",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    app = config["applications"][0]
    deployment = app["deployments"][0]
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8000}
    assert app["args"]["repository"] == str(tmp_path.resolve())
    assert app["args"]["revision"] == repository_revision(tmp_path)
    assert deployment["autoscaling_config"]["max_replicas"] == 3
    assert deployment["ray_actor_options"]["num_cpus"] == 2
    assert deployment["max_ongoing_requests"] == 40


@pytest.mark.parametrize(
    "flags", [["--replicas", "0"], ["--replicas", "many"], ["--cpus-per-replica", "0"]]
)
def test_bad_ray_flags_are_one_line_and_exit_2(tmp_path: Path, flags: list[str]) -> None:
    done = _inferopt("serve", str(tmp_path), "--ray-config", *flags)
    assert done.returncode == 2, done.stdout
    last = done.stderr.strip().splitlines()[-1]  # argparse prints its usage above
    assert "Traceback" not in done.stderr and flags[0].removeprefix("--").replace("-", "_") in (
        last.replace("-", "_")
    ), done.stderr


# ---- the proxy's retry middleware, with scripted "Ray proxies" behind it ----


def _run(app: Any, path: str = "/v2/models/m/infer") -> tuple[list[dict[str, Any]], int]:
    scope = {"type": "http", "method": "POST", "path": path, "headers": []}
    sent: list[dict[str, Any]] = []
    chunks = [
        {"type": "http.request", "body": b'{"inputs"', "more_body": True},
        {"type": "http.request", "body": b": []}", "more_body": False},
    ]

    async def receive() -> dict[str, Any]:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    calls = 0

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        await app(calls, scope, receive, send)

    asyncio.run(RetryLostRequests(counted)(scope, receive, send))
    return sent, calls


async def _answer(send: Any, status: int, replica: bool, body: bytes = b"ok") -> None:
    headers = [(REPLICA_HEADER, b"r1")] if replica else []
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def test_a_request_whose_replica_died_is_sent_again_with_its_body() -> None:
    bodies: list[bytes] = []

    async def proxy(call: int, scope: Any, receive: Any, send: Any) -> None:
        bodies.append((await receive())["body"])
        if call == 1:
            return  # Ray's proxy after ActorDiedError: no response at all
        if call == 2:
            raise RuntimeError("replica gone")
        await _answer(send, 200, replica=True)

    sent, calls = _run(proxy)
    assert calls == 3 and bodies == [b'{"inputs": []}'] * 3
    assert sent[0]["status"] == 200 and (PROXY_HEADER, b"retry") in sent[0]["headers"]
    assert sent[1]["body"] == b"ok"


def test_an_answer_cut_short_by_a_dying_replica_is_retried_not_forwarded() -> None:
    async def proxy(call: int, scope: Any, receive: Any, send: Any) -> None:
        await receive()
        start = {"type": "http.response.start", "status": 200,
                 "headers": [(REPLICA_HEADER, b"r1"), (b"content-length", b"6")]}  # fmt: skip
        await send(start)
        if call == 1:  # the replica dies after its response start, before its body
            await send({"type": "http.response.body", "body": b"ok", "more_body": True})
            raise RuntimeError("peer closed connection")
        await send({"type": "http.response.body", "body": b"answer"})

    sent, calls = _run(proxy)
    assert calls == 2
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[1]["body"] == b"answer"


def test_a_models_own_error_is_passed_on_not_retried() -> None:
    async def proxy(call: int, scope: Any, receive: Any, send: Any) -> None:
        await _answer(send, 500, replica=True, body=b'{"error": "model failed"}')

    sent, calls = _run(proxy)
    assert calls == 1 and sent[0]["status"] == 500


def test_a_ray_side_failure_is_retried_then_answered_as_it_was() -> None:
    async def proxy(call: int, scope: Any, receive: Any, send: Any) -> None:
        await _answer(send, 503, replica=False, body=b"unavailable")

    sent, calls = _run(proxy)
    assert calls == 4  # the first try and three retries
    assert [m.get("status") for m in sent if "status" in m] == [503]
    assert sent[-1]["body"] == b"unavailable"


def test_other_requests_pass_through_once() -> None:
    async def proxy(call: int, scope: Any, receive: Any, send: Any) -> None:
        await _answer(send, 503, replica=False)

    sent, calls = _run(proxy, path="/v2/health/ready")
    assert calls == 1 and sent[0]["status"] == 503
