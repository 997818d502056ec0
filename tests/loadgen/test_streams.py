"""The streaming bench against a fake server that emits tokens at a known pace (fake_streams):
TTFT, ITL and TPOT come out as the pace we chose, token counts exactly, goodput against
objectives some requests meet; refusals, broken streams and dropped connections are counted,
never raised; prompts follow the length distribution asked for."""

from __future__ import annotations

import asyncio
import math
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import orjson
import pytest

from inferopt.loadgen import stream_report, streaming
from inferopt.loadgen.http1 import Pool, encode_post
from inferopt.loadgen.inputs import BenchError
from inferopt.loadgen.prompts import PromptLength, load_tokenizer, make_prompts
from inferopt.loadgen.run import Load
from inferopt.loadgen.stream_stats import Objectives
from inferopt.loadgen.streaming import Api, StreamClient, Timing
from inferopt.loadgen.streams import StreamConfig, StreamResult, bench_streams

sys.path.insert(0, str(Path(__file__).parent))
from fake_streams import FIRST_S, GAP_S, FakeStreams

pytestmark = pytest.mark.timeout(60)
TOKENS = 8
# Loopback and a shared, busy machine add a little to every figure; never take it away.
SLACK_S = 0.020
# The fake server (uvicorn, uvloop when installed) times its pauses from its loop's cached
# clock, which can lag ours by up to a millisecond: a 50 ms pause may end a hair early.
EARLY_S = 0.002


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeStreams]:
    with FakeStreams() as server:
        yield server


@pytest.fixture(autouse=True)
def counted_from_zero(fake: FakeStreams) -> None:
    """Each test's requests are numbered from 0, so per-request behaviours are as documented."""
    fake.reset()


def run(
    fake: FakeStreams, model: str, api: Api = "openai-completions", **kw: object
) -> StreamResult:
    settings: dict[str, object] = {
        "load": Load("closed", 2),
        "max_tokens": TOKENS,
        "max_requests": 8,
        "duration_s": 20.0,
        "timeout_s": 10.0,
        "prompt_length": PromptLength(16),
        **kw,
    }
    config = StreamConfig(fake.url, model, api, **settings)  # type: ignore[arg-type]
    return asyncio.run(bench_streams(config))


@pytest.mark.parametrize("api", ["openai-completions", "openai-chat", "oip-generate"])
def test_measured_times_match_the_servers_pace(fake: FakeStreams, api: Api) -> None:
    result = run(fake, "steady", api)
    s = result.summary
    assert (s.requests, s.ok) == (8, 8)
    assert all(t.output_tokens == TOKENS and len(t.itl) == TOKENS - 1 for t in result.timings)
    assert FIRST_S - EARLY_S <= s.ttft_ms["p50"] / 1000 <= FIRST_S + SLACK_S
    assert GAP_S * 0.8 <= s.itl_ms["p50"] / 1000 <= GAP_S + SLACK_S / 2
    assert GAP_S * 0.9 <= s.tpot_ms["p50"] / 1000 <= GAP_S + SLACK_S / 4
    e2e = FIRST_S + (TOKENS - 1) * GAP_S
    assert e2e - EARLY_S <= s.e2e_ms["p50"] / 1000 <= e2e + SLACK_S
    assert s.output_tokens == 8 * TOKENS
    assert s.output_tokens_per_s == pytest.approx(s.output_tokens / s.seconds)
    # Two streams at a time, back to back: two requests' tokens every e2e.
    assert s.output_tokens_per_s == pytest.approx(2 * TOKENS / e2e, rel=0.15)
    assert s.good == 8 and s.goodput_share == 1.0  # no objectives: every OK request is good


def test_requests_have_the_apis_shape(fake: FakeStreams) -> None:
    run(fake, "steady", "openai-chat", max_requests=1)
    run(fake, "steady", "openai-completions", max_requests=1)
    run(fake, "steady", "oip-generate", max_requests=1)
    chat, completion, oip = fake.bodies
    assert chat["path"] == "/v1/chat/completions" and chat["stream"] is True
    assert chat["stream_options"] == {"include_usage": True} and chat["temperature"] == 0
    assert chat["messages"][0]["role"] == "user" and chat["max_tokens"] == TOKENS
    assert len(chat["messages"][0]["content"].split()) == 16  # words: no tokenizer given
    assert completion["path"] == "/v1/completions" and completion["model"] == "steady"
    assert len(completion["prompt"].split()) == 16
    assert oip["path"] == "/v2/models/steady/generate_stream"
    assert oip["parameters"] == {"max_tokens": TOKENS} and len(oip["text_input"].split()) == 16


def test_usage_gives_the_token_count_when_the_server_sends_it(fake: FakeStreams) -> None:
    s = run(fake, "pairs", max_requests=4).summary
    assert s.output_tokens == 4 * TOKENS  # TOKENS/2 chunks each, usage says TOKENS
    # Two tokens a chunk, a chunk every GAP_S: TPOT is half the gap between chunks.
    assert GAP_S * 0.8 <= s.itl_ms["p50"] / 1000 <= GAP_S + SLACK_S / 2
    assert s.tpot_ms["p50"] / 1000 == pytest.approx(
        (TOKENS / 2 - 1) * GAP_S / (TOKENS - 1), abs=0.004
    )


def test_goodput_counts_the_requests_within_both_objectives(fake: FakeStreams) -> None:
    # mixed: of every 4 requests, one has a slow first token (150 ms) and one slow tokens
    # (30 ms apart); the others meet TTFT <= 100 ms and TPOT <= 20 ms.
    objectives = Objectives(ttft_ms=100.0, tpot_ms=20.0)
    s = run(fake, "mixed", max_requests=8, objectives=objectives).summary
    assert (s.ok, s.good, s.goodput_share) == (8, 4, 0.5)
    assert s.goodput_per_s == pytest.approx(4 / s.seconds)
    only_ttft = run(fake, "mixed", max_requests=8, objectives=Objectives(ttft_ms=100.0)).summary
    assert only_ttft.good == 6


def test_429_answers_are_counted_as_rejections(fake: FakeStreams) -> None:
    result = run(fake, "reject", max_requests=8)
    s = result.summary
    assert (s.ok, s.by_status) == (4, {"429": 4})
    assert result.to_json()["errors"]["rejected_429"] == 4
    assert result.tally.messages["429"] == "too many requests, slow down"
    assert s.ttft_ms["p50"] / 1000 >= FIRST_S - EARLY_S  # figures come from the OK ones only


@pytest.mark.parametrize("api", ["openai-chat", "oip-generate"])
def test_a_malformed_stream_is_an_error_not_a_crash(fake: FakeStreams, api: Api) -> None:
    result = run(fake, "broken", api, max_requests=6)
    assert (result.summary.ok, result.summary.by_kind["malformed"]) == (3, 3)
    assert "not JSON" in result.tally.messages["malformed"]


def test_a_broken_connection_is_a_disconnect(fake: FakeStreams) -> None:
    s = run(fake, "cut", "oip-generate", max_requests=4).summary
    assert (s.ok, s.by_kind["disconnect"]) == (2, 2)


def test_a_request_past_the_timeout_is_a_timeout(fake: FakeStreams) -> None:
    s = run(fake, "steady", max_requests=2, timeout_s=0.03).summary
    assert (s.ok, s.by_kind["timeout"], s.requests_per_s) == (0, 2, 0.0)


def test_open_loop_sends_on_schedule_and_stops_at_the_request_bound(fake: FakeStreams) -> None:
    result = run(fake, "steady", load=Load("open", 40.0), max_requests=10)
    sent = sorted(t.sent for t in result.timings)
    assert sent == pytest.approx([i / 40 for i in range(10)])  # scheduled times
    assert result.summary.ok == 10
    assert statistics.median(t.ttft for t in result.timings) <= FIRST_S + SLACK_S


def test_the_duration_bounds_sending(fake: FakeStreams) -> None:
    result = run(fake, "steady", load=Load("open", 20.0), max_requests=1000, duration_s=0.3)
    assert len(result.timings) == 6  # offsets 0, 0.05, ... 0.25 are before 0.3 s


def test_open_loop_drops_sends_past_max_outstanding(fake: FakeStreams) -> None:
    # 100/s of 120 ms streams with at most 2 streaming: most sends are dropped, and counted.
    s = run(fake, "steady", load=Load("open", 100.0), max_requests=10, max_outstanding=2).summary
    assert s.requests == 10 and s.by_kind["dropped"] >= 5 and s.ok + s.by_kind["dropped"] == 10


def test_json_and_html_of_a_run(fake: FakeStreams, tmp_path: Path) -> None:
    result = run(fake, "mixed", max_requests=4, objectives=Objectives(ttft_ms=100.0))
    doc = orjson.loads(stream_report.write_json(result, tmp_path / "r.json").read_bytes())
    assert (
        doc["schema"] == "inferopt-bench-streams/1" and doc["target"]["api"] == "openai-completions"
    )
    assert doc["goodput"] == {
        "requests": 3,
        "share": 0.75,
        "per_s": pytest.approx(3 / doc["seconds"]),
    }
    assert set(doc["ttft_ms"]) == {"p50", "p90", "p99", "p99.9", "mean"}
    assert len(doc["samples"]) == 4 and doc["answers"]["ok"] == 4
    page = stream_report.write_html(result, tmp_path / "r.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "TTFT distribution" in page


def test_nothing_measured_is_nan_not_zero(fake: FakeStreams) -> None:
    s = run(fake, "steady", max_requests=1, timeout_s=0.01).summary
    assert all(v != v for v in s.ttft_ms.values())  # NaN
    assert (
        stream_report.latency_rows(run(fake, "steady", max_requests=1, timeout_s=0.01))[0][1] == "-"
    )


def test_tpot_is_undefined_below_two_tokens() -> None:
    assert Timing(0.0, "ok", 0.5, 0.1, (), 1).tpot != Timing(0.0, "ok", 0.5, 0.1, (), 1).tpot
    assert Timing(0.0, "ok", 0.5, 0.1, (0.4,), 2).tpot == pytest.approx(0.4)


def test_an_unreachable_server_is_a_bench_error(closed_port: int) -> None:
    config = StreamConfig(f"127.0.0.1:{closed_port}", "m", max_requests=1)
    with pytest.raises(BenchError, match=r"cannot reach http://127\.0\.0\.1:\d+"):
        asyncio.run(bench_streams(config))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"api": "openai"}, "unknown api 'openai'"),
        ({"max_tokens": 0}, "max_tokens must be >= 1"),
        ({"max_requests": 0}, "max_requests must be >= 1"),
        ({"duration_s": 0.0}, "duration_s must be > 0"),
        ({"model": ""}, "model name must not be empty"),
    ],
)
def test_bad_configs_raise_value_error(settings: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"url": "127.0.0.1:1", "model": "m", **settings}
    with pytest.raises(ValueError, match=message):
        StreamConfig(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("128", PromptLength(128.0)),
        ("128:32", PromptLength(128.0, 32.0)),
        (" 64 ", PromptLength(64.0)),
    ],
)
def test_prompt_length_parses_mean_and_stddev(text: str, expected: PromptLength) -> None:
    assert PromptLength.parse(text) == expected


@pytest.mark.parametrize(("text", "message"), [("0", ">= 1"), ("8:-1", ">= 0"), ("a:b", "MEAN")])
def test_bad_prompt_lengths_raise_value_error(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PromptLength.parse(text)


def test_prompts_in_words_follow_the_distribution() -> None:
    prompts = make_prompts(300, PromptLength(40, 10), seed=3)
    assert prompts.unit == "words" and not prompts.repeats
    assert prompts.lengths == PromptLength(40, 10).draw(300, 3)  # words cut exactly
    assert statistics.mean(prompts.lengths) == pytest.approx(40, abs=2)
    assert statistics.stdev(prompts.lengths) == pytest.approx(10, abs=2)
    assert len(set(prompts.texts)) == 300  # consecutive stretches, not one prompt repeated
    assert make_prompts(300, PromptLength(40, 10), seed=3) == prompts


def test_prompts_in_tokens_of_a_tokenizer_json(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = " ".join(make_prompts(50, PromptLength(400)).texts).split()
    vocab = {"[UNK]": 0} | {w: i + 1 for i, w in enumerate(dict.fromkeys(words))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()  # splits punctuation from words
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path)  # the folder will do
    prompts = make_prompts(20, PromptLength(32), loaded)
    assert prompts.unit == "tokens" and prompts.lengths == [32] * 20
    assert any(len(t.split()) < 32 for t in prompts.texts)  # tokens, not words


def test_a_missing_or_bad_tokenizer_is_a_bench_error(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match=r"no tokenizer\.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(BenchError, match="not a tokenizer"):
        load_tokenizer(tmp_path / "tokenizer.json")


# -- the client against scripted loopback servers: framing, refusals, connections ---------

Script = Callable[[int, asyncio.StreamWriter], Awaitable[bool]]  # request number -> keep open


def sse_chunks(*pieces: bytes) -> bytes:
    """A 200 text/event-stream answer, chunked as uvicorn sends it, one chunk per piece."""
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    return head + b"\r\n" + body + b"0\r\n\r\n"


def completion(text: str) -> bytes:
    return b"data: " + orjson.dumps({"choices": [{"index": 0, "text": text}]}) + b"\n\n"


REQUEST = encode_post("h", "/v1/completions", b"{}", {})
USAGE = b'data: {"choices": [], "usage": {"completion_tokens": 3}}\n\n'
STREAM = completion(" é") + completion(" 😀") + completion(" x") + USAGE + b"data: [DONE]\n\n"


class Scripted:
    """A loopback HTTP/1.1 server in the test's event loop: `script(i, writer)` answers its
    i-th request (from 0) and says whether to keep the connection open."""

    def __init__(self, script: Script) -> None:
        self.script, self.connections, self.requests = script, 0, 0
        self.heads: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            for _ in range(100):  # bounded: a test sends far fewer requests
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                length = head.lower().split(b"content-length: ")[1].split(b"\r")[0]
                await reader.readexactly(int(length))
                self.heads.append(head)
                self.requests += 1
                if not await self.script(self.requests - 1, writer):
                    break
        finally:  # cancelled too, when a test ends with the handler still waiting
            writer.close()

    async def run(
        self, scenario: Callable[[StreamClient], Awaitable[object]], path: str = ""
    ) -> None:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = StreamClient(f"127.0.0.1:{port}{path}", "m", "openai-completions", 3, 5.0, 4)
        try:
            await asyncio.wait_for(scenario(client), 10)
        finally:
            await client.close()
            server.close()


def answering(*answers: bytes, close_after: int = 100) -> Script:
    """A script that writes answers[i % len] to request i, closing after `close_after`."""

    async def script(index: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(answers[index % len(answers)])
        await writer.drain()
        return index + 1 < close_after

    return script


async def sends(client: StreamClient, count: int) -> list[Timing]:
    return [await client.send("hello", time.monotonic(), 0.0) for _ in range(count)]


@pytest.mark.parametrize("cut", ["every byte", "every third byte"])
def test_events_split_across_chunks_and_characters_are_read_whole(cut: str) -> None:
    step = 1 if cut == "every byte" else 3
    pieces = [STREAM[i : i + step] for i in range(0, len(STREAM), step)]
    server = Scripted(answering(sse_chunks(*pieces)))

    async def scenario(client: StreamClient) -> None:
        (timing,) = await sends(client, 1)
        assert (timing.outcome, timing.output_tokens, len(timing.itl)) == ("ok", 3, 2)
        pool = Pool("127.0.0.1", int(client.base.rsplit(":", 1)[1]))
        async with pool.stream(REQUEST) as response:
            events = [data async for data in streaming._events(response.lines())]
        await pool.close()
        assert [streaming._parse("openai-completions", e)[0] for e in events[:3]] == [
            " é", " 😀", " x"
        ]  # fmt: skip
        assert events[3:] == [USAGE[6:-2].decode(), "[DONE]"]

    asyncio.run(server.run(scenario))


def test_a_429_with_a_json_body_is_tallied_and_keeps_the_connection() -> None:
    error = b'{"error": {"message": "the queue is full", "code": 429}}'
    refusal = b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
    refusal += b"content-length: %d\r\n\r\n%s" % (len(error), error)
    server = Scripted(answering(refusal, refusal, sse_chunks(STREAM)))

    async def scenario(client: StreamClient) -> None:
        timings = await sends(client, 6)
        assert [t.outcome for t in timings] == ["429", "429", "ok"] * 2
        assert client.tally.messages["429"] == "the queue is full"
        assert all(math.isnan(t.ttft) for t in timings if t.outcome == "429")

    asyncio.run(server.run(scenario))
    assert server.connections == 1


def test_keep_alive_serves_sequential_streams_on_one_connection() -> None:
    server = Scripted(answering(sse_chunks(STREAM[:50], STREAM[50:])))
    asyncio.run(server.run(lambda client: sends(client, 5)))
    assert (server.connections, server.requests) == (1, 5)


@pytest.mark.parametrize("answer", ["chunked", "content-length"])
def test_a_server_that_closes_mid_stream_is_a_disconnect(answer: str) -> None:
    if answer == "chunked":
        cut = sse_chunks(completion(" a"), completion(" b"))[:-30]  # inside the second event
    else:
        cut = b"HTTP/1.1 200 OK\r\ncontent-length: 999\r\n\r\n" + completion(" a")

    async def script(index: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(cut if index == 0 else sse_chunks(STREAM))
        await writer.drain()
        return index > 0  # close after the cut answer

    server = Scripted(script)

    async def scenario(client: StreamClient) -> None:
        timings = await sends(client, 2)
        assert [t.outcome for t in timings] == ["disconnect", "ok"]
        assert "closed" in client.tally.messages["disconnect"]

    asyncio.run(server.run(scenario))
    assert server.connections == 2


def test_requests_go_below_the_urls_path_with_its_host() -> None:
    server = Scripted(answering(sse_chunks(STREAM)))
    asyncio.run(server.run(lambda client: sends(client, 1), path="/base/"))
    (head,) = server.heads
    assert head.startswith(b"POST /base/v1/completions HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nContent-Type: application/json\r\n" in head


def test_a_url_that_is_not_http_is_a_bench_error() -> None:
    for url in ("ftp://127.0.0.1:21", "http://:80", "127.0.0.1:99999"):
        with pytest.raises(BenchError, match="give the server as host:port"):
            StreamClient(url, "m", "openai-chat", 3, 5.0, 1)


def test_a_refused_connection_is_a_disconnect(closed_port: int) -> None:
    client = StreamClient(f"127.0.0.1:{closed_port}", "m", "oip-generate", 3, 5.0, 1)
    (timing,) = asyncio.run(sends(client, 1))
    assert timing.outcome == "disconnect" and client.tally.counts["disconnect"] == 1


@pytest.mark.parametrize("seen", [True, False])
def test_a_keep_alive_connection_the_server_closed_is_replaced(seen: bool) -> None:
    # The server closes every connection after one answer, as an idle timeout would.
    server = Scripted(answering(sse_chunks(STREAM), close_after=1))

    async def scenario(client: StreamClient) -> None:
        for _ in range(3):
            await asyncio.sleep(0.05)  # the server's close has arrived: seen before reuse ...
            if not seen and client._pool._idle:  # ... unless it is not seen: found on sending
                reader, _ = client._pool._idle[0]
                reader.at_eof = lambda: False  # type: ignore[method-assign]
            assert [t.outcome for t in await sends(client, 1)] == ["ok"]

    asyncio.run(server.run(scenario))
    assert (server.connections, server.requests) == (3, 3)  # each request sent once


def test_a_timed_out_stream_closes_its_connection() -> None:
    async def script(index: int, writer: asyncio.StreamWriter) -> bool:
        if index == 0:  # one event, then nothing: past the client's timeout
            writer.write(sse_chunks(completion(" a"))[:-5])
            await writer.drain()
            await asyncio.sleep(1.0)
            return False
        writer.write(sse_chunks(STREAM))
        await writer.drain()
        return True

    server = Scripted(script)

    async def scenario(client: StreamClient) -> None:
        client.timeout_s = 0.1
        assert [t.outcome for t in await sends(client, 2)] == ["timeout", "ok"]

    asyncio.run(server.run(scenario))
    assert server.connections == 2


def test_a_body_left_open_after_done_ends_the_request_at_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(streaming, "DRAIN_S", 0.2)

    async def script(index: int, writer: asyncio.StreamWriter) -> bool:
        if index == 0:  # the stream's end, without the body's end: nothing more comes
            writer.write(sse_chunks(STREAM)[:-5])
            await writer.drain()
            await asyncio.sleep(2.0)
            return False
        writer.write(sse_chunks(STREAM))
        await writer.drain()
        return True

    server = Scripted(script)

    async def scenario(client: StreamClient) -> None:
        started = time.monotonic()
        timings = await sends(client, 2)
        assert [t.outcome for t in timings] == ["ok", "ok"]
        assert timings[0].e2e < 0.2 and time.monotonic() - started < 1.5

    asyncio.run(server.run(scenario))
    assert server.connections == 2  # the one left open was not reused
