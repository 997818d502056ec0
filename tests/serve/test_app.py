"""The ASGI application's front (serve/app.py): inference requests go straight to their
handler, with the error responses Starlette's handlers would give; the rest is routed."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from inferopt.serve.app import App, HttpApi
from inferopt.serve.errors import Overloaded
from inferopt.serve.protocol import inference_path


def test_inference_paths_name_the_model_and_version() -> None:
    assert inference_path("/v2/models/digits/infer") == {"model": "digits"}
    assert inference_path("/v2/models/d/versions/3/infer") == {"model": "d", "version": "3"}
    for other in ("/v2/models/digits", "/v2/models//infer", "/v2/models/a/b/infer",
                  "/v2/models/d/versions//infer", "/v2/repository/models/d/infer"):  # fmt: skip
        assert inference_path(other) is None


class FakeApi:
    """Answers with the path parameters it was given, or raises what it is told to."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    async def infer(self, request: Request) -> Response:
        if self.error is not None:
            raise self.error
        return Response(repr(sorted(request.path_params.items())))


def call(api: FakeApi, method: str, path: str) -> httpx.Response:
    rest = Starlette(routes=[Route("/v2/health/live", lambda r: Response("live"))])
    app = App(cast(HttpApi, api), rest)

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=cast(Any, app))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path)

    return asyncio.run(go())


def test_inference_goes_to_the_handler_with_its_path_parameters() -> None:
    response = call(FakeApi(), "POST", "/v2/models/d/versions/2/infer")
    assert response.text == "[('model', 'd'), ('version', '2')]"
    assert call(FakeApi(), "GET", "/v2/health/live").text == "live"
    assert call(FakeApi(), "GET", "/v2/models/d/infer").status_code == 404  # not inference


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (Overloaded("model 'd': queue full", retry_after_s=2.2), 429, "queue full"),
        (RuntimeError("a bug"), 500, "internal server error"),
    ],
)
def test_handler_errors_become_json_errors(error: Exception, status: int, message: str) -> None:
    response = call(FakeApi(error), "POST", "/v2/models/d/infer")
    assert response.status_code == status
    assert message in response.json()["error"]
    if status == 429:
        assert response.headers["retry-after"] == "3"
