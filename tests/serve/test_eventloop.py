"""The server's event loop: uvloop when installed, asyncio's own otherwise."""

from __future__ import annotations

import importlib.util

from inferopt.serve import eventloop


async def kind() -> str:
    return eventloop.name()


def test_run_uses_uvloop_when_it_is_installed() -> None:
    expected = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    assert eventloop.run(kind()) == expected
    assert eventloop.run(kind(), fast=False) == "asyncio"
