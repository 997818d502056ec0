"""Generators under load, with each decode step slowed to STEP_S so that generations last
long enough to act on while they run: a full generator refuses with 429 and Retry-After, a
client that leaves frees its KV-cache slot at once, streams that join mid-generation give the
same greedy text as alone, the metrics count it all, and a stopping server finishes running
streams first."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from generation_support import add_generator, sample, slowed_decode, wait_for

from inferopt.serve import BackgroundServer, ServerConfig

STEP_S = 0.005  # a 400-token generation then lasts 2 s or more
SINGLE = "max_batch_size = 1\nmax_queue_size = 2\n"  # one slot, one request waiting
LABELS = {"version": "1"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("generation-load")
    add_generator(root, "endless", endless=True, settings="max_batch_size = 4\n")
    add_generator(root, "single", endless=True, settings=SINGLE)
    return root


@pytest.fixture(scope="module")
def url(repo: Path) -> Iterator[str]:
    config = ServerConfig(host="127.0.0.1", http_port=0, grpc_port=None)
    with slowed_decode(STEP_S), BackgroundServer(repo, config) as background:
        background.wait_ready()
        yield background.http_url


def completion(model: str, prompt: str, max_tokens: int, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "stream": stream}  # fmt: skip


class Streaming:
    """A streamed completion read event by event in this thread."""

    def __init__(self, url: str, body: dict[str, Any]) -> None:
        self.client = httpx.Client(timeout=60)
        self._context = self.client.stream("POST", f"http://{url}/v1/completions", json=body)
        self.response = self._context.__enter__()
        assert self.response.status_code == 200
        self._lines = self.response.iter_lines()
        self.text = ""

    def read(self, count: int) -> list[Any]:
        """The next `count` events' data (JSON, or "[DONE]")."""
        found: list[Any] = []
        while len(found) < count:
            line = next(self._lines)
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                found.append(data if data == "[DONE]" else orjson.loads(data))
        self.text += "".join(e["choices"][0]["text"] for e in found if e != "[DONE]" and
                             e["choices"])  # fmt: skip
        return found

    def rest(self) -> list[Any]:
        events = []
        while not events or events[-1] != "[DONE]":
            events += self.read(1)
        return events

    def close(self) -> None:
        self._context.__exit__(None, None, None)
        self.client.close()


def in_thread(function: Any, *args: Any) -> tuple[threading.Thread, list[Any]]:
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(function(*args)), daemon=True)
    thread.start()
    return thread, results


def post(url: str, body: dict[str, Any], path: str = "/v1/completions") -> httpx.Response:
    return httpx.post(f"http://{url}{path}", json=body, timeout=60)


def test_a_full_generator_answers_429_with_retry_after(url: str) -> None:
    running = Streaming(url, completion("single", "Once", 400, stream=True))
    running.read(2)
    waiting, answers = in_thread(post, url, completion("single", "Twice", 4))
    wait_for(lambda: sample(url, "inferopt_num_requests_waiting", model="single", **LABELS) == 1)
    refused = post(url, completion("single", "Thrice", 4))
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "rate_limit_error"
    oip = post(url, {"text_input": "x"}, "/v2/models/single/generate")
    assert oip.status_code == 429 and int(oip.headers["retry-after"]) >= 1
    assert oip.json()["error"]
    running.close()  # frees the slot: the waiting request runs
    waiting.join(30)
    assert answers[0].status_code == 200
    rejected = sample(url, "inferopt_rejections_total", model="single", reason="queue_full",
                      **LABELS)  # fmt: skip
    assert rejected >= 2


@pytest.mark.parametrize("streamed", [True, False])
def test_a_client_that_leaves_frees_its_slot_at_once(url: str, streamed: bool) -> None:
    cancelled = {"model": "endless", "finished_reason": "cancelled", **LABELS}
    before = sample(url, "inferopt_request_success_total", **cancelled)
    running = {"model": "endless", **LABELS}
    if streamed:
        stream = Streaming(url, completion("endless", "Leaving", 400, stream=True))
        stream.read(3)
        assert sample(url, "inferopt_num_requests_running", **running) == 1
        stream.close()
    else:  # a client that gives up waiting for a whole answer
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"http://{url}/v1/completions", json=completion("endless", "Gone", 400),
                       timeout=0.5)  # fmt: skip
    left = time.monotonic()
    wait_for(lambda: sample(url, "inferopt_num_requests_running", **running) == 0)
    assert time.monotonic() - left < 1.0  # the generation had 1.5 s or more to go
    assert sample(url, "inferopt_request_success_total", **cancelled) == before + 1
    assert sample(url, "inferopt_kv_cache_usage_perc", **running) == 0


def test_streams_joining_mid_generation_match_each_alone(url: str) -> None:
    prompts = {"The function returns": 120, "A list of": 50, "Once upon": 70}
    alone = {
        p: post(url, completion("endless", p, n)).json()["choices"][0]["text"]
        for p, n in prompts.items()
    }
    first, *later = prompts
    stream = Streaming(url, completion("endless", first, prompts[first], stream=True))
    stream.read(20)  # the first is well under way when the others join
    joined = [in_thread(post, url, completion("endless", p, prompts[p])) for p in later]
    stream.rest()
    stream.close()
    for (thread, answers), prompt in zip(joined, later, strict=True):
        thread.join(30)
        assert answers[0].json()["choices"][0]["text"] == alone[prompt], prompt
    assert stream.text == alone[first]


def test_generation_metrics_are_counted(url: str) -> None:
    labels = {"model": "endless", **LABELS}
    tokens = sample(url, "inferopt_generation_tokens_total", **labels)
    assert post(url, completion("endless", "Counting", 30)).status_code == 200
    assert sample(url, "inferopt_generation_tokens_total", **labels) == tokens + 30
    assert sample(url, "inferopt_time_to_first_token_seconds_count", **labels) >= 1
    assert sample(url, "inferopt_inter_token_latency_seconds_count", **labels) >= 29
    length = {"finished_reason": "length", **labels}
    assert sample(url, "inferopt_request_success_total", **length) >= 1
    assert sample(url, "inferopt_requests_total", outcome="success", **labels) >= 1
    assert sample(url, "inferopt_num_requests_waiting", **labels) == 0


def test_a_shared_prefix_is_reused_and_gives_the_same_text(url: str) -> None:
    labels = {"model": "endless", **LABELS}
    hits = sample(url, "inferopt_prefix_cache_hits_total", **labels)
    system = "You answer questions about Python code, briefly and exactly. " * 12
    questions = ["What is a list?", "What is a dict?", "What is a list?"]
    answers = [post(url, completion("endless", system + q, 12)).json() for q in questions]
    cached = [a["usage"]["prompt_tokens_details"]["cached_tokens"] for a in answers]
    prompt = answers[0]["usage"]["prompt_tokens"]
    assert prompt > 128 and cached[0] == 0  # the first one computes it all
    assert cached[1] >= 128 and cached[1] % 64 == 0 and cached[2] >= cached[1]
    texts = [a["choices"][0]["text"] for a in answers]
    assert texts[2] == texts[0]  # bit for bit what a prefill gives
    assert sample(url, "inferopt_prefix_cache_hits_total", **labels) == hits + sum(cached)


def test_stopping_the_server_finishes_running_streams(repo: Path) -> None:
    config = ServerConfig(host="127.0.0.1", http_port=0, grpc_port=None)
    with slowed_decode(STEP_S):
        background = BackgroundServer(repo, config).__enter__()
        try:
            background.wait_ready()
            url = background.http_url
            stream = Streaming(url, completion("endless", "Draining", 200, stream=True))
            stream.read(2)
            stopping, _ = in_thread(background.stop)
            events = stream.rest()
            stream.close()
            stopping.join(60)
        finally:
            background.stop()
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert len(stream.text) > 0 and not stopping.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{url}/v2/health/live", timeout=5)
