"""The HTTP front door: refuse an inference request (429) from its method and path alone,
before routing, middleware or reading its body.

Why: under overload most requests are refused, and on the normal path a request costs the
event loop the whole Starlette stack plus body decoding before the batcher can say no. When
the event loop is the bottleneck (small models, many small HTTP requests), that cost is what
collapses goodput: the loop spends itself refusing, and requests queue in socket buffers
where no admission control can see them.

Two doors, one rule (`refusal`):
- `GatedHttpProtocol` (gate_protocol.py): uvicorn's httptools protocol with one step added.
  Once the request head is parsed, a refused request is answered with one write of a
  response formatted once per reason and Retry-After: no ASGI task, Starlette, body
  handling, exception or message per refusal. The numbers are in docs/serve.md ("Overload").
- `AdmissionGate`: an ASGI callable around the application, with the same refusal for
  requests that reach the application by another way (the h11 protocol, pipelining); it
  skips those the protocol has checked (`CHECKED` in their scope).

What can be decided without the body: the queue is full (`max_queue_size`), or more
requests are pending than `max_queue_wait_ms`'s adaptive limit allows. A refusal by the
request's own deadline (its `timeout` parameter is in the body) is made by the batcher after
decoding.

What a refusal costs the server, and where (benchmarks/refusal_cost.py, digits-cnn, one
core): about 25-30 µs of CPU, against 500-650 µs to answer. About 15 µs of it is the
kernel and the event loop (one recv, one send); most of the rest is httptools calling back
into uvicorn for the request line and each header. The refusal itself is a few µs: the
batcher's check, the counts in plain integers (metrics.RequestCounts), and a cached response.
"""

from __future__ import annotations

import http
import time
from dataclasses import dataclass

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from inferopt.serve import protocol
from inferopt.serve.errors import retry_after
from inferopt.serve.repository import ModelVersion, Repository

CHECKED = "inferopt.admission_checked"  # scope key: the protocol's gate let it in already
_MAX_TARGETS = 256  # request targets whose model `Door` remembers
_MAX_RESPONSES = 16  # refusals kept per model version (Retry-After can take many values)


@dataclass(frozen=True)
class Refusal:
    """A 429, formatted once and written as it is while its reason and Retry-After hold."""

    status: int
    body: bytes
    retry_after: str
    http_response: bytes  # the whole HTTP/1.1 response, status line to body

    @classmethod
    def of(cls, status: int, message: str, retry_after: str) -> Refusal:
        body = orjson.dumps({"error": message})
        head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}".encode()]
        head += [name + b": " + value for name, value in _headers(body, retry_after)]
        return cls(status, body, retry_after, b"\r\n".join(head) + b"\r\n\r\n" + body)

    def headers(self) -> list[tuple[bytes, bytes]]:
        return _headers(self.body, self.retry_after)


def _headers(body: bytes, retry_after: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", protocol.JSON_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", retry_after.encode()),
    ]


def refusal(served: ModelVersion) -> Refusal | None:
    """The refusal for an inference request to `served` arriving now, or None to let it in.
    The batcher counts the rejection reason; the caller counts the outcome once it has
    answered. Under overload this runs for most requests, so the response is formatted once
    per reason and Retry-After and then reused: the batcher's message for a refusal by the
    queue depends on nothing else."""
    batcher = served.batcher
    now = time.monotonic()
    reason = batcher.refused(1, None, now)
    if reason is None:
        return None
    key = (reason, retry_after(batcher.predicted_wait(1)))
    cached = served.refusals.get(key)
    if cached is None:
        refused = batcher.overloaded(reason, 1, None, now)
        cached = Refusal.of(refused.status, refused.message, str(key[1]))
        if len(served.refusals) >= _MAX_RESPONSES:
            served.refusals.clear()
        served.refusals[key] = cached
    return cached


def inferred_model(path: str) -> str | None:
    """The model of an inference request's path, else None."""
    params = protocol.inference_path(path)
    return None if params is None else params["model"]


class Door:
    """Which served model an HTTP request is inference for, from its raw method and target,
    as the protocol has them. The model name of each target is remembered (clients send the
    same few again and again); the version serving it is looked up each time."""

    def __init__(self, repository: Repository) -> None:
        self._repository = repository
        self._models: dict[bytes, str | None] = {}

    def served(self, method: bytes, target: bytes) -> ModelVersion | None:
        if method != b"POST":
            return None
        try:
            model = self._models[target]
        except KeyError:
            model = self._model(target)
        return None if model is None else self._repository.serving(model)

    def _model(self, target: bytes) -> str | None:
        # Raw, not percent-decoded as the router's path is: a path that needs decoding
        # finds no model here, and is checked by the ASGI gate instead.
        model = inferred_model(target.partition(b"?")[0].decode("latin-1"))
        if len(self._models) >= _MAX_TARGETS:  # arbitrary targets must not grow it forever
            self._models.clear()
        self._models[target] = model
        return model


class AdmissionGate:
    """ASGI: refuse before the wrapped application sees the request."""

    def __init__(self, app: ASGIApp, repository: Repository) -> None:
        self.app = app
        self.repository = repository

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and CHECKED not in scope:
            start = time.perf_counter()
            model = inferred_model(scope["path"])
            served = self.repository.serving(model) if model is not None else None
            refused = refusal(served) if served is not None else None
            if served is not None and refused is not None:
                start_message = {"type": "http.response.start", "status": refused.status}
                await send({**start_message, "headers": refused.headers()})
                await send({"type": "http.response.body", "body": refused.body})
                served.metrics.finished("rejected", time.perf_counter() - start)
                return
        await self.app(scope, receive, send)
