"""A fake text-generation server for the streaming bench's tests: Starlette under uvicorn on
loopback (port 0) in a thread, speaking OpenAI completions and chat completions and the Open
Inference Protocol's generate_stream, emitting tokens at a known pace: the first FIRST_S after
the request arrives, then one every GAP_S, `max_tokens` in all, each on an absolute deadline
from the request's arrival so sleeps do not drift.

The model name picks a behaviour; the server counts requests per model (from 0), so the
behaviours that vary per request do so deterministically:

    steady  every request at the known pace
    mixed   i % 4 == 1: first token after SLOW_FIRST_S; i % 4 == 2: every GAP_SLOW_S
    pairs   each chunk carries two tokens' text; usage says so (OpenAI only)
    reject  even i: 429 with an error body (OpenAI's or the OIP's shape)
    broken  even i: an event that is not JSON, after two tokens
    cut     even i: the connection breaks after two tokens

Tests import this by path (sys.path), as tests/fixtures modules are.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

FIRST_S, GAP_S = 0.050, 0.010
SLOW_FIRST_S, GAP_SLOW_S = 0.150, 0.030


class FakeStreams:
    """Start with `with FakeStreams() as fake:`; `fake.url` is http://127.0.0.1:PORT and
    `fake.bodies` every request's JSON body (with "path"), in arrival order."""

    def __init__(self) -> None:
        routes = [
            Route("/", self.root),
            Route("/v1/completions", self.openai, methods=["POST"]),
            Route("/v1/chat/completions", self.openai, methods=["POST"]),
            Route("/v2/models/{name}/generate_stream", self.oip, methods=["POST"]),
        ]
        config = uvicorn.Config(
            Starlette(routes=routes), host="127.0.0.1", port=0, log_level="critical", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="fake-streams", daemon=True)
        self.bodies: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self.url = ""

    def __enter__(self) -> FakeStreams:
        self.thread.start()
        deadline = time.monotonic() + 10.0
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the fake server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10.0)

    def reset(self) -> None:
        """Forget the requests so far: counting starts from 0 again."""
        self.bodies.clear()
        self.counts.clear()

    async def root(self, request: Request) -> Response:
        return PlainTextResponse("fake streams")

    def _index(self, model: str) -> int:
        index = self.counts[model]
        self.counts[model] += 1
        return index

    async def openai(self, request: Request) -> Response:
        arrived = time.monotonic()
        body = await request.json()
        self.bodies.append({**body, "path": request.url.path})
        model, chat = body["model"], request.url.path.endswith("/chat/completions")
        index = self._index(model)
        if model == "reject" and index % 2 == 0:
            error = {"error": {"message": "too many requests, slow down", "code": 429}}
            return JSONResponse(error, status_code=429)
        events = _openai_events(model, index, body["max_tokens"], chat, arrived)
        return StreamingResponse(events, media_type="text/event-stream")

    async def oip(self, request: Request) -> Response:
        arrived = time.monotonic()
        body = await request.json()
        model = request.path_params["name"]
        self.bodies.append({**body, "path": request.url.path})
        index = self._index(model)
        if model == "reject" and index % 2 == 0:  # the OIP's error shape
            return JSONResponse({"error": "too many requests, slow down"}, status_code=429)
        tokens = body["parameters"]["max_tokens"]
        events = _oip_events(model, index, tokens, arrived)
        return StreamingResponse(events, media_type="text/event-stream")


def _pace(model: str, index: int) -> tuple[float, float]:
    if model == "mixed" and index % 4 == 1:
        return SLOW_FIRST_S, GAP_S
    if model == "mixed" and index % 4 == 2:
        return FIRST_S, GAP_SLOW_S
    return FIRST_S, GAP_S


async def _tokens(model: str, index: int, count: int, arrived: float) -> AsyncIterator[int]:
    """Token numbers 0..count-1, each at its deadline; the failing behaviours fail after 2."""
    first, gap = _pace(model, index)
    for k in range(count):
        delay = arrived + first + k * gap - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if k == 2 and index % 2 == 0 and model == "cut":
            raise RuntimeError("the fake server breaks the connection")
        yield k


def _sse(payload: object) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


async def _openai_events(
    model: str, index: int, count: int, chat: bool, arrived: float
) -> AsyncIterator[bytes]:
    per_chunk = 2 if model == "pairs" else 1
    if chat:  # the role comes first, at once, without text: it must not count as the first token
        yield _sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    async for k in _tokens(model, index, count // per_chunk, arrived):
        if k == 2 and index % 2 == 0 and model == "broken":
            yield b"data: {this is not json\n\n"
        text = "".join(f" t{per_chunk * k + j}" for j in range(per_chunk))
        choice = {"index": 0, "delta": {"content": text}} if chat else {"index": 0, "text": text}
        yield _sse({"choices": [choice], "usage": None})
    yield _sse({"choices": [], "usage": {"completion_tokens": per_chunk * (count // per_chunk)}})
    yield b"data: [DONE]\n\n"


async def _oip_events(model: str, index: int, count: int, arrived: float) -> AsyncIterator[bytes]:
    async for k in _tokens(model, index, count, arrived):
        if k == 2 and index % 2 == 0 and model == "broken":
            yield b"data: {this is not json\n\n"
        yield _sse({"model_name": model, "text_output": f" t{k}"})
