"""The Open Inference Protocol's generate extension (as Triton serves it) over the
repository's generators:

    POST /v2/models/{m}[/versions/{v}]/generate         {"text_input": "...", "parameters": {...}}
    POST /v2/models/{m}[/versions/{v}]/generate_stream  the same, answered as server-sent events

The answer is `{"model_name", "model_version", "text_output", "finish_reason",
"prompt_tokens", "completion_tokens"}`; a stream sends one such event per text piece (the
figures in the last only). Refusals are `{"error": "..."}`: 422 for a field that is wrong (it
is named), 404 an unknown model, 429 overloaded (Retry-After), 424 a generation that failed,
504 a deadline that passed; a stream that fails after it started ends with an error event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from inferopt.generative.generate import GenerationConfig
from inferopt.serve import fields
from inferopt.serve.context import Context
from inferopt.serve.errors import ServeError
from inferopt.serve.fields import InvalidField
from inferopt.serve.generators import GeneratorVersion, find, outcome, refused
from inferopt.serve.scheduler import Finish, Stream
from inferopt.serve.streaming import EventStream, event, whole_text

JsonBody = Callable[[Request], Awaitable[dict[str, Any]]]
DEFAULT_TOKENS = 16  # max_tokens when the request sets none (as OpenAI's completions)
UNPROCESSABLE = 422  # a request that parses but whose fields are wrong
PARAMETERS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "ignore_eos",
              "stream", "timeout")  # fmt: skip
# A generation that did not end well: the error and the status of a whole answer.
_ENDED = {
    "deadline": ("the request's deadline passed before its generation ended", 504),
    "error": ("the generation failed", 424),
    "cancelled": ("the client left", 499),
}


class GenerateApi:
    """The handlers; `json_body` as in OpenAiApi."""

    def __init__(self, context: Context, json_body: JsonBody) -> None:
        self.context = context
        self.repository = context.repository
        self.json_body = json_body

    def routes(self) -> list[Route]:
        routes = []
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            routes += [
                Route(prefix + "/generate", self.generate, methods=["POST"]),
                Route(prefix + "/generate_stream", self.generate_stream, methods=["POST"]),
            ]
        return routes

    async def generate(self, request: Request) -> Response | EventStream:
        return await self._answer(request, streaming=False)

    async def generate_stream(self, request: Request) -> Response | EventStream:
        return await self._answer(request, streaming=True)

    async def _answer(self, request: Request, streaming: bool) -> Response | EventStream:
        start = time.perf_counter()
        served: GeneratorVersion | None = None
        try:
            params = request.path_params
            served = find(self.repository, params["model"], params.get("version"))
            body = await self.json_body(request)
            # Off the event loop: tokenizing a prompt of megabytes would stall every stream.
            ids, config = await asyncio.to_thread(_checked, served, body)
            stream = served.submit(ids, config, _deadline(body, request, served))
        except ServeError as exc:
            self._count(served, refused(exc), start)
            return _error(exc)
        head = {"model_name": served.name, "model_version": served.version}

        def ended() -> Finish:
            finish = stream.finish or Finish("cancelled", stream.prompt_tokens, 0)
            self._count(served, outcome(finish), start)
            return finish

        if streaming:
            return EventStream(_events(head, stream), stream, ended)
        text = await whole_text(stream, request.receive)
        finish = ended()
        if finish.reason in _ENDED:
            message, status = _ENDED[finish.reason]
            return _json({"error": _message(message, finish)}, status)
        return _json({**head, "text_output": text, **_figures(finish)})

    def _count(self, served: GeneratorVersion | None, result: str, start: float) -> None:
        if served is None:
            self.context.metrics.unknown_model(result)
        else:
            served.metrics.finished(result, time.perf_counter() - start)


def _parameters(body: dict[str, Any]) -> dict[str, Any]:
    params = body.get("parameters")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise InvalidField("parameters", "must be an object")
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise InvalidField(unknown[0], f"is not a parameter of generate; it takes {PARAMETERS}")
    return params


def _checked(served: GeneratorVersion, body: dict[str, Any]) -> tuple[list[int], GenerationConfig]:
    """The prompt's ids and how to generate. Raises InvalidField."""
    prompt = fields.text(body, "text_input")
    params = _parameters(body)
    tokens = fields.integer(params, "max_tokens", 1, DEFAULT_TOKENS) or DEFAULT_TOKENS
    config = fields.sampling(params, tokens)
    ids = served.generator.prompt_ids(prompt)
    fields.checked_length(served.generator, ids, tokens, "text_input", "max_tokens")
    return ids, config


def _deadline(body: dict[str, Any], request: Request, served: GeneratorVersion) -> float | None:
    """From `timeout` (microseconds, as /infer's), else as fields.deadline."""
    timeout_us = fields.integer(_parameters(body), "timeout", 1, None)
    if timeout_us is not None:
        return time.monotonic() + timeout_us / 1e6
    return fields.deadline(request.headers, served.config.default_timeout_ms)


async def _events(head: dict[str, str], stream: Stream) -> AsyncGenerator[bytes, None]:
    async for piece in stream:
        yield event(orjson.dumps({**head, "text_output": piece}))
    finish = stream.finish
    assert finish is not None  # the stream has ended
    if finish.reason in _ENDED:  # headers went out long ago: the error is an event
        yield event(orjson.dumps({"error": _message(_ENDED[finish.reason][0], finish)}))
    else:
        yield event(orjson.dumps({**head, "text_output": "", **_figures(finish)}))


def _figures(finish: Finish) -> dict[str, Any]:
    return {"finish_reason": finish.reason, "prompt_tokens": finish.prompt_tokens,
            "completion_tokens": finish.completion_tokens}  # fmt: skip


def _message(message: str, finish: Finish) -> str:
    return f"{message}: {finish.message}" if finish.reason == "error" else message


def _error(exc: ServeError) -> Response:
    status = UNPROCESSABLE if isinstance(exc, InvalidField) else exc.status
    retry = exc.retry_after_header()
    return _json({"error": exc.message}, status, {"retry-after": retry} if retry else None)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type="application/json")
