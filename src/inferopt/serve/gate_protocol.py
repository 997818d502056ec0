"""The admission gate inside uvicorn's httptools protocol: the cheapest place to refuse an
HTTP request in this server (see gate.py for why, and for the rule).

It subclasses uvicorn's `HttpToolsProtocol` and uses its per-request state (`url`, `parser`,
`cycle`, `transport`, `pipeline`, `flow`) and replaces its keep-alive timer handling, so it
is tied to uvicorn's httptools implementation; `tests/serve/test_gate.py` exercises
keep-alive, bodies and pipelining through it, so an incompatible uvicorn fails there.
"""

from __future__ import annotations

import asyncio
import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from inferopt.serve.gate import CHECKED, Door, refusal
from inferopt.serve.repository import Repository


class GatedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering refused requests as soon as their head is
    parsed. Built per server by `gated_protocol`, which binds the door."""

    door: Door
    _refusing = False  # the current request was refused: ignore its body
    _idle_since: float | None = None  # loop time since which it has had nothing to do

    def on_headers_complete(self) -> None:
        if self.cycle is None or self.cycle.response_complete:  # not behind a pipelined one
            start = time.perf_counter()
            served = self.door.served(self.parser.get_method(), self.url)
            refused = refusal(served) if served is not None else None
            if served is not None and refused is not None:
                self.transport.write(refused.http_response)
                served.metrics.finished("rejected", time.perf_counter() - start)
                self._refusing = True
                return
            self.scope[CHECKED] = True  # type: ignore[literal-required]
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refusing:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refusing:
            super().on_message_complete()
            return
        self._refusing = False
        if not self.parser.should_keep_alive():  # HTTP/1.0, or "Connection: close"
            self.transport.close()
            return
        self.on_response_complete()  # keep-alive timer, pipelined requests: as uvicorn does

    # Keep-alive, lazily. uvicorn arms a timer when a response completes and cancels it when
    # the next request's data arrives: two timer operations per request, a tenth of what a
    # refusal costs. Here an armed timer stays armed: data marks the connection busy, a
    # completed response notes when it went idle, and the timer, when it fires, closes the
    # connection only if it has been idle for the whole timeout, else waits out the rest.

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._idle_since = self.loop.time()  # idle until its first request arrives

    def _unset_keepalive_if_required(self) -> None:  # uvicorn calls it when data arrives
        self._idle_since = None

    def on_response_complete(self) -> None:
        """uvicorn's, but the keep-alive timer is armed only when it is not already."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._idle_since = None
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self._keep_alive_for(self.timeout_keep_alive)

    def timeout_keep_alive_handler(self) -> None:
        self.timeout_keep_alive_task = None
        if self._idle_since is None:  # busy: the response that ends it arms the timer again
            return
        left = self._idle_since + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self._keep_alive_for(left)
        elif not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.timeout_keep_alive_task is not None:  # let the protocol go now, not later
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None

    def _keep_alive_for(self, seconds: float) -> None:
        handler = self.timeout_keep_alive_handler
        self.timeout_keep_alive_task = self.loop.call_later(seconds, handler)


def gated_protocol(repository: Repository) -> type[GatedHttpProtocol]:
    """A protocol class for `uvicorn.Config(http=...)` that refuses for `repository`."""
    return type("GatedHttpProtocol", (GatedHttpProtocol,), {"door": Door(repository)})
