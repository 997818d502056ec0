"""The HTTP front door (serve/gate.py, serve/gate_protocol.py): a request the batcher would
refuse is answered 429 from its head alone, the connection stays usable, and the refusal is
counted like any other; through httptools (the default) and through the ASGI gate (h11)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import httpx
import orjson
import pytest

from inferopt.serve import BackgroundServer, ModelConfig
from inferopt.serve import server as serve_server
from inferopt.serve.gate import inferred_model

Serve = Callable[..., BackgroundServer]
LABELS = {"model": "spin", "version": "1"}


def test_the_model_is_read_from_inference_paths_only() -> None:
    assert inferred_model("/v2/models/digits/infer") == "digits"
    assert inferred_model("/v2/models/digits/versions/3/infer") == "digits"
    assert inferred_model("/v2/models/digits") is None
    assert inferred_model("/v2/models/digits/ready") is None
    assert inferred_model("/v2/models/a/b/infer") is None
    assert inferred_model("/v2/repository/models/digits/infer") is None


def infer_bytes(trips: int, connection: str = "keep-alive") -> bytes:
    body = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
                {"name": "spin", "shape": [1, 1], "datatype": "INT64", "data": [trips]},
            ]
        }
    )
    head = (
        f"POST /v2/models/spin/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: {connection}\r\n\r\n"
    )
    return head.encode() + body


def read_response(stream: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    status_line = stream.readline().decode("latin-1")
    assert status_line, "connection closed before a response"
    headers = {}
    while (line := stream.readline().decode("latin-1").strip()) != "":
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, stream.read(int(headers["content-length"]))


@pytest.fixture(params=["httptools", "h11"])
def busy_server(
    request: pytest.FixtureRequest,
    serve: Serve,
    tmp_path: Path,
    build: Callable,
    save_model: Callable,
    spin_rate: float,
    read_metric: Callable,
    poll: Callable,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[BackgroundServer]:
    """A server whose only queue slot is taken by a ~1 s request."""
    if request.param == "h11":  # the ASGI gate instead of the protocol one
        monkeypatch.setattr(serve_server, "_http_protocol", lambda repository: "h11")
    save_model(build(1.0, spin=True), tmp_path / "spin" / "1" / "model.onnx")
    server = serve(tmp_path, ModelConfig(max_batch_size=1, max_queue_size=1))
    url = server.http_url
    payload = orjson.loads(infer_bytes(int(spin_rate)).partition(b"\r\n\r\n")[2])
    thread = threading.Thread(
        target=httpx.post, args=(f"http://{url}/v2/models/spin/infer",), kwargs={"json": payload}
    )
    thread.start()
    poll(lambda: read_metric(url, "inferopt_pending_requests", **LABELS) == 1)
    yield server
    thread.join(60)


def test_a_refused_request_is_429_and_the_connection_stays_usable(
    busy_server: BackgroundServer, read_metric: Callable
) -> None:
    url = busy_server.http_url
    host, port = url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        # Two requests in one write (pipelined): both refused, in order, bodies skipped.
        stream = sock.makefile("rb")
        sock.sendall(infer_bytes(1) + infer_bytes(2))
        for _ in range(2):
            status, headers, body = read_response(stream)
            assert status == 429
            assert int(headers["retry-after"]) >= 1
            assert headers["content-type"] == "application/json"
            assert "queue full" in orjson.loads(body)["error"]
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")  # same connection
        assert read_response(stream)[0] == 200
    rejected = read_metric(url, "inferopt_requests_total", outcome="rejected", **LABELS)
    assert rejected == 2
    assert read_metric(url, "inferopt_rejections_total", reason="queue_full", **LABELS) == 2


def test_a_refusal_honours_connection_close(busy_server: BackgroundServer) -> None:
    host, port = busy_server.http_url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        stream = sock.makefile("rb")
        sock.sendall(infer_bytes(1, connection="close"))
        assert read_response(stream)[0] == 429
        assert stream.read(1) == b""  # closed by the server


def test_other_requests_pass_the_gate(busy_server: BackgroundServer) -> None:
    url = busy_server.http_url
    assert httpx.get(f"http://{url}/v2/models/spin").status_code == 200
    assert httpx.post(f"http://{url}/v2/models/nope/infer", json={}).status_code == 404
