"""Triton's perf_analyzer (it ships in tritonclient's wheel) against the real server on
loopback, over HTTP and gRPC, with its defaults and a bounded measurement, on models with
string outputs, batch-only string and BOOL inputs, and FP16.

perf_analyzer needs two shared libraries the wheel leaves out (libb64, and libcudart even on a
CPU). They are fetched once into the test cache, as case 07 does (a Debian package and a pip
wheel, unpacked; nothing is installed), and the tests skip, saying why, where they cannot be.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf.json_format import ParseDict
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2

from inferopt.serve import BackgroundServer, ModelConfig, ServerConfig

PERF_ANALYZER = Path(sys.executable).with_name("perf_analyzer")
LIBRARIES = ("libb64.so.0d", "libcudart.so.12")
WINDOW = 25  # requests per measurement window
# Its defaults, bounded: a few windows of a few requests. Stability is perf_analyzer's
# judgement of the machine (on a 2-core VM shared with other work, windows differ by more than
# its default 10%, for any server; see docs/serve.md), so its bound is loosened: what is
# tested is that every request it sends is served.
BOUNDED = [
    "--measurement-mode=count_windows",
    f"--measurement-request-count={WINDOW}",
    "--max-trials=5",
    "--stability-percentage=1000",
]
THROUGHPUT = re.compile(r"Concurrency: 1, throughput: ([0-9.]+) infer/sec")


# ---- perf_analyzer and its libraries ----


@pytest.fixture(scope="session")
def perf_env() -> dict[str, str]:
    """The environment perf_analyzer starts in (its libraries on LD_LIBRARY_PATH)."""
    if not PERF_ANALYZER.exists():
        pytest.skip(f"no perf_analyzer next to {sys.executable} (tritonclient without it)")
    if _starts(dict(os.environ)):
        return dict(os.environ)
    libdir = Path(os.environ["INFEROPT_CACHE"]) / "perf_analyzer-libs"
    if not all((libdir / name).exists() for name in LIBRARIES):
        _fetch(libdir)
    env = {**os.environ, "LD_LIBRARY_PATH": str(libdir)}
    if not _starts(env):
        pytest.skip(f"perf_analyzer does not start even with {', '.join(LIBRARIES)} from {libdir}")
    return env


def _starts(env: dict[str, str]) -> bool:
    run = subprocess.run([PERF_ANALYZER, "--version"], env=env, capture_output=True, timeout=60)
    return run.returncode == 0


def _fetch(libdir: Path) -> None:
    missing = [tool for tool in ("apt-get", "dpkg-deb") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"cannot fetch perf_analyzer's libb64: {', '.join(missing)} not found")
    libdir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=libdir.parent) as tmp:
        work = Path(tmp)
        _step(["apt-get", "download", "libb64-0d"], work)
        _step(["dpkg-deb", "-x", str(next(work.glob("libb64-0d_*.deb"))), "root"], work)
        wheel = "nvidia-cuda-runtime-cu12"
        _step([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", ".", wheel], work)
        staged = work / "lib"
        staged.mkdir()
        shutil.copy(next((work / "root").rglob("libb64.so.0d")), staged)
        with zipfile.ZipFile(next(work.glob("nvidia_cuda_runtime_cu12-*.whl"))) as archive:
            member = next(n for n in archive.namelist() if n.endswith("/libcudart.so.12"))
            (staged / "libcudart.so.12").write_bytes(archive.read(member))
        shutil.rmtree(libdir, ignore_errors=True)  # an incomplete earlier attempt
        with contextlib.suppress(OSError):  # a parallel run got there first
            staged.rename(libdir)  # atomic: a parallel run sees all of it or none


def _step(command: list[str], cwd: Path) -> None:
    try:
        run = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip(f"cannot fetch perf_analyzer's libraries: {' '.join(command)} timed out")
    if run.returncode != 0:
        why = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
        pytest.skip(f"cannot fetch perf_analyzer's libraries: {' '.join(command)}: {why[0]}")


# ---- models ----


def _save(graph: onnx.GraphProto, path: Path, *opsets: tuple[str, int]) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def write_models(repo: Path) -> None:
    """labels: x float[N,3] -> label string[N] (batch-only), scores float[N,2];
    words: string[N] -> string[N] (batch-only in and out);
    halfbool: h float16[N,2] -> Relu; flag bool[N] (batch-only) -> Not."""
    classify = helper.make_node(
        "LinearClassifier",
        ["x"],
        ["label", "scores"],
        domain="ai.onnx.ml",
        classlabels_strings=["low", "high"],
        coefficients=[0.5, -1.0, 2.0, -0.5, 1.0, -2.0],
        intercepts=[0.0, 0.1],
        post_transform="SOFTMAX",
    )
    floats = helper.make_tensor_value_info
    _save(
        helper.make_graph(
            [classify],
            "labels",
            [floats("x", TensorProto.FLOAT, ["N", 3])],
            [
                floats("label", TensorProto.STRING, ["N"]),
                floats("scores", TensorProto.FLOAT, ["N", 2]),
            ],
        ),
        repo / "labels.onnx",
        ("", 17),
        ("ai.onnx.ml", 1),
    )
    encode = helper.make_node(
        "LabelEncoder",
        ["w"],
        ["upper"],
        domain="ai.onnx.ml",
        keys_strings=["yes", "no"],
        values_strings=["YES", "NO"],
        default_string="-",
    )
    _save(
        helper.make_graph(
            [encode],
            "words",
            [floats("w", TensorProto.STRING, ["N"])],
            [floats("upper", TensorProto.STRING, ["N"])],
        ),
        repo / "words.onnx",
        ("", 17),
        ("ai.onnx.ml", 2),
    )
    _save(
        helper.make_graph(
            [helper.make_node("Relu", ["h"], ["r"]), helper.make_node("Not", ["flag"], ["nflag"])],
            "halfbool",
            [floats("h", TensorProto.FLOAT16, ["N", 2]), floats("flag", TensorProto.BOOL, ["N"])],
            [floats("r", TensorProto.FLOAT16, ["N", 2]), floats("nflag", TensorProto.BOOL, ["N"])],
        ),
        repo / "halfbool.onnx",
        ("", 17),
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    repo = tmp_path_factory.mktemp("perf-analyzer-repo")
    write_models(repo)
    config = ServerConfig(host="127.0.0.1", http_port=0, grpc_port=0)
    with BackgroundServer(repo, config, ModelConfig(max_batch_size=4)) as background:
        background.wait_ready()
        yield background


def counts(server: BackgroundServer, model: str) -> tuple[int, int]:
    """(successes, failures) in the server's statistics of `model`."""
    url = f"http://{server.http_url}/v2/models/{model}/stats"
    stats = httpx.get(url, timeout=10).json()["model_stats"][0]["inference_stats"]
    return stats["success"]["count"], stats["fail"]["count"]


# ---- the tests ----


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", ["labels", "words", "halfbool"])
def test_perf_analyzer_drives_the_model_with_its_defaults(
    server: BackgroundServer, perf_env: dict[str, str], model: str, protocol: str
) -> None:
    url = server.http_url if protocol == "http" else server.grpc_url
    served, failed = counts(server, model)
    command = [PERF_ANALYZER, "-m", model, "-u", url, "-i", protocol, *BOUNDED]
    run = subprocess.run(command, env=perf_env, capture_output=True, text=True, timeout=240)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    throughput = THROUGHPUT.search(output)
    assert throughput is not None and float(throughput[1]) > 0, output[-3000:]
    now_served, now_failed = counts(server, model)
    assert now_failed == failed, output[-3000:]
    assert now_served - served >= 3 * WINDOW  # at least three windows, all answered


def test_grpc_model_config_shows_batch_only_tensors_as_columns(server: BackgroundServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    config = client.get_model_config("halfbool").config
    assert [(i.name, list(i.dims), i.HasField("reshape")) for i in config.input] == [
        ("h", [2], False),
        ("flag", [1], True),
    ]
    assert list(config.input[1].reshape.shape) == []
    http = httpx.get(f"http://{server.http_url}/v2/models/halfbool/config").json()
    del http["inferopt"]
    assert config == ParseDict(http, model_config_pb2.ModelConfig())
    # what perf_analyzer sends: [b, 1], and random bytes for BOOL (nonzero is true)
    flags = np.array([[7], [0], [255]], np.uint8).view(np.bool_)
    h = np.array([[-1, 2], [3, -4], [0.5, 0]], np.float16)
    inputs = [
        grpcclient.InferInput("h", [3, 2], "FP16"),
        grpcclient.InferInput("flag", [3, 1], "BOOL"),
    ]
    inputs[0].set_data_from_numpy(h)
    inputs[1].set_data_from_numpy(flags)
    result = client.infer("halfbool", inputs)
    assert result.as_numpy("nflag").tolist() == [[False], [True], [False]]
    assert result.as_numpy("r").tolist() == np.maximum(h, 0).tolist()
