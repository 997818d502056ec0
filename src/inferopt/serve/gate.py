"""The HTTP front door: refuse an inference request (429) from its method and path alone,
before routing, middleware or reading its body.

Why: under overload most requests are refused, and on the normal path a request costs the
event loop the whole Starlette stack plus body decoding before the batcher can say no. When
the event loop is the bottleneck (small models, many small HTTP requests), that cost is what
collapses goodput: the loop spends itself refusing, and requests queue in socket buffers
where no admission control can see them.

Two doors, one rule (`check`):
- `GatedHttpProtocol` (gate_protocol.py): uvicorn's httptools protocol with one step added.
  Once the request head is parsed, a refused request is answered with one pre-formatted
  write: no ASGI scope, task, Starlette or body handling. The numbers are in docs/serve.md
  ("Overload").
- `AdmissionGate`: an ASGI callable around the application, with the same refusal for
  requests that reach the application by another way (the h11 protocol, pipelining).

What can be decided without the body: the queue is full (`max_queue_size`), or the
predicted wait exceeds `max_queue_wait_ms`. A refusal by the request's own deadline (its
`timeout` parameter is in the body) is made by the batcher after decoding.
"""

from __future__ import annotations

import http
import time
from dataclasses import dataclass

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from inferopt.serve import protocol
from inferopt.serve.repository import ModelVersion, Repository

_PREFIX = "/v2/models/"


@dataclass(frozen=True)
class Refusal:
    served: ModelVersion
    status: int
    body: bytes
    retry_after: str

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"content-type", protocol.JSON_TYPE.encode()),
            (b"content-length", str(len(self.body)).encode()),
            (b"retry-after", self.retry_after.encode()),
        ]

    def http_response(self) -> bytes:
        """The whole HTTP/1.1 response, status line to body."""
        head = b"".join(name + b": " + value + b"\r\n" for name, value in self.headers())
        phrase = http.HTTPStatus(self.status).phrase
        return f"HTTP/1.1 {self.status} {phrase}\r\n".encode() + head + b"\r\n" + self.body

    def counted(self, seconds: float) -> None:
        self.served.metrics.finished("rejected", seconds)


def check(repository: Repository, method: str, path: str) -> Refusal | None:
    """The refusal for an inference request arriving now, or None to let it in. The batcher
    counts the rejection reason; the caller counts the outcome once it has answered."""
    if method != "POST":
        return None
    model = inferred_model(path)
    served = repository.serving(model) if model is not None else None
    if served is None:
        return None  # not inference, unknown or not ready: the application answers that
    refused = served.batcher.refusal(1, None, time.monotonic())
    if refused is None:
        return None
    body = orjson.dumps({"error": refused.message})
    return Refusal(served, refused.status, body, refused.retry_after_header() or "1")


def inferred_model(path: str) -> str | None:
    """The model of `/v2/models/{m}/infer` or `/v2/models/{m}/versions/{v}/infer`, else None."""
    if not path.startswith(_PREFIX) or not path.endswith("/infer"):
        return None
    parts = path[len(_PREFIX) :].split("/")
    if len(parts) == 2 or (len(parts) == 4 and parts[1] == "versions"):
        return parts[0]
    return None


class AdmissionGate:
    """ASGI: refuse before the wrapped application sees the request."""

    def __init__(self, app: ASGIApp, repository: Repository) -> None:
        self.app = app
        self.repository = repository

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            start = time.perf_counter()
            refusal = check(self.repository, scope["method"], scope["path"])
            if refusal is not None:
                start_message = {"type": "http.response.start", "status": refusal.status}
                await send({**start_message, "headers": refusal.headers()})
                await send({"type": "http.response.body", "body": refusal.body})
                refusal.counted(time.perf_counter() - start)
                return
        await self.app(scope, receive, send)
