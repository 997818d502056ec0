"""Fixtures for the server tests: model repositories on disk (zoo models, and small ONNX
models built here), and a real server on loopback with ephemeral ports.

The `spin` model is the tool for deadline, admission and drain tests: y = x * scale, plus a
Loop whose trip count comes from the input `spin`, so a request chooses how long it runs
(and the server's latency estimate cannot know it in advance).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from inferopt.serve import BackgroundServer, ModelConfig, ServerConfig

SPIN_WIDTH = 256
LOOPBACK = "127.0.0.1"


def scale_model(scale: float, *, spin: bool = False, batch: bool = True) -> onnx.ModelProto:
    """y = x * scale for x: float32[batch, 4] (or [3] with batch=False)."""
    x_shape: list[str | int] = ["batch", 4] if batch else [3]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
    nodes = [helper.make_node("Mul", ["x", "scale"], ["scaled"])]
    inits = [helper.make_tensor("scale", TensorProto.FLOAT, [], [scale])]
    if spin:
        inputs.append(helper.make_tensor_value_info("spin", TensorProto.INT64, ["batch", 1]))
        nodes += _spin_nodes()
        inits += _spin_initializers()
        nodes.append(helper.make_node("Add", ["scaled", "nothing"], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", ["scaled"], ["y"]))
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, x_shape)
    graph = helper.make_graph(nodes, "scale", inputs, [output], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _spin_nodes() -> list[onnx.NodeProto]:
    """`spin` iterations of acc = tanh(acc @ w), then nothing = 0 * sum(acc): real work whose
    result does not change y."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["acc_in", "w"], ["product"]),
            helper.make_node("Tanh", ["product"], ["acc_out"]),
        ],
        "spin_body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, ["batch", SPIN_WIDTH]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, ["batch", SPIN_WIDTH]),
        ],
    )
    return [
        helper.make_node("ReduceMax", ["spin"], ["trips"], keepdims=0),
        helper.make_node("MatMul", ["x", "widen"], ["acc0"]),
        helper.make_node("Loop", ["trips", "true", "acc0"], ["acc"], body=body),
        helper.make_node("ReduceSum", ["acc"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
    ]


def _spin_initializers() -> list[onnx.TensorProto]:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((SPIN_WIDTH, SPIN_WIDTH)) / 16).astype(np.float32)
    widen = rng.standard_normal((4, SPIN_WIDTH)).astype(np.float32)
    return [
        onnx.numpy_helper.from_array(w, "w"),
        onnx.numpy_helper.from_array(widen, "widen"),
        helper.make_tensor("true", TensorProto.BOOL, [], [True]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
    ]


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def zoo_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits-cnn and minilm in Triton's layout, with a small max batch for minilm (its
    warm-up stays short on two cores)."""
    from inferopt.sources import load

    root = tmp_path_factory.mktemp("zoo-repo")
    for name in ("digits-cnn", "minilm"):
        load(name).save(root / name / "1" / "model.onnx")
    (root / "minilm" / "serve.toml").write_text("max_batch_size = 8\n")
    return root


@pytest.fixture(scope="session")
def zoo_server(zoo_repo: Path) -> Iterator[BackgroundServer]:
    config = ServerConfig(host=LOOPBACK, http_port=0, grpc_port=0)
    with BackgroundServer(zoo_repo, config) as server:
        server.wait_ready()
        yield server


@pytest.fixture
def serve() -> Iterator[Callable[..., BackgroundServer]]:
    """Start a server on a repository (stopped at the end of the test)."""
    started: list[BackgroundServer] = []

    def start(
        repo: Path, model_config: ModelConfig | None = None, **server: Any
    ) -> BackgroundServer:
        config = ServerConfig(host=LOOPBACK, http_port=0, grpc_port=0, **server)
        background = BackgroundServer(repo, config, model_config)
        background.__enter__()
        started.append(background)
        background.wait_ready()
        return background

    yield start
    for background in started:
        background.stop()


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of the server's /metrics (0 when absent)."""
    text = httpx.get(f"http://{url}/metrics", timeout=10).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            inside = series[series.find("{") + 1 : series.rfind("}")] if "{" in series else ""
            got = ",".join(sorted(inside.split(","))) if inside else ""
            if series.split("{")[0] == name and got == want:
                return float(value)
    return 0.0


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll `condition` (bounded in time) until it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met within the time bound")


def spin_per_second() -> float:
    """How many spin iterations this machine runs per second at batch 1 (for sizing work)."""
    import onnxruntime as ort

    session = ort.InferenceSession(scale_model(1.0, spin=True).SerializeToString())
    x = np.ones((1, 4), np.float32)
    trips = 2000
    start = time.perf_counter()
    session.run(None, {"x": x, "spin": np.full((1, 1), trips, np.int64)})
    return trips / (time.perf_counter() - start)


# The helpers as fixtures: with --import-mode=importlib, tests cannot import conftest.


@pytest.fixture(scope="session")
def spin_rate() -> float:
    return spin_per_second()


@pytest.fixture(scope="session")
def build() -> Callable[..., onnx.ModelProto]:
    return scale_model


@pytest.fixture(scope="session")
def save_model() -> Callable[[onnx.ModelProto, Path], Path]:
    return save


@pytest.fixture(scope="session")
def read_metric() -> Callable[..., float]:
    return metric


@pytest.fixture(scope="session")
def poll() -> Callable[..., None]:
    return wait_until


def fuzz_operations(operations: list[Any], mode: Any, max_examples: int) -> int:
    """Drive schemathesis' strategies for each operation with hypothesis (its pytest plugin
    does not run under this pytest): no generated request may get a 5xx, and every refusal
    must say why. Returns how many operations had something to generate in `mode`."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    fuzzed = 0
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=max_examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def no_server_error(case: Any) -> None:
            response = case.call(timeout=60)
            where = f"{case.method} {case.formatted_path}"
            assert response.status_code < 500, f"{where}: {response.text}"
            if response.status_code >= 400:
                assert response.json()["error"], where  # every refusal says why

        try:
            no_server_error()
        except Unsatisfiable:
            # Nothing to violate (no parameters, or only a free-form string in the path).
            assert mode == GenerationMode.NEGATIVE, operation.label
            continue
        fuzzed += 1
    return fuzzed


@pytest.fixture(scope="session")
def fuzz() -> Callable[[list[Any], Any, int], int]:
    return fuzz_operations
