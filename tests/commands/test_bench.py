"""`inferopt bench`: settings from the command line, bad input as one-line errors, and a
short real run against our server serving digits-cnn, writing JSON and HTML."""

from __future__ import annotations

import argparse
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferopt.commands import bench
from inferopt.errors import InferoptError
from inferopt.serve import BackgroundServer, ServerConfig


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="inferopt")
    bench.add_parser(parser.add_subparsers())
    return parser.parse_args(["bench", *argv])


@pytest.fixture(scope="module")
def digits_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    from inferopt.sources import load

    repo = tmp_path_factory.mktemp("bench-repo")
    load("digits-cnn").save(repo / "digits" / "1" / "model.onnx")
    config = ServerConfig(host="127.0.0.1", http_port=0, grpc_port=0)
    with BackgroundServer(repo, config) as server:
        server.wait_ready()
        yield server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_a_short_run_prints_and_writes_json_and_html(
    digits_server: BackgroundServer, tmp_path: Path
) -> None:
    out_json, out_html = tmp_path / "bench.json", tmp_path / "bench.html"
    args = parse(
        digits_server.http_url, "--model", "digits", "--binary", "--rate", "40,80",
        "--arrival", "poisson", "--duration", "1.6", "--window", "0.4", "--warmup", "0.2",
        "--slo-ms", "500", "--json", str(out_json), "--html", str(out_html),
    )  # fmt: skip
    assert args.func(args) == 0
    doc = json.loads(out_json.read_text())
    assert [p["level"] for p in doc["points"]] == [40.0, 80.0]
    for point in doc["points"]:
        assert point["mode"] == "open" and point["arrival"] == "poisson"
        assert point["outcomes"]["ok"] > 0 and point["requests"] == point["outcomes"]["ok"]
        assert 0.5 * point["level"] < point["throughput_rps"] < 1.5 * point["level"]
        assert point["server"]["batch_size"] >= 1.0
    assert doc["target"] == {
        "url": digits_server.http_url, "model": "digits", "protocol": "http", "binary": True,
    }  # fmt: skip
    assert out_html.read_text().count("data:image/png;base64,") == 2


def test_an_unreachable_server_is_a_one_line_error() -> None:
    args = parse(f"127.0.0.1:{free_port()}", "--model", "digits", "--duration", "5")
    with pytest.raises(InferoptError, match=r"cannot reach http://127\.0\.0\.1:\d+") as caught:
        args.func(args)
    assert "\n" not in str(caught.value)


def test_an_unknown_model_is_a_one_line_error(digits_server: BackgroundServer) -> None:
    args = parse(digits_server.http_url, "--model", "nope", "--duration", "5")
    with pytest.raises(InferoptError, match="model 'nope' not found"):
        args.func(args)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--rate", "0"), "the rate must be > 0"),
        (("--rate", "10,-1"), "the rate must be > 0"),
        (("--concurrency", "0"), "the concurrency must be > 0"),
        (("--concurrency", "1.5"), "whole number"),
        (("--concurrency", "many"), "--concurrency must be a number"),
        (("--slo-ms", "fast"), "--slo-ms must be a number, got 'fast'"),
        (("--slo-ms", "-3"), "the SLO must be > 0 ms"),
        (("--slo-ms", "nan"), "--slo-ms must be a finite number"),
        (("--duration", "0.1"), "room for the warm-up"),
    ],
)
def test_bad_settings_are_refused_before_connecting(flags: tuple[str, ...], message: str) -> None:
    args = parse(f"127.0.0.1:{free_port()}", "--model", "m", *flags)
    with pytest.raises(InferoptError, match=message):
        args.func(args)


def test_rate_and_concurrency_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse("127.0.0.1:1", "--model", "m", "--rate", "1", "--concurrency", "1")
    assert caught.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_an_address_without_a_port_is_a_one_line_error() -> None:
    args = parse("localhost", "--model", "m")
    with pytest.raises(InferoptError, match="give the server as host:port"):
        args.func(args)
