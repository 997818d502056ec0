"""`inferopt bench --api openai-completions|openai-chat|oip-generate`: a short run against the
fake streaming server (tests/loadgen/fake_streams.py) writing JSON and HTML whose figures match
its pace; plain progress lines off a terminal; exit 1 when nothing succeeded; bad input as
one line and exit status 2, before any request."""

from __future__ import annotations

import json
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferopt.cli import main

sys.path.insert(0, str(Path(__file__).parents[1] / "loadgen"))
from fake_streams import FIRST_S, GAP_S, FakeStreams

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeStreams]:
    with FakeStreams() as server:
        yield server


@pytest.fixture(autouse=True)
def counted_from_zero(fake: FakeStreams) -> None:
    """Each test's requests are numbered from 0, so per-request behaviours are as documented."""
    fake.reset()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_a_short_run_prints_and_writes_json_and_html(
    fake: FakeStreams, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json, out_html = tmp_path / "s.json", tmp_path / "s.html"
    argv = [
        "bench", fake.url, "--model", "mixed", "--api", "openai-chat", "--concurrency", "2",
        "--requests", "8", "--max-tokens", "8", "--prompt-tokens", "24:6", "--ttft-slo-ms",
        "100", "--tpot-slo-ms", "20", "--json", str(out_json), "--html", str(out_html),
    ]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads(out_json.read_text())
    assert doc["target"] == {"url": fake.url, "model": "mixed", "api": "openai-chat"}
    assert doc["config"]["mode"] == "closed" and doc["config"]["level"] == 2
    assert doc["config"]["prompt_length"] == {"mean": 24.0, "stddev": 6.0}
    assert doc["config"]["shared_prefix"] == 0 and doc["config"]["ignore_eos"] is False
    assert doc["prompts"]["unit"] == "words" and doc["prompts"]["count"] == 8
    assert doc["requests"] == {"total": 8, "ok": 8, "failed": 0}
    assert doc["throughput"]["output_tokens"] == 64
    assert doc["goodput"]["requests"] == 4 and doc["goodput"]["share"] == 0.5
    # The fake server may end its pause up to ~1 ms early (tests/loadgen/test_streams.py).
    assert FIRST_S * 1000 - 2 <= doc["ttft_ms"]["p50"] <= FIRST_S * 1000 + 20
    assert doc["ttft_ms"]["p50"] <= doc["ttft_ms"]["p90"] <= doc["ttft_ms"]["p99"]
    assert GAP_S * 800 <= doc["itl_ms"]["p50"] <= GAP_S * 1000 + 10
    assert doc["errors"]["by_status"] == {} and doc["errors"]["rejected_429"] == 0
    assert out_html.read_text().count("data:image/png;base64,") == 3
    printed = capsys.readouterr().out
    assert "TTFT" in printed and "goodput (TTFT <= 100 ms and TPOT <= 20 ms)" in printed
    assert "8 ended, 8 ok, TTFT p50" in printed  # plain progress: not a terminal


def test_open_loop_against_oip_generate_counts_refusals(fake: FakeStreams, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    argv = [
        "bench", fake.url, "--model", "reject", "--api", "oip-generate", "--rate", "50",
        "--arrival", "poisson", "--requests", "6", "--max-tokens", "4", "--json", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    assert doc["config"]["arrival"] == "poisson" and doc["requests"]["total"] == 6
    assert doc["requests"]["ok"] == 3 and doc["errors"]["rejected_429"] == 3
    assert doc["throughput"]["output_tokens"] == 4 * 3
    assert doc["answers"]["messages"]["429"] == "too many requests, slow down"


def test_exit_1_when_nothing_succeeds(
    fake: FakeStreams, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", fake.url, "--model", "steady", "--api", "openai-completions"]
    assert main([*argv, "--requests", "2", "--max-tokens", "8", "--timeout", "0.02"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("inferopt bench: 0 of 2 requests succeeded: timeout")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--max-tokens", "0"), "--max-tokens must be >= 1"),
        (("--max-tokens", "many"), "--max-tokens must be a number, got 'many'"),
        (("--max-tokens", "2.5"), "--max-tokens must be a whole number"),
        (("--requests", "-1"), "--requests must be >= 1"),
        (("--prompt-tokens", "0"), "--prompt-tokens '0': the prompt length must be >= 1"),
        (("--prompt-tokens", "long"), "--prompt-tokens must be MEAN or MEAN:STDDEV"),
        (("--shared-prefix-tokens", "-3"), "--shared-prefix-tokens must be >= 0"),
        (("--ttft-slo-ms", "-5"), "--ttft-slo-ms must be > 0 ms, got '-5'"),
        (("--tpot-slo-ms", "0"), "--tpot-slo-ms must be > 0 ms, got '0'"),
        (("--tpot-slo-ms", "fast"), "--tpot-slo-ms must be a number"),
        (("--rate", "0"), "the rate must be > 0"),
        (("--concurrency", "1,2"), "streaming APIs run one load level"),
        (("--duration", "0"), "duration_s must be > 0"),
        (("--binary",), "--binary does not apply to --api openai-chat"),
        (("--slo-ms", "50"), "--slo-ms .* does not apply"),
        (("--tokenizer", "/nonexistent"), "no tokenizer.json there"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    flags: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", f"127.0.0.1:{free_port()}", "--model", "m", "--api", "openai-chat", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("inferopt: error:")
    assert re.search(message, err), err


def test_an_unreachable_server_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", f"127.0.0.1:{free_port()}", "--model", "m", "--api", "oip-generate"]
    assert main([*argv, "--requests", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot reach http://127.0.0.1:" in err


def test_stream_flags_need_a_streaming_api(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", f"127.0.0.1:{free_port()}", "--model", "m", "--max-tokens", "8"]) == 2
    assert "--max-tokens is for streaming APIs only" in capsys.readouterr().err


def test_an_unknown_api_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["bench", "127.0.0.1:1", "--model", "m", "--api", "openai"])
    assert caught.value.code == 2
    assert "invalid choice: 'openai'" in capsys.readouterr().err
