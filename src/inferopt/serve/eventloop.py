"""The event loop the server (and the load generator) run on: uvloop when installed (it comes
with `uvicorn[standard]`), else asyncio's own.

Why it matters: on the HTTP path the event loop thread is the bottleneck, not the model.
uvloop's transports are written in C and coalesce the writes of one loop iteration (a
response's head and body) into one system call; asyncio's selector loop makes a `send` per
write. Measured on digits-cnn over HTTP, the server's CPU per request dropped by about a
third (see docs/serve.md, "Measured").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop constructor, or None (asyncio's default) when uvloop is not installed."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], *, fast: bool = True) -> T:
    """`asyncio.run(main)`, on uvloop when `fast` and uvloop is installed."""
    factory = loop_factory() if fast else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def name() -> str:
    """The running loop's kind, for logs and benchmark records."""
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
