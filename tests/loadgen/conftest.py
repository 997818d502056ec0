"""Servers for the load generator's tests: the real inferopt server on loopback, serving a
tiny ONNX model (y = 2x), optionally behind a runner that sleeps a known time per run
(through the server's public `wrap_runner` hook), so the generator's statistics can be
checked against a latency we chose; and small text models with their own vocabulary (an
embedding table of a chosen size), which reject ids past their table."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from inferopt.iospec import IOSpec
from inferopt.serve import BackgroundServer, ModelConfig, ServerConfig
from inferopt.serve.runner import RunControl, Runner

SLEEP_S = 0.020


def double_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["y"])], "g", [x], [y], [two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def vocab_model(rows: int) -> onnx.ModelProto:
    """A text model with a vocabulary of `rows` tokens: input_ids, attention_mask (int64
    [batch, seq]) -> the masked mean of 8-wide embeddings [batch, 8]. Ids past the table
    fail in Gather, as they do in any embedding."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])
    out = helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 8])
    table = np.random.default_rng(0).standard_normal((rows, 8)).astype(np.float32)
    inits = [
        helper.make_tensor("table", TensorProto.FLOAT, [rows, 8], table.ravel().tolist()),
        helper.make_tensor("last", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("seq_axis", TensorProto.INT64, [1], [1]),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["embedded"]),
        helper.make_node("Cast", ["attention_mask"], ["weights"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["weights", "last"], ["weights3"]),
        helper.make_node("Mul", ["embedded", "weights3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "seq_axis"], ["total"], keepdims=0),
        helper.make_node("ReduceSum", ["weights3", "seq_axis"], ["count"], keepdims=0),
        helper.make_node("Div", ["total", "count"], ["pooled"]),
    ]
    graph = helper.make_graph(nodes, "vocab", [ids, mask], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


class Sleeping:
    """The real model, after a fixed sleep: every run takes SLEEP_S more than the model."""

    def __init__(self, inner: Runner) -> None:
        self.inner = inner

    @property
    def io(self) -> IOSpec:
        return self.inner.io

    def run(self, inputs: dict[str, np.ndarray], control: RunControl) -> dict[str, np.ndarray]:
        time.sleep(SLEEP_S)
        return self.inner.run(inputs, control)


@pytest.fixture(scope="session")
def double_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("loadgen-repo")
    (root / "double" / "1").mkdir(parents=True)
    onnx.save(double_model(), str(root / "double" / "1" / "model.onnx"))
    return root


def _start(
    repo: Path, model_config: ModelConfig | None = None, wrap: Any = None
) -> BackgroundServer:
    config = ServerConfig(host="127.0.0.1", http_port=0, grpc_port=0)
    server = BackgroundServer(repo, config, model_config, wrap_runner=wrap)
    server.__enter__()
    server.wait_ready()
    return server


@pytest.fixture(scope="session")
def vocab_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vocab1000 and vocab50: the same text model with 1000 and 50 tokens."""
    root = tmp_path_factory.mktemp("vocab-repo")
    for rows in (1000, 50):
        (root / f"vocab{rows}" / "1").mkdir(parents=True)
        onnx.save(vocab_model(rows), str(root / f"vocab{rows}" / "1" / "model.onnx"))
    return root


@pytest.fixture(scope="module")
def vocab_server(vocab_repo: Path) -> Iterator[BackgroundServer]:
    background = _start(vocab_repo, ModelConfig(max_batch_size=4, instances=1, intra_op_threads=1))
    yield background
    background.stop()


@pytest.fixture(scope="module")
def server(double_repo: Path) -> Iterator[BackgroundServer]:
    """The tiny model as is, with batching."""
    background = _start(double_repo)
    yield background
    background.stop()


@pytest.fixture
def sleepy() -> Iterator[Callable[..., BackgroundServer]]:
    """Start a server whose every run sleeps SLEEP_S, one run at a time, no batching: its
    capacity is 1 / SLEEP_S requests per second."""
    started: list[BackgroundServer] = []

    def start(repo: Path, **settings: Any) -> BackgroundServer:
        config = ModelConfig(max_batch_size=0, instances=1, **settings)
        started.append(_start(repo, config, lambda name, runner: Sleeping(runner)))
        return started[-1]

    yield start
    for background in started:
        background.stop()


@pytest.fixture(scope="session")
def sleep_s() -> float:
    return SLEEP_S


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
