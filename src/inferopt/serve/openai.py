"""OpenAI's completions API over the repository's generators, for OpenAI's clients:
`GET /v1/models[/{model}]`, `POST /v1/completions` and `POST /v1/chat/completions`, whole or
streamed as server-sent events. The model is the repository's name (its serving version).

Requests are checked as OpenAI's servers check them: fields this server does not know are
ignored, a known field of the wrong type is a 400 naming it (`param`), and a feature it does
not have (n > 1, logprobs, echo, penalties, tools...) is refused rather than ignored.
Refusals have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from inferopt.errors import InferoptError
from inferopt.generative.generate import GenerationConfig
from inferopt.serve import fields
from inferopt.serve.context import Context
from inferopt.serve.errors import ServeError
from inferopt.serve.fields import InvalidField
from inferopt.serve.generators import GeneratorVersion, find, outcome, refused
from inferopt.serve.scheduler import Finish, Stream
from inferopt.serve.streaming import EventStream, event, whole_text

log = logging.getLogger("inferopt.serve")
JsonBody = Callable[[Request], Awaitable[dict[str, Any]]]
COMPLETION_DEFAULT_TOKENS = 16  # OpenAI's default max_tokens of /v1/completions
ROLES = ("system", "developer", "user", "assistant")
DONE = event(b"[DONE]")
# Known fields this server cannot honour: refused unless they hold their neutral value.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "echo": (False,), "best_of": (1,), "suffix": ("",), "logprobs": (False,),
    "top_logprobs": (0,), "presence_penalty": (0,), "frequency_penalty": (0,),
    "logit_bias": ({},), "tools": ([],), "functions": ([],), "tool_choice": ("none", "auto"),
    "response_format": ({"type": "text"},),
}  # fmt: skip
_TYPES = {429: "rate_limit_error", 500: "server_error", 503: "server_error", 504: "server_error"}
_CODES = {404: "model_not_found", 429: "rate_limit_exceeded", 503: "not_ready", 504: "timeout"}
_ENDED = {"deadline": ("the request's deadline passed before its generation ended", 504),
          "error": ("the generation failed", 500)}  # fmt: skip


@dataclass(frozen=True)
class Job:
    """One checked request: what to generate and how to answer."""

    ids: list[int]
    config: GenerationConfig
    stream: bool
    include_usage: bool


class OpenAiApi:
    """The handlers; `json_body` reads a request's body as a JSON object (size limit and
    Content-Encoding as every other endpoint), raising BadRequest otherwise."""

    def __init__(self, context: Context, json_body: JsonBody) -> None:
        self.context = context
        self.repository = context.repository
        self.json_body = json_body

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{model}", self.model, methods=["GET"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
        ]

    async def models(self, request: Request) -> Response:
        served = [v for v in self.repository.served() if isinstance(v, GeneratorVersion)]
        return _json({"object": "list", "data": [_model(v) for v in served]})

    async def model(self, request: Request) -> Response:
        try:
            return _json(_model(find(self.repository, request.path_params["model"])))
        except ServeError as exc:
            return error(exc)

    async def completions(self, request: Request) -> Response | EventStream:
        return await self._answer(request, chat=False)

    async def chat_completions(self, request: Request) -> Response | EventStream:
        return await self._answer(request, chat=True)

    async def _answer(self, request: Request, chat: bool) -> Response | EventStream:
        start = time.perf_counter()
        served: GeneratorVersion | None = None
        try:
            body = await self.json_body(request)
            served = find(self.repository, fields.text(body, "model"))
            # Off the event loop: tokenizing a prompt of megabytes would stall every stream.
            job = await asyncio.to_thread(_chat_job if chat else _completion_job, served, body)
            deadline = fields.deadline(request.headers, served.config.default_timeout_ms)
            stream = served.submit(job.ids, job.config, deadline)
        except ServeError as exc:
            self._count(served, refused(exc), start)
            return error(exc)
        reply = Reply(served.name, chat, job.include_usage)
        if job.stream:
            events = _events(reply, stream)
            return EventStream(events, stream, lambda: self._ended(served, stream, start))
        text = await whole_text(stream, request.receive)
        finish = self._ended(served, stream, start)
        if finish.reason in ("stop", "length"):
            return _json(reply.whole(text, finish))
        return _failed(finish)

    def _ended(self, served: GeneratorVersion, stream: Stream, start: float) -> Finish:
        finish = stream.finish or Finish("cancelled", stream.prompt_tokens, 0)
        self._count(served, outcome(finish), start)
        return finish

    def _count(self, served: GeneratorVersion | None, result: str, start: float) -> None:
        if served is None:
            self.context.metrics.unknown_model(result)
        else:
            served.metrics.finished(result, time.perf_counter() - start)


def _completion_job(served: GeneratorVersion, body: dict[str, Any]) -> Job:
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise InvalidField("prompt", "must be a string (arrays of prompts or of token ids are "
                           "not supported)")  # fmt: skip
    ids = served.generator.prompt_ids(prompt)
    tokens = fields.integer(body, "max_tokens", 1, COMPLETION_DEFAULT_TOKENS)
    return _job(served, body, ids, tokens or COMPLETION_DEFAULT_TOKENS, "prompt", "max_tokens")


def _chat_job(served: GeneratorVersion, body: dict[str, Any]) -> Job:
    messages = _messages(body)
    if served.chat_problem is not None:
        raise InvalidField("model", f"cannot take chats: {served.chat_problem}")
    try:
        ids = served.generator.chat_ids(messages)
    except InferoptError as exc:  # the template refuses these messages
        raise InvalidField("messages", str(exc)) from None
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    room = max(1, served.generator.layout.max_context - len(ids))  # default: the rest
    tokens = fields.integer(body, key, 1, room) or room
    return _job(served, body, ids, tokens, "messages", key)


def _job(
    served: GeneratorVersion, body: dict[str, Any], ids: list[int], tokens: int,
    prompt_key: str, max_key: str,
) -> Job:  # fmt: skip
    n = fields.integer(body, "n", 1, 1)
    if n != 1:
        raise InvalidField("n", f"must be 1: one choice per request is supported, got {n}")
    for key, neutral in _NEUTRAL.items():
        if body.get(key) is not None and body[key] not in neutral:
            allowed = " or ".join(repr(value) for value in neutral)
            raise InvalidField(key, f"is not supported (only {allowed})")
    config = fields.sampling(body, tokens)
    fields.checked_length(served.generator, ids, tokens, prompt_key, max_key)
    stream = fields.boolean(body, "stream")
    options = body.get("stream_options")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise InvalidField("stream_options", "must be an object")
    return Job(ids, config, stream, fields.boolean(options, "include_usage"))


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    """The conversation as the chat template takes it; content parts of type text joined."""
    value = body.get("messages")
    if not isinstance(value, list) or not value:
        raise InvalidField("messages", "must be a non-empty array of messages")
    messages = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidField(where, "must be an object with 'role' and 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise InvalidField(f"{where}.role", f"must be one of {', '.join(ROLES)}")
        messages.append({"role": role, "content": _content(message.get("content"), where)})
    return messages


def _content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else [None]
    texts = [p.get("text") if isinstance(p, dict) and p.get("type") == "text" else None
             for p in parts]  # fmt: skip
    if not all(isinstance(t, str) for t in texts):
        raise InvalidField(f"{where}.content", "must be a string or an array of text parts")
    return "".join(str(t) for t in texts)


class Reply:
    """The bodies of one answer: whole, or as stream chunks."""

    def __init__(self, model: str, chat: bool, include_usage: bool) -> None:
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.object = "chat.completion" if chat else "text_completion"
        self.created = int(time.time())
        self.model = model
        self.chat = chat
        self.include_usage = include_usage

    def whole(self, text: str, finish: Finish) -> dict[str, Any]:
        key = {"message": {"role": "assistant", "content": text}} if self.chat else {"text": text}
        choice = {"index": 0, **key, "logprobs": None, "finish_reason": finish.reason}
        return {**self._head(self.object), "choices": [choice], "usage": usage(finish)}

    def chunk(self, text: str | None, finish: Finish | None = None, role: bool = False) -> bytes:
        """A stream chunk: `text` (None: none, as in the last chunk), and how it ended."""
        if self.chat:
            delta = {"role": "assistant", "content": text} if role else {}
            key: dict[str, Any] = {"delta": delta if text is None else {**delta, "content": text}}
        else:
            key = {"text": text or ""}
        reason = None if finish is None else finish.reason
        choice = {"index": 0, **key, "logprobs": None, "finish_reason": reason}
        chunk = {**self._head(self.object + ".chunk" if self.chat else self.object),
                 "choices": [choice]}  # fmt: skip
        if self.include_usage:
            chunk["usage"] = None
        return event(orjson.dumps(chunk))

    def usage_chunk(self, finish: Finish) -> bytes:
        kind = self.object + ".chunk" if self.chat else self.object
        return event(orjson.dumps({**self._head(kind), "choices": [], "usage": usage(finish)}))

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}


async def _events(reply: Reply, stream: Stream) -> AsyncGenerator[bytes, None]:
    if reply.chat:  # OpenAI's first chat chunk says the role, with empty content
        yield reply.chunk("", role=True)
    async for piece in stream:
        yield reply.chunk(piece)
    finish = stream.finish
    assert finish is not None  # the stream has ended
    if finish.reason in ("stop", "length"):
        yield reply.chunk(None, finish)
        if reply.include_usage:
            yield reply.usage_chunk(finish)
    elif finish.reason in _ENDED:  # headers went out long ago: the error is an event
        message, status = _ENDED[finish.reason]
        yield event(orjson.dumps(_error_body(f"{message}{_detail(finish)}", status, None)))
    yield DONE


def usage(finish: Finish) -> dict[str, Any]:
    """OpenAI's usage object; prompt_tokens_details.cached_tokens counts the prompt tokens
    served from the prefix cache, as OpenAI's and vLLM's do."""
    prompt, completion = finish.prompt_tokens, finish.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": finish.cached_tokens}}  # fmt: skip


def error(exc: ServeError) -> Response:
    """A refusal in OpenAI's shape, with Retry-After when the server is busy."""
    param = exc.param if isinstance(exc, InvalidField) else ("model" if exc.status == 404 else None)
    retry = exc.retry_after_header()
    headers = {"retry-after": retry} if retry else None
    return _json(_error_body(exc.message, exc.status, param), exc.status, headers)


def _failed(finish: Finish) -> Response:
    message, status = _ENDED.get(finish.reason, ("the client left", 499))
    return _json(_error_body(f"{message}{_detail(finish)}", status, None), status)


def _detail(finish: Finish) -> str:
    return f": {finish.message}" if finish.message and finish.reason == "error" else ""


def _error_body(message: str, status: int, param: str | None) -> dict[str, Any]:
    kind = _TYPES.get(status, "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param,
                      "code": _CODES.get(status)}}  # fmt: skip


def _model(served: GeneratorVersion) -> dict[str, Any]:
    return {
        "id": served.name,
        "object": "model",
        "created": served.created,
        "owned_by": "inferopt",
        "max_model_len": served.generator.layout.max_context,
    }


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type="application/json")
