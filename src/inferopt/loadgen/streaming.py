"""One streaming text-generation request, timed chunk by chunk: OpenAI-compatible
completions and chat completions (`POST /v1/completions`, `/v1/chat/completions` with
"stream": true) and the Open Inference Protocol generate extension (`POST
/v2/models/NAME/generate_stream`, vLLM and Triton). All three answer with server-sent events.
Requests go through http1's keep-alive Pool, not httpx, for its lower CPU per request (the
generator shares the cores with the server; see http1's docstring); only check() uses httpx.

Like client.py, a request never raises: it ends as a Timing whose outcome is "ok", the HTTP
status of a refusal ("429", "503", ...), or a kind of failure: "timeout" (past --timeout),
"disconnect" (the connection failed or broke mid-stream), "malformed" (an event that is not
the API's JSON, or an OpenAI stream without `data: [DONE]`), "stream_error" (the server put an
error object in the stream) or "empty" (a stream without any text).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import orjson

from inferopt.loadgen.http1 import HttpError, Pool, encode_post
from inferopt.loadgen.inputs import BenchError
from inferopt.loadgen.stats import Tally

Api = Literal["openai-completions", "openai-chat", "oip-generate"]
APIS: tuple[Api, ...] = ("openai-completions", "openai-chat", "oip-generate")
KINDS = ("timeout", "disconnect", "malformed", "stream_error", "empty", "dropped")
_PATHS = {"openai-completions": "/v1/completions", "openai-chat": "/v1/chat/completions"}
_DONE = "[DONE]"
# No Accept-Encoding: the body must come as sent, uncompressed, to be read piece by piece.
_HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}
_MESSAGE_CHARS = 300  # of a server's error message, kept to say why requests failed
DRAIN_S = 1.0  # how long the end of a body may come after its [DONE]


@dataclass(frozen=True)
class Timing:
    """How one request went. Times in seconds from `sent` (the scheduled send in an open
    loop, the send in a closed one); NaN where undefined (no text arrived)."""

    sent: float  # seconds from the run's start
    outcome: str  # "ok", an HTTP status, or one of KINDS
    e2e: float  # to the end of the stream, or to the failure
    ttft: float = math.nan  # to the first chunk that carried text
    itl: tuple[float, ...] = ()  # gaps between successive text chunks
    output_tokens: int = 0  # usage.completion_tokens when sent, else the text chunks

    @property
    def tpot(self) -> float:
        """Seconds per output token after the first; NaN with fewer than 2 tokens."""
        if self.output_tokens < 2:
            return math.nan
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


class _Failure(Exception):
    """A request that ended badly: its outcome kind and the reason, in one line."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class StreamClient:
    """Requests to one server and model through one keep-alive connection pool. `url`:
    host:port, or http(s)://host:port[/prefix]; `connections`: the requests the caller runs
    at once, the most idle connections kept (a request never waits for a connection: it
    opens one when none is idle).

    Raises:
        BenchError: `url` is not an http(s) address with a host.
    """

    def __init__(
        self,
        url: str,
        model: str,
        api: Api,
        max_tokens: int,
        timeout_s: float,
        connections: int,
        *,
        ignore_eos: bool = False,
    ) -> None:
        self.base = url if "://" in url else f"http://{url}"
        self.ignore_eos = ignore_eos
        self.model, self.api, self.max_tokens, self.timeout_s = model, api, max_tokens, timeout_s
        parts = urlsplit(self.base)
        try:
            host, tls = parts.hostname, parts.scheme == "https"
            port = parts.port or (443 if tls else 80)
        except ValueError:  # a port that is not a number in range
            host = None
        if parts.scheme not in ("http", "https") or not host:
            raise BenchError(f"{url}: give the server as host:port or http(s)://host:port")
        self._host = parts.netloc.rpartition("@")[2]  # the Host header, as httpx sent it
        self._prefix = parts.path.rstrip("/")  # the paths below a base path, as httpx's base_url
        self._pool = Pool(host, port, tls=tls, max_idle=connections)
        self.tally = Tally()

    async def check(self) -> None:
        """Raises BenchError when nothing answers at the address (any HTTP answer will do:
        servers differ in what they serve at /)."""
        try:
            async with httpx.AsyncClient(base_url=self.base, timeout=10.0) as http:
                await http.get("/")
        except httpx.HTTPError as exc:
            raise BenchError(f"cannot reach {self.base}: {exc!r}") from exc

    def request(self, prompt: str) -> tuple[str, dict[str, Any]]:
        """The path and JSON body of one streaming request for `prompt`."""
        if self.api == "oip-generate":
            parameters: dict[str, Any] = {"max_tokens": self.max_tokens}
            if self.ignore_eos:
                parameters["ignore_eos"] = True
            oip = {"text_input": prompt, "parameters": parameters}
            return f"/v2/models/{self.model}/generate_stream", oip
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0,
        }
        if self.ignore_eos:
            body["ignore_eos"] = True
        if self.api == "openai-chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        return _PATHS[self.api], body

    async def send(self, prompt: str, start: float, sent: float) -> Timing:
        """Stream one answer; `start + sent` is the monotonic time latency counts from."""
        origin = start + sent
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._stream(prompt, origin, sent)
        except TimeoutError:
            self.tally.add_failure("timeout", lambda: f"no end within {self.timeout_s:g} s")
            return Timing(sent, "timeout", time.monotonic() - origin)
        except _Failure as exc:
            self.tally.add(exc.kind, str(exc))
            return Timing(sent, exc.kind, time.monotonic() - origin)
        except (HttpError, OSError) as exc:  # refused, reset, closed before the end, not HTTP
            self.tally.add("disconnect", _one_line(repr(exc)))
            return Timing(sent, "disconnect", time.monotonic() - origin)

    async def _stream(self, prompt: str, origin: float, sent: float) -> Timing:
        path, body = self.request(prompt)
        request = encode_post(self._host, self._prefix + path, orjson.dumps(body), _HEADERS)
        async with self._pool.stream(request) as response:
            if response.status != 200:
                status, text = (
                    str(response.status),
                    (await response.read()).decode("utf-8", "replace"),
                )
                self.tally.add_failure(status, lambda: _error_message(text))
                return Timing(sent, status, time.monotonic() - origin)
            times: list[float] = []
            usage, done, end = None, False, math.nan
            events = _events(response.lines())
            async for data in events:
                if data == _DONE:
                    done, end = True, time.monotonic()
                    break
                text, tokens = _parse(self.api, data)
                usage = tokens if tokens is not None else usage
                if text:
                    times.append(time.monotonic())
            if done:
                await _drain(events)
        end = end if done else time.monotonic()
        if self.api != "oip-generate" and not done:
            raise _Failure("malformed", f"the stream ended without data: {_DONE}")
        if not times:
            raise _Failure("empty", "the stream carried no text")
        self.tally.add("ok")
        gaps = tuple(b - a for a, b in itertools.pairwise(times))
        tokens = usage if usage is not None else len(times)
        return Timing(sent, "ok", end - origin, times[0] - origin, gaps, tokens)

    async def close(self) -> None:
        await self._pool.close()


async def _drain(events: AsyncIterator[str]) -> None:
    """Read on past [DONE], normally just to the body's end, so that the connection can be
    reused (the pool keeps only connections whose answer was read whole). A server that keeps
    the body open longer than DRAIN_S loses the connection instead; the request counts as it
    ended at [DONE]."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_S):
            async for _ in events:
                pass  # anything after [DONE] is not part of the answer


async def _events(lines: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The data of each server-sent event, as text (UTF-8, undecodable bytes replaced). A
    parser of our own rather than a dependency: these servers use only `data:` lines (one per
    event), so that is all it reads; event:, id:, retry: and comment lines are skipped, and an
    event's data lines are joined by newlines, as the SSE specification says. An event counts
    when its blank line arrives. `lines`: without their ends (http1's Response.lines)."""
    data: list[bytes] = []
    async for line in lines:
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
        elif not line and data:
            yield b"\n".join(data).decode("utf-8", "replace")
            data = []
    if data:  # a last event without its blank line
        yield b"\n".join(data).decode("utf-8", "replace")


def _parse(api: Api, data: str) -> tuple[str, int | None]:
    """(text, completion tokens from usage or None) of one event. Raises _Failure."""
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise _Failure("malformed", f"not JSON: {_one_line(data)[:80]!r}") from None
    if not isinstance(event, dict):
        raise _Failure("malformed", f"not a JSON object: {_one_line(data)[:80]!r}")
    if "error" in event:
        raise _Failure("stream_error", _error_of(event))
    try:
        if api == "oip-generate":
            return _text(event["text_output"]), None
        choices, usage = event.get("choices") or [], event.get("usage")
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        if not choices:  # the usage chunk of stream_options.include_usage
            return "", tokens if isinstance(tokens, int) else None
        if api == "openai-chat":
            return _text(choices[0]["delta"].get("content")), tokens
        return _text(choices[0]["text"]), tokens
    except (KeyError, TypeError, AttributeError, IndexError):
        raise _Failure("malformed", f"not a {api} event: {_one_line(data)[:80]!r}") from None


def _text(value: object) -> str:
    if value is None:  # a chat delta with only a role, or a null content
        return ""
    if not isinstance(value, str):
        raise TypeError("text is not a string")
    return value


def _error_of(event: dict[str, Any]) -> str:
    """The message of OpenAI's {"error": {"message": ...}} or OIP's {"error": "..."}."""
    error = event["error"]
    if isinstance(error, dict) and "message" in error:
        return _one_line(str(error["message"]))
    return _one_line(str(error))


def _error_message(body: str) -> str:
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _one_line(body)
    if isinstance(decoded, dict) and "error" in decoded:
        return _error_of(decoded)
    return _one_line(body)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:_MESSAGE_CHARS]
