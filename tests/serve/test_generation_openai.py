"""OpenAI's API over a generator in the repository, through the official `openai` client:
completions and chat completions, whole and streamed, their usage figures, and refusals in
OpenAI's shape (never a 5xx for a bad request). The expected text is the generator's own
batch-1 decode loop (Generator.token_ids), not the server's."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from generation_support import CONTEXT, add_generator, tiny_artifact

from inferopt.generative.generate import GenerationConfig, Generator
from inferopt.generative.stream import TextStreamer
from inferopt.serve import BackgroundServer, ServerConfig

openai = pytest.importorskip("openai")
PROMPT = "The function returns"
CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What does the function return?"},
]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    build: Callable[..., onnx.ModelProto],
    save_model: Callable[[onnx.ModelProto, Path], Path],
) -> Iterator[BackgroundServer]:
    repo = tmp_path_factory.mktemp("generation-repo")
    add_generator(repo, "tiny")
    add_generator(repo, "endless", endless=True)
    save_model(build(2.0), repo / "scale" / "1" / "model.onnx")
    config = ServerConfig(host="127.0.0.1", http_port=0, grpc_port=None)
    with BackgroundServer(repo, config) as background:
        background.wait_ready()
        yield background


@pytest.fixture(scope="module")
def client(server: BackgroundServer) -> Any:
    return openai.OpenAI(
        base_url=f"http://{server.http_url}/v1", api_key="unused", max_retries=0, timeout=60
    )


@pytest.fixture(scope="module")
def generator() -> Generator:
    return Generator(tiny_artifact())


def expected(generator: Generator, ids: list[int], max_tokens: int) -> tuple[str, int, str]:
    """(text, completion tokens, finish reason) of greedy decoding, one sequence alone."""
    tokens = list(generator.token_ids(ids, GenerationConfig(max_new_tokens=max_tokens)))
    streamer = TextStreamer(generator.decode, ids)
    text = "".join([streamer.push(t) for t in tokens]) + streamer.finish()
    return text, len(tokens), "length" if len(tokens) == max_tokens else "stop"


@pytest.mark.parametrize("model", ["tiny", "endless"])
def test_completion_whole_and_streamed_agree(client: Any, generator: Generator, model: str) -> None:
    text, tokens, reason = expected(generator, generator.prompt_ids(PROMPT), 40)
    whole = client.completions.create(model=model, prompt=PROMPT, max_tokens=40, temperature=0)
    chunks = list(
        client.completions.create(
            model=model, prompt=PROMPT, max_tokens=40, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    assert whole.choices[0].text == streamed
    assert whole.usage.prompt_tokens == len(generator.prompt_ids(PROMPT))
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    if model == "tiny":
        assert whole.choices[0].text == text
        assert whole.choices[0].finish_reason == reason
        assert whole.usage.completion_tokens == tokens
    else:
        assert whole.choices[0].finish_reason == "length"
        assert whole.usage.completion_tokens == 40
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens


def test_chat_whole_and_streamed_agree(client: Any, generator: Generator) -> None:
    ids = generator.chat_ids(CHAT)
    text, tokens, reason = expected(generator, ids, 30)
    whole = client.chat.completions.create(
        model="tiny", messages=CHAT, max_completion_tokens=30, temperature=0, seed=1
    )
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content == text
    assert whole.choices[0].finish_reason == reason
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (len(ids), tokens)
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=CHAT, max_tokens=30, temperature=0, stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == reason
    assert all(c.usage is None for c in chunks)  # no include_usage: no usage chunk


def test_stop_strings_and_seeded_sampling(client: Any) -> None:
    def complete(**extra: Any) -> str:
        reply = client.completions.create(model="endless", prompt=PROMPT, max_tokens=60, **extra)
        return str(reply.choices[0].text)

    greedy = complete(temperature=0)
    stop = greedy[10:13]
    cut = client.completions.create(
        model="endless", prompt=PROMPT, max_tokens=60, temperature=0, stop=[stop, "\x00"]
    )
    assert cut.choices[0].text == greedy[: greedy.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert complete(temperature=1.0, seed=7) == complete(temperature=1.0, seed=7)
    assert complete(temperature=1e-9) == greedy  # below 1e-5: greedy, as vLLM


def test_models_are_the_generators(client: Any, server: BackgroundServer) -> None:
    listed = client.models.list()
    assert sorted(m.id for m in listed.data) == ["endless", "tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("scale")
    meta = httpx.get(f"http://{server.http_url}/v2/models/tiny").json()
    assert meta["platform"] == "onnxruntime_generator"
    assert meta["inputs"][0]["name"] == "text_input"
    config = httpx.get(f"http://{server.http_url}/v2/models/tiny/config").json()
    assert config["inferopt"]["generator"]["max_context"] == CONTEXT
    index = httpx.post(f"http://{server.http_url}/v2/repository/index").json()
    assert {"name": "tiny", "version": "1", "state": "READY"} in index


def test_infer_on_a_generator_names_the_generate_endpoints(server: BackgroundServer) -> None:
    body = {"inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}
    reply = httpx.post(f"http://{server.http_url}/v2/models/tiny/infer", json=body, timeout=30)
    assert reply.status_code == 400
    assert "/generate" in reply.json()["error"] and "/v1/completions" in reply.json()["error"]


LONG_PROMPT = "word " * (CONTEXT + 10)


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("completions", {"model": "tiny", "prompt": "a", "max_tokens": 0}, 400, "max_tokens"),
        ("completions", {"model": "tiny", "prompt": "a", "max_tokens": "9"}, 400, "max_tokens"),
        ("completions", {"model": "tiny", "prompt": "a", "max_tokens": True}, 400, "max_tokens"),
        ("completions", {"model": "tiny", "prompt": "a", "n": 2}, 400, "n"),
        ("completions", {"model": "tiny", "prompt": "a", "temperature": "hot"}, 400,
         "temperature"),
        ("completions", {"model": "tiny", "prompt": "a", "temperature": 3}, 400, "temperature"),
        ("completions", {"model": "tiny", "prompt": "a", "top_p": 0}, 400, "top_p"),
        ("completions", {"model": "tiny", "prompt": "a", "seed": -1}, 400, "seed"),
        ("completions", {"model": "tiny", "prompt": "a", "stop": [""]}, 400, "stop"),
        ("completions", {"model": "tiny", "prompt": "a", "stream": "yes"}, 400, "stream"),
        ("completions", {"model": "tiny", "prompt": "a", "logprobs": 2}, 400, "logprobs"),
        ("completions", {"model": "tiny", "prompt": ["a", "b"]}, 400, "prompt"),
        ("completions", {"model": "tiny", "prompt": LONG_PROMPT}, 400, "prompt"),
        ("completions", {"model": "tiny", "prompt": "a", "max_tokens": CONTEXT}, 400,
         "max_tokens"),
        ("completions", {"model": "nope", "prompt": "a"}, 404, "model"),
        ("completions", {"model": "scale", "prompt": "a"}, 404, "model"),
        ("completions", {"model": 3, "prompt": "a"}, 400, "model"),
        ("completions", {"prompt": "a"}, 400, "model"),
        ("chat/completions", {"model": "tiny", "messages": []}, 400, "messages"),
        ("chat/completions", {"model": "tiny", "messages": "hi"}, 400, "messages"),
        ("chat/completions", {"model": "tiny", "messages": [{"role": "robot", "content": "x"}]},
         400, "messages[0].role"),
        ("chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": 5}]},
         400, "messages[0].content"),
        ("chat/completions", {"model": "tiny", "messages": CHAT, "max_completion_tokens": 0},
         400, "max_completion_tokens"),
        ("chat/completions", {"model": "tiny", "messages": CHAT, "n": 2}, 400, "n"),
    ],
)  # fmt: skip
def test_bad_requests_get_openai_errors_naming_the_field(
    server: BackgroundServer, path: str, body: dict[str, Any], status: int, param: str
) -> None:
    reply = httpx.post(f"http://{server.http_url}/v1/{path}", json=body, timeout=30)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert param.split("[")[0] in error["message"]


@pytest.mark.parametrize(
    "content", [b"{not json", b"[1, 2]", b'{"model": "tiny", "prompt": "\xff"}', b'"text"']
)
def test_malformed_bodies_are_400s(server: BackgroundServer, content: bytes) -> None:
    for path in ("completions", "chat/completions"):
        reply = httpx.post(
            f"http://{server.http_url}/v1/{path}",
            content=content,
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["type"] == "invalid_request_error"


def test_unknown_fields_are_ignored_and_the_timeout_header_checked(
    server: BackgroundServer,
) -> None:
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 4, "user": "x", "metadata": {}}
    url = f"http://{server.http_url}/v1/completions"
    assert httpx.post(url, json=body, timeout=30).status_code == 200
    refused = httpx.post(url, json=body, headers={"x-timeout-ms": "soon"}, timeout=30)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "x-timeout-ms"
    body["max_tokens"] = 400
    late = httpx.post(url, json={**body, "model": "endless"}, headers={"x-timeout-ms": "0.001"},
                      timeout=30)  # fmt: skip
    assert late.status_code in (429, 504), late.text  # refused at admission, or ended late
