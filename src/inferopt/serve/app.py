"""The HTTP side: one ASGI application serving every REST endpoint of the Open Inference
Protocol, the repository and statistics extensions, /metrics, and an OpenAPI description of
itself. Every refusal is `{"error": "..."}` with a 4xx/5xx status.

Inference requests go straight to their handler (`App`); every other endpoint is routed by
Starlette. Why: for a small model, Starlette's middleware and routing took ~10% of the event
loop's time per inference request (py-spy on digits-cnn), and the loop is the bottleneck."""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from inferopt.serve import openapi, protocol
from inferopt.serve.context import Context
from inferopt.serve.errors import (
    BadRequest,
    PayloadTooLarge,
    ServeError,
    UnsupportedEncoding,
)
from inferopt.serve.generation import GenerateApi
from inferopt.serve.generators import GeneratorVersion
from inferopt.serve.openai import OpenAiApi
from inferopt.serve.repository import Served

log = logging.getLogger("inferopt.serve")
CLIENT_CLOSED = 499  # nginx's convention; nobody reads it, the client has gone
LARGE_BYTES = 1 << 20  # bodies beyond this are decoded and encoded off the event loop
T = TypeVar("T")
Handler = Callable[[Request], Awaitable[Response]]


def create_app(context: Context) -> App:
    api = HttpApi(context)
    return App(api, _starlette(api))


class App:
    """ASGI: `POST /v2/models/{m}[/versions/{v}]/infer` to `HttpApi.infer` directly, with the
    same error responses Starlette's handlers give; everything else to `rest`."""

    def __init__(self, api: HttpApi, rest: Starlette) -> None:
        self.api = api
        self.rest = rest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = _inference_params(scope)
        if params is None:
            await self.rest(scope, receive, send)
            return
        scope["path_params"] = params
        request = Request(scope, receive)
        try:
            response = await self.api.infer(request)
        except ServeError as exc:
            response = await _serve_error(request, exc)
        except Exception as exc:  # a bug must answer 500, not drop the client
            response = await _internal_error(request, exc)
        await response(scope, receive, send)


def _inference_params(scope: Scope) -> dict[str, str] | None:
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    return protocol.inference_path(scope["path"])


def _starlette(api: HttpApi) -> Starlette:
    model = "/v2/models/{model}"
    version = model + "/versions/{version}"
    get = ["GET"]
    routes = [
        Route("/v2/health/live", api.live, methods=get),
        Route("/v2/health/ready", api.ready, methods=get),
        Route("/v2", api.server_metadata, methods=get),
        Route("/v2/models/stats", api.stats, methods=get),  # before {model}: "stats" is no model
        Route("/v2/repository/index", api.index, methods=["POST"]),
        Route("/v2/repository/models/{model}/load", api.load, methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", api.unload, methods=["POST"]),
        Route("/metrics", api.metrics, methods=get),
        Route("/v2/openapi.json", api.openapi, methods=get),
        # generators (serve/generators.py): OIP's generate extension and OpenAI's API
        *GenerateApi(api.context, api.json_body).routes(),
        *OpenAiApi(api.context, api.json_body).routes(),
    ]
    for prefix in (model, version):
        routes += [
            Route(prefix, api.model_metadata, methods=get),
            Route(prefix + "/ready", api.model_ready, methods=get),
            Route(prefix + "/config", api.model_config, methods=get),
            Route(prefix + "/stats", api.stats, methods=get),
        ]
    handlers: dict[Any, Any] = {
        ServeError: _serve_error,
        HTTPException: _http_error,
        Exception: _internal_error,
    }
    return Starlette(routes=routes, exception_handlers=handlers)


def json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type=protocol.JSON_TYPE)


async def _serve_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServeError)
    retry = exc.retry_after_header()
    return json({"error": exc.message}, exc.status, {"retry-after": retry} if retry else None)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return json({"error": f"{exc.detail}: {request.method} {request.url.path}"}, exc.status_code)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return json({"error": "internal server error; see the server log"}, 500)


class HttpApi:
    def __init__(self, context: Context) -> None:
        self.context = context
        self.repository = context.repository

    # ---- health and metadata ----

    async def live(self, request: Request) -> Response:
        return Response(status_code=200)

    async def ready(self, request: Request) -> Response:
        if self.context.ready:
            return Response(status_code=200)
        why = "shutting down" if self.context.draining else "models are loading or failed"
        return json({"error": f"not ready: {why}"}, 503)

    async def server_metadata(self, request: Request) -> Response:
        return json(self.context.server_metadata())

    async def model_metadata(self, request: Request) -> Response:
        return json(self._served(request).metadata())

    async def model_ready(self, request: Request) -> Response:
        self._served(request)  # 404 unknown, 503 not ready
        return Response(status_code=200)

    async def model_config(self, request: Request) -> Response:
        return json(self._served(request).model_config())

    async def stats(self, request: Request) -> Response:
        self.context.check_whole_server("the statistics extension")
        if "model" in request.path_params:
            versions = [self._served(request)]
        else:
            versions = self.repository.served()
        return json({"model_stats": [v.metrics.to_json() for v in versions]})

    async def metrics(self, request: Request) -> Response:
        self.context.check_whole_server("/metrics")
        return Response(
            generate_latest(self.context.metrics.registry), 200, media_type=CONTENT_TYPE_LATEST
        )

    async def openapi(self, request: Request) -> Response:
        served = self.repository.served()
        generators = [v.name for v in served if isinstance(v, GeneratorVersion)]
        return json(openapi.document([v.name for v in served], generators))

    def _served(self, request: Request) -> Served:
        params = request.path_params
        return self.repository.get(params["model"], params.get("version"))

    # ---- inference ----

    async def infer(self, request: Request) -> Response:
        name = request.path_params["model"]
        version = request.path_params.get("version")
        body = await self._body(request)
        header = request.headers.get(protocol.HEADER_LENGTH)
        work = self.repository.infer(
            name, version, lambda: _off_loop(len(body), protocol.parse_http, body, header)
        )
        response = await _unless_disconnected(work, request.receive)
        if response is None:
            return Response(status_code=CLIENT_CLOSED)
        size = sum(array.nbytes for array in response.outputs.values())
        content, headers = await _off_loop(size, protocol.encode_http, response)
        return Response(content, 200, headers)

    async def _body(self, request: Request) -> bytes:
        limit = self.context.config.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {limit} limit")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the {limit} byte limit")
            chunks.append(chunk)
        return _decompress(b"".join(chunks), request.headers.get("content-encoding"), limit)

    # ---- model repository extension ----

    async def index(self, request: Request) -> Response:
        options = await self.json_body(request)
        ready = options.get("ready", False)
        if not isinstance(ready, bool):
            raise BadRequest("'ready' must be true or false")
        return json(self.repository.index(ready_only=ready))

    async def load(self, request: Request) -> Response:
        self.context.check_management(request.headers.get("authorization"))
        _no_parameters(await self.json_body(request), allowed=())
        await self.repository.load(request.path_params["model"])
        return Response(status_code=200)

    async def unload(self, request: Request) -> Response:
        self.context.check_management(request.headers.get("authorization"))
        _no_parameters(await self.json_body(request), allowed=("unload_dependents",))
        await self.repository.unload(request.path_params["model"])
        return Response(status_code=200)

    async def json_body(self, request: Request) -> dict[str, Any]:
        """The body as a JSON object ({} when empty); BadRequest otherwise."""
        body = await self._body(request)
        if not body.strip():
            return {}
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"malformed JSON: {exc}") from None
        if not isinstance(data, dict):
            raise BadRequest("the request body must be a JSON object")
        return data


def _no_parameters(options: dict[str, Any], allowed: tuple[str, ...]) -> None:
    """Triton's load can carry a config or model files; we never take either from a client."""
    params = options.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("'parameters' must be an object")
    refused = sorted(set(params) - set(allowed))
    if refused:
        raise BadRequest(f"parameters {refused} are not supported; models load from disk only")


def _decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """tritonclient can gzip or deflate request bodies; inflate them within the size limit."""
    if encoding in (None, "", "identity"):
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
    if wbits is None:
        raise UnsupportedEncoding(f"Content-Encoding {encoding!r}: use gzip or deflate")
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"body is not valid {encoding} data: {exc}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed body exceeds the {limit} byte limit")
    return data


async def _off_loop(size: int, function: Callable[..., T], *args: Any) -> T:
    """Call `function` here, or in a worker thread when `size` bytes of tensors would hold
    the event loop (and every other client) long enough to notice."""
    if size < LARGE_BYTES:
        return function(*args)
    return await asyncio.to_thread(function, *args)


async def _unless_disconnected(work: Awaitable[T], receive: Receive) -> T | None:
    """`work`'s result, or None if the client disconnects first: then `work` is cancelled,
    which drops its queued requests. A watcher task cancels this one on disconnect, so the
    common case costs one task and no `asyncio.wait`."""
    task = asyncio.current_task()
    assert task is not None  # called from a request handler
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise  # the server is cancelling this request, not the client
        task.uncancel()
        return None
    finally:
        watcher.cancel()
