"""The Open Inference Protocol's generate extension over a generator: generate and
generate_stream agree, their figures are right, and wrong requests get 422 (naming the
field) or 404, never a 5xx."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from generation_support import CONTEXT, add_generator, tiny_artifact

from inferopt.generative.generate import GenerationConfig, Generator
from inferopt.serve import BackgroundServer, ServerConfig

PROMPT = "The function returns"


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repo = tmp_path_factory.mktemp("generate-repo")
    add_generator(repo, "tiny")
    config = ServerConfig(host="127.0.0.1", http_port=0, grpc_port=None)
    with BackgroundServer(repo, config) as background:
        background.wait_ready()
        yield f"http://{background.http_url}/v2/models/tiny"


def events(response: httpx.Response) -> list[dict[str, Any]]:
    """The JSON of each server-sent event of a whole response."""
    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in response.text.split("\n\n") if b]
    assert all(b.startswith("data: ") for b in blocks), blocks
    return [orjson.loads(b.removeprefix("data: ")) for b in blocks]


@pytest.mark.parametrize("versioned", [False, True])
def test_generate_matches_the_generator_alone(url: str, versioned: bool) -> None:
    generator = Generator(tiny_artifact())
    ids = generator.prompt_ids(PROMPT)
    want = generator.generate(PROMPT, GenerationConfig(max_new_tokens=24))
    tokens = len(list(generator.token_ids(ids, GenerationConfig(max_new_tokens=24))))
    base = url + "/versions/1" if versioned else url
    body = {"text_input": PROMPT, "parameters": {"max_tokens": 24, "temperature": 0}}
    whole = httpx.post(base + "/generate", json=body, timeout=30)
    assert whole.status_code == 200, whole.text
    answer = whole.json()
    assert (answer["model_name"], answer["model_version"]) == ("tiny", "1")
    assert answer["text_output"] == want
    assert (answer["prompt_tokens"], answer["completion_tokens"]) == (len(ids), tokens)
    streamed = events(httpx.post(base + "/generate_stream", json=body, timeout=30))
    assert "".join(e["text_output"] for e in streamed) == want
    assert streamed[-1]["finish_reason"] == answer["finish_reason"]
    assert all("finish_reason" not in e for e in streamed[:-1])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "text_input"),
        ({"text_input": 7}, "text_input"),
        ({"text_input": "a", "parameters": []}, "parameters"),
        ({"text_input": "a", "parameters": {"max_tokens": 0}}, "max_tokens"),
        ({"text_input": "a", "parameters": {"max_tokens": 1.5}}, "max_tokens"),
        ({"text_input": "a", "parameters": {"max_tokens": CONTEXT}}, "max_tokens"),
        ({"text_input": "word " * CONTEXT}, "text_input"),
        ({"text_input": "a", "parameters": {"temperature": -1}}, "temperature"),
        ({"text_input": "a", "parameters": {"top_p": 2}}, "top_p"),
        ({"text_input": "a", "parameters": {"seed": "x"}}, "seed"),
        ({"text_input": "a", "parameters": {"stop": 3}}, "stop"),
        ({"text_input": "a", "parameters": {"timeout": 0}}, "timeout"),
        ({"text_input": "a", "parameters": {"beams": 4}}, "beams"),
    ],
)
def test_wrong_fields_are_422_naming_them(url: str, body: dict[str, Any], field: str) -> None:
    for endpoint in ("/generate", "/generate_stream"):
        reply = httpx.post(url + endpoint, json=body, timeout=30)
        assert reply.status_code == 422, reply.text
        assert f"'{field}'" in reply.json()["error"]


def test_malformed_json_unknown_model_and_version(url: str) -> None:
    bad = httpx.post(url + "/generate", content=b"{oops", timeout=30)
    assert bad.status_code == 400 and "malformed JSON" in bad.json()["error"]
    base = url.removesuffix("/tiny")
    body = {"text_input": "a"}
    for path in ("/nope/generate", "/tiny/versions/2/generate", "/nope/generate_stream"):
        reply = httpx.post(base + path, json=body, timeout=30)
        assert reply.status_code == 404 and reply.json()["error"], path
