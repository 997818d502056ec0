"""SIGTERM: the server process stops accepting connections, answers every request it had
accepted (HTTP and gRPC), then exits 0."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import tritonclient.grpc as triton_grpc

X = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)


class ServerProcess:
    """`python -m inferopt.serve` with its stderr collected by a thread (so it never blocks)."""

    def __init__(self, *args: str) -> None:
        command = [sys.executable, "-m", "inferopt.serve", *args]
        self.proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def addresses(self, poll: Callable[..., None]) -> tuple[str, str]:
        poll(lambda: any("listening http=" in line for line in self.lines), timeout=60)
        line = next(line for line in self.lines if "listening http=" in line)
        http, grpc = (part.split("=", 1)[1] for part in line.split()[-2:])
        return http, grpc


def http_request(url: str, trips: int, answers: list[object]) -> None:
    body = {
        "inputs": [
            {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": X.tolist()},
            {"name": "spin", "shape": [1, 1], "datatype": "INT64", "data": [[trips]]},
        ]
    }
    response = httpx.post(f"http://{url}/v2/models/spin/infer", json=body, timeout=120)
    answers.append(
        response.json()["outputs"][0]["data"]
        if response.status_code == 200
        else response.status_code
    )


def grpc_request(url: str, trips: int, answers: list[object]) -> None:
    client = triton_grpc.InferenceServerClient(url)
    tensors = []
    for name, values, datatype in (("x", X, "FP32"), ("spin", np.full((1, 1), trips), "INT64")):
        tensor = triton_grpc.InferInput(name, list(values.shape), datatype)
        tensor.set_data_from_numpy(values.astype(np.int64 if datatype == "INT64" else np.float32))
        tensors.append(tensor)
    try:
        answers.append(
            client.infer("spin", tensors, client_timeout=120).as_numpy("y").ravel().tolist()
        )
    except Exception as exc:  # reported as a lost request below
        answers.append(repr(exc))


def refused(host_port: str) -> bool:
    host, port = host_port.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return True
    return False


def test_sigterm_finishes_every_accepted_request_then_exits(
    tmp_path: Path,
    build: Callable,
    save_model: Callable,
    spin_rate: float,
    read_metric: Callable,
    poll: Callable,
) -> None:
    save_model(build(1.0, spin=True), tmp_path / "spin" / "1" / "model.onnx")
    server = ServerProcess(
        str(tmp_path), "--http-port", "0", "--grpc-port", "0", "--max-batch-size", "1"
    )
    try:
        http, grpc = server.addresses(poll)
        poll(lambda: httpx.get(f"http://{http}/v2/health/ready").status_code == 200, timeout=60)
        # Six requests, run one at a time: ~4 s of queued work, so all six are pending at
        # once even when starting the client threads is slow on a busy machine.
        trips = int(spin_rate * 0.6)
        answers: list[object] = []
        threads = [
            threading.Thread(target=http_request, args=(http, trips, answers)) for _ in range(4)
        ]
        threads += [
            threading.Thread(target=grpc_request, args=(grpc, trips, answers)) for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        labels = {"model": "spin", "version": "1"}
        poll(lambda: read_metric(http, "inferopt_pending_requests", **labels) == 6)
        server.proc.send_signal(signal.SIGTERM)
        poll(lambda: refused(http), timeout=30)  # no new connections while draining
        for thread in threads:
            thread.join(120)
        assert answers == [X.ravel().tolist()] * 6
        assert server.proc.wait(60) == 0
        log = "".join(server.lines)
        assert "SIGTERM received" in log and "stopped" in log
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)
