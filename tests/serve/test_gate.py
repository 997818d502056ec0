"""The HTTP front door (serve/gate.py, serve/gate_protocol.py): a request the batcher would
refuse is answered 429 from its head alone, the connection stays usable, and the refusal is
counted like any other; through httptools (the default) and through the ASGI gate (h11).
The refusal is formatted once per reason and Retry-After; keep-alive works as uvicorn's."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, BinaryIO

import httpx
import orjson
import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from inferopt.serve import BackgroundServer, ModelConfig
from inferopt.serve import server as serve_server
from inferopt.serve.errors import Overloaded
from inferopt.serve.gate import Door, inferred_model, refusal
from inferopt.serve.gate_protocol import GatedHttpProtocol, gated_protocol

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


class Verdicts:
    """A batcher double for the gate: refuses with `reason` (None: admits), predicts `wait`,
    and records what the gate asks of it."""

    def __init__(self) -> None:
        self.reason: str | None = "queue_full"
        self.wait = 0.01
        self.counted: list[str] = []
        self.formatted = 0

    def refused(self, rows: int, deadline: float | None, now: float) -> str | None:
        if self.reason is not None:
            self.counted.append(self.reason)
        return self.reason

    def predicted_wait(self, rows: int) -> float:
        return self.wait

    def overloaded(self, reason: str, rows: int, deadline: float | None, now: float) -> Any:
        self.formatted += 1
        return Overloaded(f"model 'm': refused for {reason}", retry_after_s=self.wait)


def served_by(batcher: Verdicts) -> Any:
    metrics = SimpleNamespace(finished=lambda outcome, seconds: None)
    return SimpleNamespace(batcher=batcher, refusals={}, metrics=metrics)


def test_a_refusal_is_formatted_once_per_reason_and_retry_after() -> None:
    batcher = Verdicts()
    served = served_by(batcher)
    first = refusal(served)
    assert first is not None and refusal(served) is first
    batcher.wait = 0.9  # still "Retry-After: 1"
    assert refusal(served) is first
    assert batcher.formatted == 1
    assert batcher.counted == ["queue_full"] * 3  # each refusal counted, cached or not
    status, headers, body = read_response(io.BytesIO(first.http_response))
    assert (status, headers["retry-after"]) == (429, "1")
    assert orjson.loads(body) == {"error": "model 'm': refused for queue_full"}
    assert headers["content-type"] == "application/json"

    batcher.wait = 2.5
    later = refusal(served)
    assert later is not None and later.retry_after == "3"
    assert read_response(io.BytesIO(later.http_response))[1]["retry-after"] == "3"
    batcher.reason = "queue_wait"
    other = refusal(served)
    assert other is not None and b"queue_wait" in other.body
    assert batcher.formatted == 3
    batcher.reason = None
    assert refusal(served) is None


def test_the_door_remembers_targets_but_asks_for_the_serving_version_each_time() -> None:
    versions = {"digits": "v1"}
    door = Door(SimpleNamespace(serving=versions.get))  # type: ignore[arg-type]
    assert door.served(b"POST", b"/v2/models/digits/infer") == "v1"
    versions["digits"] = "v2"  # replaced (reloaded)
    assert door.served(b"POST", b"/v2/models/digits/infer") == "v2"
    assert door.served(b"POST", b"/v2/models/digits/versions/1/infer?x=1") == "v2"
    assert door.served(b"GET", b"/v2/models/digits/infer") is None
    assert door.served(b"POST", b"/v2/models/digits/ready") is None
    assert door.served(b"POST", b"/v2/models/other/infer") is None
    for i in range(1000):  # arbitrary targets: remembered within a bound, answered alike
        assert door.served(b"POST", f"/v2/models/m{i}/infer".encode()) is None
    assert door.served(b"POST", b"/v2/models/digits/infer") == "v2"


class FakeTransport(asyncio.Transport):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.written = bytearray()
        self.closed_at: float | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name)

    def write(self, data: Any) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed_at is not None

    def close(self) -> None:
        if self.closed_at is None:
            self.closed_at = self.loop.time()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def statuses(self) -> list[int]:
        stream, out = io.BytesIO(bytes(self.written)), []
        while stream.tell() < len(self.written):
            out.append(read_response(stream)[0])
        return out


def connected(app: Any, keep_alive_s: float) -> tuple[GatedHttpProtocol, FakeTransport]:
    """The gated protocol of a server whose only model `spin` refuses everything, on a fake
    transport; other requests go to `app`."""
    loop = asyncio.get_running_loop()
    repository = SimpleNamespace(serving={"spin": served_by(Verdicts())}.get)
    protocol_class = gated_protocol(repository)  # type: ignore[arg-type]
    config = Config(
        app,
        http=protocol_class,
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_keep_alive=keep_alive_s,
    )
    config.load()
    protocol = protocol_class(config, ServerState(), {}, loop)
    transport = FakeTransport(loop)
    protocol.connection_made(transport)
    return protocol, transport


def test_keep_alive_closes_a_connection_idle_for_the_timeout_and_only_then() -> None:
    release = asyncio.Event()

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["path"] == "/slow":
            await release.wait()
        headers = [(b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        protocol, transport = connected(app, keep_alive_s=0.5)
        protocol.data_received(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.05)
        for _ in range(4):  # a refusal every 0.2 s: never idle for 0.5 s, so kept open
            await asyncio.sleep(0.2)
            protocol.data_received(infer_bytes(1))
        assert transport.closed_at is None
        protocol.data_received(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.8)  # a request in progress is never idle
        assert transport.closed_at is None
        idle = loop.time()  # at the latest: the slow request's response completes after it
        release.set()
        while transport.closed_at is None and loop.time() < idle + 10:
            await asyncio.sleep(0.02)
        assert transport.closed_at is not None and transport.closed_at - idle >= 0.49
        assert transport.statuses() == [200, 429, 429, 429, 429, 200]
        protocol.connection_lost(None)

    asyncio.run(asyncio.wait_for(scenario(), 30))
