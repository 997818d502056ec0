"""`inferopt bench`: settings from the command line, bad input as one-line errors, a short
real run against our server serving digits-cnn, writing JSON and HTML; and what it sends to
text models with their own vocabulary, and how it ends when requests fail (exit 1 when
none succeeded, a warning when most failed)."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inferopt.cli import main
from inferopt.commands import bench
from inferopt.errors import InferoptError
from inferopt.iospec import IOSpec
from inferopt.serve import BackgroundServer, ModelConfig, ServerConfig
from inferopt.serve.runner import RunControl, Runner

SHORT = ("--duration", "1.2", "--window", "0.4", "--warmup", "0.2")
LOOPBACK = ServerConfig(host="127.0.0.1", http_port=0, grpc_port=0)
ONE_AT_A_TIME = ModelConfig(max_batch_size=0, instances=1, intra_op_threads=1)
MINILM_VOCAB = 30522  # BERT's uncased word pieces, as MiniLM's tokenizer makes them


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


def vocab_model(rows: int) -> onnx.ModelProto:
    """A text model with its own vocabulary of `rows` tokens: embeddings [batch, seq, 4] of
    input_ids, zeroed where attention_mask is 0. An id past the table fails, as in any model."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])
    out = helper.make_tensor_value_info("embedded", TensorProto.FLOAT, ["batch", "seq", 4])
    table = np.linspace(-1, 1, rows * 4, dtype=np.float32).reshape(rows, 4)
    inits = [
        numpy_helper.from_array(table, "table"),
        helper.make_tensor("last", TensorProto.INT64, [1], [-1]),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["rows"]),
        helper.make_node("Cast", ["attention_mask"], ["weights"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["weights", "last"], ["weights3"]),
        helper.make_node("Mul", ["rows", "weights3"], ["embedded"]),
    ]
    graph = helper.make_graph(nodes, "vocab", [ids, mask], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def vocab_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    """small_text: a 1000-token vocabulary; tiny: 50 tokens (fewer than random ids reach)."""
    repo = tmp_path_factory.mktemp("vocab-repo")
    for name, rows in (("small_text", 1000), ("tiny", 50)):
        (repo / name / "1").mkdir(parents=True)
        onnx.save(vocab_model(rows), str(repo / name / "1" / "model.onnx"))
    with BackgroundServer(repo, LOOPBACK, ONE_AT_A_TIME) as server:
        server.wait_ready()
        yield server


def test_by_default_a_model_gets_ids_it_knows_from_the_servers_spec(
    vocab_server: BackgroundServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b.json"
    argv = ["bench", vocab_server.http_url, "--model", "small_text", "--concurrency", "2"]
    assert main([*argv, *SHORT, "--json", str(out)]) == 0
    answers = json.loads(out.read_text())["answers"]
    assert answers["ok"] == answers["total"] > 10 and answers["failed"] == 0
    printed = capsys.readouterr().out
    assert "data: the server's input spec (input_ids: int64[batch, seq] (ids 0..999)" in printed
    assert "warning" not in printed and "note" not in printed


def test_a_run_where_nothing_succeeds_exits_1_with_the_servers_message(
    vocab_server: BackgroundServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Over gRPC our server's spec is not available (as with any other server): random ids
    # 0..99, which a 50-token vocabulary rejects.
    out = tmp_path / "b.json"
    argv = ["bench", vocab_server.grpc_url, "--model", "tiny", "--protocol", "grpc"]
    assert main([*argv, *SHORT, "--json", str(out)]) == 1
    captured = capsys.readouterr()
    assert "note: integer inputs are random 0..99 (input_ids): give --data or --tokenizer" in (
        captured.out
    )
    [line] = captured.err.strip().splitlines()
    answers = json.loads(out.read_text())["answers"]
    assert answers["ok"] == 0 and answers["total"] > 0
    assert line.startswith(f"inferopt bench: 0 of {answers['total']} requests succeeded: ")
    assert re.search("INVALID_ARGUMENT [\"']the model rejected the inputs", line)
    assert "out of data bounds" in line


def test_a_run_where_most_requests_fail_warns_above_the_table(
    vocab_server: BackgroundServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "d.npz"  # one sample in four within the 50-token vocabulary
    ids = np.array([[1, 2, 3], [60, 1, 2], [1, 70, 2], [1, 2, 80]], dtype=np.int64)
    np.savez(data, input_ids=ids, attention_mask=np.ones_like(ids))
    argv = ["bench", vocab_server.http_url, "--model", "tiny", "--data", str(data)]
    assert main([*argv, *SHORT]) == 0  # something succeeded: a result, with a warning
    printed = capsys.readouterr().out
    warning = printed.split("warning: ", 1)[1].splitlines()[0]
    failed, total, share = (int(x) for x in re.findall(r"\d+", warning)[:3])
    assert 0.7 < failed / total < 0.8 and 70 <= share <= 80
    assert re.search("requests failed .* most often 400 [\"']the model rejected", warning)
    assert printed.index("warning: ") < printed.index("tiny at ")  # above the table


class Recording:
    """The model as is, keeping each request's input_ids (no batching: one request a run)."""

    def __init__(self, inner: Runner, seen: list[np.ndarray]) -> None:
        self.inner, self.seen = inner, seen

    @property
    def io(self) -> IOSpec:
        return self.inner.io

    def run(self, inputs: dict[str, np.ndarray], control: RunControl) -> dict[str, np.ndarray]:
        self.seen.append(inputs["input_ids"])
        return self.inner.run(inputs, control)


def recorded_bench(repo: Path, model: str, *flags: str) -> list[np.ndarray]:
    """Serve `repo` and bench `model` with `flags`: the input_ids of every request it sent."""
    seen: list[np.ndarray] = []
    with BackgroundServer(
        repo, LOOPBACK, ONE_AT_A_TIME, wrap_runner=lambda _, r: Recording(r, seen)
    ) as server:
        server.wait_ready()
        warmed = len(seen)
        argv = ["bench", server.http_url, "--model", model, *flags]
        assert main([*argv, "--concurrency", "2", *SHORT]) == 0
    return seen[warmed:]


def assert_real_sentences(sent: list[np.ndarray]) -> None:
    assert len(sent) > 10
    # BERT's [CLS] ... [SEP] around sentences of their own lengths
    assert all(ids.shape[0] == 1 and ids[0, 0] == 101 and ids[0, -1] == 102 for ids in sent)
    assert len({ids.shape[1] for ids in sent}) > 3


def test_tokenizer_minilm_sends_minilms_tokens_of_real_sentences(tmp_path: Path) -> None:
    (tmp_path / "bert_vocab" / "1").mkdir(parents=True)
    onnx.save(vocab_model(MINILM_VOCAB), str(tmp_path / "bert_vocab" / "1" / "model.onnx"))
    assert_real_sentences(recorded_bench(tmp_path, "bert_vocab", "--tokenizer", "minilm"))


@pytest.mark.slow  # the real model: about ten seconds to load and warm up on two cores
def test_tokenizer_minilm_against_the_minilm_zoo_model(tmp_path: Path) -> None:
    from inferopt import zoo
    from inferopt.sources import load

    cached = zoo.cache_path(zoo.get("minilm"))
    if not cached.is_file():
        load("minilm")  # exports it into the cache
    (tmp_path / "minilm" / "1").mkdir(parents=True)
    shutil.copyfile(cached, tmp_path / "minilm" / "1" / "model.onnx")
    assert_real_sentences(recorded_bench(tmp_path, "minilm", "--tokenizer", "minilm"))


def test_input_choices_exclude_each_other_and_a_bad_range_is_one_line() -> None:
    with pytest.raises(SystemExit) as caught:
        parse("127.0.0.1:1", "--model", "m", "--data", "d.npz", "--tokenizer", "minilm")
    assert caught.value.code == 2
    args = parse(f"127.0.0.1:{free_port()}", "--model", "m", "--int-range", "0-99")
    with pytest.raises(InferoptError, match=r"--int-range must be LOW\.\.HIGH"):
        args.func(args)
