"""A generation's text to an HTTP client: as server-sent events while it is made, or whole at
the end. Either way a client that disconnects cancels its generation at once, so that its
KV-cache slot goes to the next request instead of finishing text nobody reads.

Why watch `receive` rather than wait for a failed write: uvicorn drops writes to a closed
connection silently, and a stream between two pieces writes nothing; the ASGI
`http.disconnect` message comes as soon as the connection closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable

from starlette.types import Receive, Scope, Send

from inferopt.serve.scheduler import Stream

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: pass each event on, do not buffer the response
]


def event(data: bytes) -> bytes:
    """One server-sent event carrying `data` (JSON: it holds no raw newline)."""
    return b"data: " + data + b"\n\n"


async def _cancel_on_disconnect(stream: Stream, receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    stream.cancel()  # the scheduler ends it (reason "cancelled") and frees its slot


class EventStream:
    """ASGI response: `events` (whole server-sent events) written as they come; the client
    leaving cancels `stream`, whose end ends `events`. `on_end` runs once it is over, however
    it ended (to count the request's outcome)."""

    def __init__(
        self, events: AsyncGenerator[bytes, None], stream: Stream, on_end: Callable[[], object]
    ) -> None:
        self.events = events
        self.stream = stream
        self.on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.ensure_future(_cancel_on_disconnect(self.stream, receive))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            async for data in self.events:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            # Also when this task is cancelled (a server that stops waiting): free the slot.
            if self.stream.finish is None:
                self.stream.cancel()
            watcher.cancel()
            await self.events.aclose()
            self.on_end()


async def whole_text(stream: Stream, receive: Receive) -> str:
    """The stream's whole text once it ends (`stream.finish` then says how). A client that
    disconnects first cancels it: the text is then what was made until then."""
    watcher = asyncio.ensure_future(_cancel_on_disconnect(stream, receive))
    try:
        return await stream.text()
    finally:
        watcher.cancel()
        if stream.finish is None:  # this task was cancelled: nobody waits for the text
            stream.cancel()
