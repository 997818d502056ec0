"""Real third-party models through the real CLI, step by step, as a user would type it:
export, profile, optimize (fuse,int8-dynamic), serve (an answer checked against ONNX
Runtime's own) and bench. Every step must succeed on every model; each test prints the
figure its step gives (run with -s to see them).

Timings are short on purpose (the file runs in `make test` on two cores); servers listen on
loopback only, on free ports.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from tritonclient.utils import np_to_triton_dtype

pytestmark = pytest.mark.field

INFEROPT = Path(sys.executable).with_name("inferopt")  # the venv's console script
LOOPBACK = "127.0.0.1"
LOAD_TIMEOUT_S = 180.0  # start-up, load and warm-up of one model on a busy two-core machine
# Rich wraps tables at the terminal width; wide enough that a table row is one line.
CLI_ENV = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1"}


def cli(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INFEROPT), *args], capture_output=True, text=True, timeout=timeout, env=CLI_ENV
    )


def failed(step: str, done: subprocess.CompletedProcess[str]) -> str:
    """The assertion message: the exit status and the last lines the command printed."""
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
    return f"`inferopt {step}` exited {done.returncode}:\n{tail}"


def report(field: Any, step: str, figure: str) -> None:
    print(f"\nFIELD {field.model.name} {step}: {figure}")


def run_onnxruntime(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def table_rows(text: str, label: str) -> list[str]:
    """The lines of a printed table whose first cell is `label` (and their continuations)."""
    rows: list[str] = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) >= 2 and (cells[0] == label or (rows and not cells[0])):
            rows.append(cells[1])
        elif rows:
            break
    return rows


# ----------------------------------------------------------------------- the offline steps


def test_export_writes_a_model_that_answers_like_the_original(
    field_file: Any, tmp_path: Path
) -> None:
    out = tmp_path / "exported.onnx"
    done = cli("export", str(field_file.path), "--out", str(out), "--no-latency", timeout=300)
    assert done.returncode == 0, failed("export", done)
    feeds = field_file.model.example(np.random.default_rng(0))
    want = run_onnxruntime(field_file.path, feeds)
    got = run_onnxruntime(out, feeds)
    for name, values in want.items():
        np.testing.assert_allclose(got[name], values, rtol=1e-4, atol=1e-5, err_msg=name)
    report(field_file, "export", f"ok, {out.stat().st_size / 2**20:.2f} MiB")


def test_profile_measures_batch_one(field_file: Any, tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    done = cli(
        "profile", str(field_file.path), "--no-memory", "--max-time", "0.5", "--min-time", "0",
        "--sweep-time", "1", "--batch-sizes", "1", "--json", str(out), timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, failed("profile", done)
    points = [p for p in json.loads(out.read_text())["points"] if p["batch"] == 1]
    assert points, "the profile has no point at batch 1"
    p50 = points[0]["latency"]["p50_ms"]
    assert p50 > 0
    report(field_file, "profile", f"p50 {p50:.3f} ms at batch 1 ({points[0]['threads']} threads)")


def test_int8_recipe_writes_a_model_that_runs(field_file: Any, tmp_path: Path) -> None:
    out = tmp_path / "optimized"
    done = cli(
        "optimize", str(field_file.path), "--recipe", "fuse,int8-dynamic", "--out", str(out),
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, failed("optimize", done)
    fidelity = table_rows(done.stdout, "fidelity")
    latency = table_rows(done.stdout, "latency")
    assert fidelity and latency, f"no fidelity or latency line in:\n{done.stdout}"
    feeds = field_file.model.example(np.random.default_rng(0))
    outputs = run_onnxruntime(out / "model.onnx", feeds)
    assert all(np.isfinite(v).all() for v in outputs.values() if v.dtype.kind == "f")
    report(field_file, "optimize fidelity", " / ".join(fidelity[:2]))
    report(field_file, "optimize latency", latency[0])


# ------------------------------------------------------------------------- serve and bench


@dataclass(frozen=True)
class Served:
    url: str  # host:port of HTTP
    name: str
    state: dict[str, str]  # the model's entry in the repository index
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
    return port


def model_state(url: str, name: str) -> dict[str, str] | None:
    """The model's repository-index entry, or None while the server is not answering."""
    try:
        entries = httpx.post(f"http://{url}/v2/repository/index", json={}, timeout=5).json()
    except httpx.HTTPError:
        return None
    return next((e for e in entries if e.get("name") == name), None)


def loading_over(state: dict[str, str] | None) -> bool:
    """READY, or UNAVAILABLE because loading or warm-up failed. Until its loading starts,
    the index lists a model as UNAVAILABLE with the reason "not loaded": not over yet."""
    if state is None:
        return False
    failed = state.get("state") == "UNAVAILABLE" and state.get("reason") != "not loaded"
    return state.get("state") == "READY" or failed


def wait_loaded(process: subprocess.Popen[bytes], url: str, name: str, log: Path) -> dict[str, str]:
    """The model's index entry once its loading is over, bounded in time."""
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    state = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"`inferopt serve` exited {process.returncode}:\n{log.read_text()[-3000:]}")
        state = model_state(url, name)
        if loading_over(state):
            assert state is not None
            return state
        time.sleep(0.2)
    pytest.fail(f"{name} still {state} after {LOAD_TIMEOUT_S:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def served(field_file: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`inferopt serve REPO` in a process of its own, the model alone in Triton's layout."""
    name = field_file.model.name
    repo = tmp_path_factory.mktemp(f"repo-{name}")
    (repo / name / "1").mkdir(parents=True)
    shutil.copyfile(field_file.path, repo / name / "1" / "model.onnx")
    log = repo.with_name(f"{repo.name}-serve.log")
    http_port, grpc_port = free_port(), free_port()
    command = [
        str(INFEROPT), "serve", str(repo), "--host", LOOPBACK,
        "--http-port", str(http_port), "--grpc-port", str(grpc_port),
    ]  # fmt: skip
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=CLI_ENV)
    url = f"{LOOPBACK}:{http_port}"
    try:
        yield Served(url, name, wait_loaded(process, url, name, log), log)
    finally:
        process.terminate()  # SIGTERM: the server drains and exits
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def assert_ready(served: Served) -> None:
    state = served.state
    assert state.get("state") == "READY", (
        f"`inferopt serve` left {served.name} {state.get('state')}: {state.get('reason', '')}"
    )


def infer_inputs(metadata: dict[str, Any], feeds: dict[str, np.ndarray]) -> list[Any]:
    """The request's tensors, after checking the served metadata agrees with them."""
    declared = {t["name"]: t for t in metadata["inputs"]}
    assert set(declared) == set(feeds), f"served inputs {sorted(declared)}, model {sorted(feeds)}"
    tensors = []
    for name, values in feeds.items():
        spec = declared[name]
        assert spec["datatype"] == np_to_triton_dtype(values.dtype), spec
        dims = [int(d) for d in spec["shape"]]
        assert len(dims) == values.ndim, f"served shape {dims} for {name}{list(values.shape)}"
        assert all(d in (-1, v) for d, v in zip(dims, values.shape, strict=True)), spec
        tensor = triton.InferInput(name, list(values.shape), spec["datatype"])
        tensor.set_data_from_numpy(values, binary_data=True)
        tensors.append(tensor)
    return tensors


def test_serve_answers_like_onnxruntime(field_file: Any, served: Served) -> None:
    assert_ready(served)
    client = triton.InferenceServerClient(served.url, network_timeout=60.0)
    try:
        metadata = client.get_model_metadata(served.name)
        feeds = field_file.model.example(np.random.default_rng(1))
        outputs = [triton.InferRequestedOutput(o["name"]) for o in metadata["outputs"]]
        result = client.infer(served.name, infer_inputs(metadata, feeds), outputs=outputs)
    finally:
        client.close()
    want = run_onnxruntime(field_file.path, feeds)
    for name, values in want.items():
        got = result.as_numpy(name)
        assert got is not None, f"no output {name!r} in the answer"
        np.testing.assert_allclose(got, values, rtol=1e-3, atol=1e-5, err_msg=name)
    report(field_file, "serve", "READY, answer equals onnxruntime's")


def test_bench_gets_only_successes(field_file: Any, served: Served, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = cli(
        "bench", served.url, "--model", served.name, "--concurrency", "2", "--duration", "4",
        "--warmup", "1", "--window", "1", "--json", str(out), timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, failed("bench", done)
    point = json.loads(out.read_text())["points"][0]
    ok = point["outcomes"].get("ok", 0)
    # bench prints no error text per request; its table and data line say what it sent
    assert ok > 0 and point["requests"] == ok, f"outcomes {point['outcomes']}:\n{done.stdout}"
    latency = point["latency_ms"]
    report(
        field_file, "bench",
        f"{point['throughput_rps']:.1f} req/s at concurrency 2, p50 {latency['p50']:.1f} ms, "
        f"{ok} ok",
    )  # fmt: skip
