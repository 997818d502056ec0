"""Deadlines, admission control and disconnects through the real server, with the `spin`
model: each request says how long it runs, so a test can hold the model busy on purpose."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from inferopt.serve import BackgroundServer, ModelConfig

Serve = Callable[..., BackgroundServer]
LABELS = {"model": "spin", "version": "1"}


@pytest.fixture
def spin_repo(tmp_path: Path, build: Callable, save_model: Callable) -> Path:
    save_model(build(1.0, spin=True), tmp_path / "spin" / "1" / "model.onnx")
    return tmp_path


def body(trips: int, timeout_us: int | None = None) -> dict:
    request: dict = {
        "inputs": [
            {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
            {"name": "spin", "shape": [1, 1], "datatype": "INT64", "data": [trips]},
        ]
    }
    if timeout_us is not None:
        request["parameters"] = {"timeout": timeout_us}
    return request


def infer(url: str, trips: int, timeout_us: int | None = None) -> httpx.Response:
    return httpx.post(
        f"http://{url}/v2/models/spin/infer", json=body(trips, timeout_us), timeout=120
    )


def in_background(url: str, trips: int) -> tuple[threading.Thread, list[httpx.Response]]:
    answers: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: answers.append(infer(url, trips)))
    thread.start()
    return thread, answers


def pending_is(read_metric: Callable[..., float], url: str, count: int) -> Callable[[], bool]:
    return lambda: read_metric(url, "inferopt_pending_requests", **LABELS) == count


def inferences(read_metric: Callable[..., float], url: str) -> float:
    return read_metric(url, "inferopt_inferences_total", **LABELS)


def test_deadline_passing_while_queued_is_504_and_never_runs(
    serve: Serve, spin_repo: Path, spin_rate: float, read_metric: Callable, poll: Callable
) -> None:
    url = serve(spin_repo, ModelConfig(max_batch_size=1)).http_url
    busy, answers = in_background(url, trips=int(spin_rate * 2))  # ~2 s of work
    poll(pending_is(read_metric, url, 1))
    late = infer(url, trips=1, timeout_us=200_000)
    assert late.status_code == 504
    assert "deadline passed in the queue" in late.json()["error"]
    assert busy.is_alive()  # answered at its deadline, not after the busy request
    busy.join()
    assert answers[0].status_code == 200
    assert inferences(read_metric, url) == 1  # the late request never ran
    assert read_metric(url, "inferopt_requests_total", outcome="timeout", **LABELS) == 1


def test_predicted_wait_beyond_the_deadline_is_refused_at_once(
    serve: Serve, spin_repo: Path, spin_rate: float, read_metric: Callable
) -> None:
    url = serve(spin_repo, ModelConfig(max_batch_size=1)).http_url
    assert infer(url, trips=int(spin_rate * 1.0)).status_code == 200  # teaches: ~1 s a batch
    refused = infer(url, trips=1, timeout_us=20_000)
    assert refused.status_code == 429
    assert "predicted wait" in refused.json()["error"]
    assert int(refused.headers["retry-after"]) >= 1
    assert read_metric(url, "inferopt_rejections_total", reason="deadline", **LABELS) == 1
    assert infer(url, trips=1).status_code == 200  # no deadline: still served


def test_a_full_queue_is_429_with_retry_after(
    serve: Serve, spin_repo: Path, spin_rate: float, read_metric: Callable, poll: Callable
) -> None:
    url = serve(spin_repo, ModelConfig(max_batch_size=1, max_queue_size=2)).http_url
    # 3 s each: the refused request must arrive while both are still pending, even when a
    # loaded machine is slow to show the second one pending
    busy = [in_background(url, trips=int(spin_rate * 3.0)) for _ in range(2)]
    poll(pending_is(read_metric, url, 2))
    refused = infer(url, trips=1)
    assert refused.status_code == 429
    assert "queue full" in refused.json()["error"]
    assert int(refused.headers["retry-after"]) >= 1
    for thread, answers in busy:
        thread.join()
        assert answers[0].status_code == 200
    assert read_metric(url, "inferopt_rejections_total", reason="queue_full", **LABELS) == 1


def test_a_client_that_disconnects_has_its_queued_work_dropped(
    serve: Serve, spin_repo: Path, spin_rate: float, read_metric: Callable, poll: Callable
) -> None:
    server = serve(spin_repo, ModelConfig(max_batch_size=1))
    url = server.http_url
    busy, answers = in_background(url, trips=int(spin_rate * 1.5))
    poll(pending_is(read_metric, url, 1))
    payload = httpx.Request("POST", "http://x", json=body(int(spin_rate * 1.5))).content
    with socket.create_connection(("127.0.0.1", server.server.http_port)) as sock:
        sock.sendall(
            b"POST /v2/models/spin/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            + f"\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        poll(pending_is(read_metric, url, 2))
    # the socket is closed: the queued request goes, the running one finishes
    poll(lambda: read_metric(url, "inferopt_requests_total", outcome="cancelled", **LABELS) == 1)
    busy.join()
    assert answers[0].status_code == 200
    assert inferences(read_metric, url) == 1


def test_a_grpc_deadline_bounds_the_request(
    serve: Serve, spin_repo: Path, spin_rate: float, read_metric: Callable, poll: Callable
) -> None:
    server = serve(spin_repo, ModelConfig(max_batch_size=1))
    busy, answers = in_background(server.http_url, trips=int(spin_rate * 1.5))
    poll(pending_is(read_metric, server.http_url, 1))
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    tensors = []
    for name, values, datatype in (
        ("x", np.ones((1, 4), np.float32), "FP32"),
        ("spin", np.ones((1, 1), np.int64), "INT64"),
    ):
        tensor = triton_grpc.InferInput(name, [*values.shape], datatype)
        tensor.set_data_from_numpy(values)
        tensors.append(tensor)
    with pytest.raises(InferenceServerException) as error:
        client.infer("spin", tensors, client_timeout=0.3)
    assert error.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    busy.join()
    assert answers[0].status_code == 200
    poll(lambda: read_metric(server.http_url, "inferopt_pending_requests", **LABELS) == 0)
    assert inferences(read_metric, server.http_url) == 1
