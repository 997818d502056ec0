"""The admission gate inside uvicorn's httptools protocol: the cheapest place to refuse an
HTTP request in this server (see gate.py for why, and for the rule).

It subclasses uvicorn's `HttpToolsProtocol` and uses its per-request state (`url`, `parser`,
`cycle`, `transport`, `on_response_complete`), so it is tied to uvicorn's httptools
implementation; `tests/serve/test_gate.py` exercises keep-alive, bodies and pipelining
through it, so an incompatible uvicorn fails there.
"""

from __future__ import annotations

import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from inferopt.serve.gate import check
from inferopt.serve.repository import Repository


class GatedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering refused requests as soon as their head is
    parsed. Built per server by `gated_protocol`, which binds the repository."""

    repository: Repository
    _refusing = False  # the current request was refused: ignore its body

    def on_headers_complete(self) -> None:
        if self.cycle is None or self.cycle.response_complete:  # not behind a pipelined one
            start = time.perf_counter()
            path = self.url.partition(b"?")[0].decode("latin-1")
            refusal = check(self.repository, self.parser.get_method().decode("ascii"), path)
            if refusal is not None:
                self.transport.write(refusal.http_response())
                refusal.counted(time.perf_counter() - start)
                self._refusing = True
                return
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


def gated_protocol(repository: Repository) -> type[GatedHttpProtocol]:
    """A protocol class for `uvicorn.Config(http=...)` that refuses for `repository`."""
    return type("GatedHttpProtocol", (GatedHttpProtocol,), {"repository": repository})
