"""Server processes for benchmarks/serving.py: inferopt's server and Seldon MLServer, each
started on a free port, pinned to the given cores, and waited for until ready.

MLServer runs from its own virtual environment (build/mlserver-venv, created here from
benchmarks/mlserver/requirements.txt on first use), because it pins protobuf < 7 and
inferopt's generated gRPC modules need a newer one.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
MLSERVER_DIR = Path(__file__).resolve().parent / "mlserver"
MLSERVER_VENV = ROOT / "build" / "mlserver-venv"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    """A server process; `cpu_seconds()` counts it and its children (MLServer's workers)."""

    def __init__(self, command: list[str], port: int, model: str, **popen: Any) -> None:
        self.port = port
        self.model = model
        self.log = open(ROOT / "build" / f"bench-{model}-{port}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, **popen)
        self._wait_ready()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.time() + timeout
        url = f"http://{self.url}/v2/models/{self.model}/ready"
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}); see {self.log.name}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"server not ready within {timeout:.0f} s; see {self.log.name}")

    def _tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self._tree():
            try:
                t = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system
        return total

    def rss_mb(self) -> float:
        return sum(p.memory_info().rss for p in self._tree()) / 2**20

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def inferopt_server(repo: Path, model: str, cores: str, *flags: str) -> Process:
    port = free_port()
    command = ["taskset", "-c", cores, sys.executable, "-m", "inferopt.serve", str(repo),
               "--http-port", str(port), "--no-grpc", *flags]  # fmt: skip
    return Process(command, port, model)


def ensure_mlserver_venv() -> Path:
    """build/mlserver-venv with the pinned requirements (idempotent: a marker file records
    the requirements it was built from)."""
    requirements = MLSERVER_DIR / "requirements.txt"
    marker = MLSERVER_VENV / "inferopt-requirements.txt"
    wanted = requirements.read_text()
    if marker.is_file() and marker.read_text() == wanted:
        return MLSERVER_VENV / "bin" / "mlserver"
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(MLSERVER_VENV)], check=True)
    pip = [str(MLSERVER_VENV / "bin" / "pip"), "install", "-q", "-r", str(requirements)]
    with open(ROOT / "build" / "mlserver-venv-install.log", "w") as log:
        subprocess.run(pip, check=True, stdout=log, stderr=subprocess.STDOUT)
    marker.write_text(wanted)
    return MLSERVER_VENV / "bin" / "mlserver"


def mlserver(
    folder: Path,
    model: str,
    onnx_path: Path,
    metadata: dict[str, list[dict[str, Any]]],
    cores: str,
    max_batch_size: int,
    max_batch_time_s: float,
) -> Process:
    """MLServer serving `onnx_path` through benchmarks/mlserver/onnx_runtime.py, with its
    adaptive batching (off when max_batch_size <= 1), one worker process (its default)."""
    executable = ensure_mlserver_venv()
    if folder.exists():
        shutil.rmtree(folder)
    model_dir = folder / model
    model_dir.mkdir(parents=True)
    shutil.copy(MLSERVER_DIR / "onnx_runtime.py", model_dir / "onnx_runtime.py")
    port = free_port()
    settings = {"http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
                "debug": False, "parallel_workers": 1}  # fmt: skip
    (folder / "settings.json").write_text(json.dumps(settings))
    model_settings: dict[str, Any] = {
        "name": model,
        "implementation": "onnx_runtime.OnnxModel",
        "parameters": {"uri": str(onnx_path), "extra": {"intra_op_threads": 1}},
        **metadata,
    }
    if max_batch_size > 1:
        model_settings |= {"max_batch_size": max_batch_size, "max_batch_time": max_batch_time_s}
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings))
    command = ["taskset", "-c", cores, str(executable), "start", str(folder)]
    env = {"PATH": str(executable.parent) + ":/usr/bin:/bin", "PYTHONPATH": str(model_dir)}
    return Process(command, port, model, cwd=folder, env=env)


def http_floor(model: str, metadata: dict[str, Any], cores: str) -> Process:
    """benchmarks/http_floor.py: uvicorn answering every request without a model."""
    port = free_port()
    script = Path(__file__).resolve().parent / "http_floor.py"
    described = json.dumps({"name": model, "versions": ["1"], **metadata})
    command = ["taskset", "-c", cores, sys.executable, str(script), str(port), described]
    return Process(command, port, model)
