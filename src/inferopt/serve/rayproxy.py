"""A middleware for Ray Serve's HTTP proxy: an inference request whose replica died before
answering is sent again, so a replica lost to SIGKILL, the OOM killer or a lost node costs
its in-flight requests a retry instead of a 500.

Why in the proxy: Ray fails the requests in flight on a dead replica (its router does not
retry them), and nothing in the dead replica can. Inference requests have no side effects,
so replaying one is safe, as an Envoy route's `retry_on: reset` would for idempotent calls.
The proxy loads it from the environment Ray starts with:

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=inferopt.serve.rayproxy:middlewares ray start ...

(`inferopt serve --ray` sets it when it starts Ray itself.) gRPC has no such hook in Ray's
proxy: gRPC clients retry UNAVAILABLE with a retry policy (docs/scaleout.md).

Which failures are retried, before anything reached the client: Ray's proxy returning with
no response or raising (the replica died with the request), or a status of 500 or more
without the replica's header (`REPLICA_HEADER`): it came from Ray, not from our app, so no
model answered (a model's own error carries the header and is passed on)."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferopt.serve import protocol

CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "inferopt.serve.rayproxy:middlewares"
REPLICA_HEADER = b"x-inferopt-replica"  # set by every replica on every response
PROXY_HEADER = b"x-inferopt-proxy"  # set by this middleware: the proxy retries lost requests
RETRIES = 3
BACKOFF_S = (0.05, 0.2, 0.5)  # Ray's router needs a moment to drop the dead replica


def middlewares() -> list[Middleware]:
    """What Ray's proxy calls (through `CALLBACK_ENV`) for its middlewares."""
    return [Middleware(RetryLostRequests)]


class RetryLostRequests:
    """ASGI: replay an inference POST (body buffered) up to `RETRIES` times while the
    answer is a Ray-side failure (>= 500 without `REPLICA_HEADER`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_inference(scope):
            await self.app(scope, receive, _marked(send))
            return
        body = await _read_body(receive)
        for attempt in range(RETRIES + 1):
            last = attempt == RETRIES
            answered = await self._attempt(scope, body, receive, send, forward_failure=last)
            if answered:
                return
            await asyncio.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])

    async def _attempt(
        self, scope: Scope, body: bytes, receive: Receive, send: Send, forward_failure: bool
    ) -> bool:
        """One try; False when it was a Ray-side failure that was swallowed for a retry.

        The response is held until its last body message: a replica that dies after its
        response start but before the end of its body would otherwise leave the client a
        start with a truncated body (seen under load: "peer closed connection without
        sending complete message body"). Inference answers are small, so holding one costs
        nothing that matters."""
        sent_body = False
        held: list[Message] = []
        lost = False
        complete = False

        async def replay() -> Message:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: only the client's disconnect

        async def relay(message: Message) -> None:
            nonlocal lost, complete
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                lost = message["status"] >= 500 and REPLICA_HEADER not in headers
            held.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                complete = True
                if not lost or forward_failure:
                    marked = _marked(send)
                    for kept in held:
                        await marked(kept)

        try:
            await self.app(scope, replay, relay)
        except Exception:
            # Ray's proxy raises when the replica died with the request (ActorDiedError and
            # kin); nothing has reached the client unless the whole answer had.
            if complete or forward_failure:
                raise
            return False
        if not complete:
            # No answer, or one cut short: the replica died with the request, and nothing
            # reached the client (on the last try uvicorn then answers 500).
            return forward_failure
        return not (lost and not forward_failure)


def _is_inference(scope: Scope) -> bool:
    return (
        scope["type"] == "http"
        and scope["method"] == "POST"
        and protocol.inference_path(scope["path"]) is not None
    )


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(parts)  # the client left; the app sees an empty body and its close
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


def _marked(send: Send) -> Send:
    """`send` with PROXY_HEADER added to the response start: how `deploy` tells that the
    cluster's proxies run this middleware."""

    async def marked(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers: list[Any] = list(message.get("headers", []))
            headers.append((PROXY_HEADER, b"retry"))
            message = {**message, "headers": headers}
        await send(message)

    return marked
