"""What refusing an HTTP inference request (429) costs the server, against answering one.

Two servers on digits-cnn, both pinned to core 0 as in benchmarks/serving.py (one ONNX
Runtime thread, batches of up to 32, `--max-queue-wait-ms 50`):
- "answered": the server as shipped; every request is answered (200);
- "refused": the same server, started through this file (`--serve-refusing`), which sets the
  model's queue bound (`max_queue_size`) to 0, below ModelConfig's validated minimum of 1.
  The admission rule then finds the queue full for every request, so each one takes the
  real refusal path: the gate in the HTTP protocol, the batcher's admission check, the
  metrics, the 429 response with its JSON body, the connection kept alive for the next one.
- "floor", for reference (not part of the default run; `--only floor` or `--floor`): a
  bare uvloop protocol, also launched from this file, that answers every read with a fixed
  429 and parses nothing. What any Python server on this event loop pays per request here
  (a recv, a send, the loop's own work), which no change to inferopt's refusal can remove.

This process (pinned to core 1) keeps several keep-alive connections busy, closed loop: each
connection sends its next request (digits, HTTP with the binary tensor extension, or JSON
with --json) when the answer to the previous one has arrived. Raw non-blocking sockets and
a selector keep the client's own cost low. A window reads the server's CPU time (user +
system, from the kernel through psutil) before and after a fixed number of seconds, with
every request answered before each reading, and divides by the requests answered in it.
The servers' windows alternate, and the figure reported is the median over repeats.

The server's utilisation (its CPU seconds per wall second) is printed too: below 100% the
client, not the server, sets the pace, and a server that is not saturated pays more per
request (fewer ready sockets per event-loop wake-up) than one under overload.

    flock /tmp/inferopt-bench.lock .venv/bin/python benchmarks/refusal_cost.py
    # options: --repeats 5 --seconds 3 --connections 16 --json --only refused --floor
    # before/after a change: servers importing inferopt from a copy of the old tree too,
    # their windows interleaved with this tree's
    flock /tmp/inferopt-bench.lock .venv/bin/python benchmarks/refusal_cost.py --compare-src DIR
"""

from __future__ import annotations

import argparse
import asyncio
import os
import selectors
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).parent))
import servers

SERVER_CORE, CLIENT_CORE = 0, 1
MODEL = "digits"
FLAGS = ("--intra-op-threads", "1", "--max-batch-size", "32", "--max-queue-wait-ms", "50")
WARMUP_S = 0.5
MODES = ["answered", "refused", "floor"]


def refuse_everything() -> None:
    """Make every batcher created from now on find its queue full (max_queue_size 0)."""
    from inferopt.serve.batcher import Batcher

    original = Batcher.__init__

    def init(self: Batcher, runner: Any, config: Any, *args: Any) -> None:
        config = replace(config)
        object.__setattr__(config, "max_queue_size", 0)  # frozen, and validated to be >= 1
        original(self, runner, config, *args)

    Batcher.__init__ = init  # type: ignore[method-assign]


def serve_floor(argv: Sequence[str]) -> None:
    """The "floor" server on the `--http-port` of `argv`: 429 to every read, but 200 to a GET
    (the readiness check). One read is one request here: the client sends one at a time."""
    from inferopt.serve import eventloop

    port = int(argv[list(argv).index("--http-port") + 1])
    body = b'{"error":"refused"}'
    head = b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    refused, ready = head % (429, len(body)) + body, head % (200, len(body)) + body

    class Floor(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(ready if data.startswith(b"GET ") else refused)

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(Floor, "127.0.0.1", port)
        await server.serve_forever()

    eventloop.run(serve())


def requests(json_body: bool, count: int = 8) -> list[bytes]:
    """`count` digits requests with random images, each one complete HTTP/1.1 POST."""
    from inferopt.loadgen.http1 import encode_post

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        image = rng.random((1, 1, 8, 8), dtype=np.float32)
        tensor: dict[str, Any] = {"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32"}
        if json_body:
            body = orjson.dumps({"inputs": [{**tensor, "data": image.ravel().tolist()}]})
            headers = {"Content-Type": "application/json"}
        else:
            raw = image.astype("<f4").tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            header = orjson.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}})
            body = header + raw
            headers = {
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(len(header)),
            }
        out.append(encode_post("127.0.0.1", f"/v2/models/{MODEL}/infer", body, headers))
    return out


class Connection:
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, port: int, requests: Sequence[bytes], offset: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.requests, self.next = requests, offset
        self.buffer = bytearray()

    def send(self) -> None:
        request = self.requests[self.next % len(self.requests)]
        self.next += 1
        if self.sock.send(request) != len(request):  # a few hundred bytes into an empty buffer
            raise RuntimeError("short send")

    def receive(self) -> int | None:
        """The status of the response, once it is complete; None while it is not."""
        data = self.sock.recv(65536)
        if not data:
            raise RuntimeError("the server closed the connection")
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self.buffer[:end]).lower()
        start = head.find(b"\r\ncontent-length:")  # not inference-header-content-length
        if start < 0:
            raise RuntimeError(f"no content-length in {head[:200]!r}")
        length = int(head[start + 17 :].split(b"\r\n", 1)[0])
        if len(self.buffer) < end + 4 + length:
            return None
        if len(self.buffer) > end + 4 + length:
            raise RuntimeError("more than one response on a connection")
        status = int(self.buffer[9:12])
        self.buffer.clear()
        return status

    def close(self) -> None:
        self.sock.close()


def drive(connections: list[Connection], seconds: float) -> Counter[int]:
    """Closed loop for `seconds`, then wait for the answers in flight; statuses counted."""
    statuses: Counter[int] = Counter()
    with selectors.DefaultSelector() as selector:
        for connection in connections:
            selector.register(connection.sock, selectors.EVENT_READ, connection)
            connection.send()
        stop = time.perf_counter() + seconds
        in_flight = len(connections)
        while in_flight:
            sending = time.perf_counter() < stop
            for key, _ in selector.select(timeout=10):
                connection = key.data
                status = connection.receive()
                if status is None:
                    continue
                statuses[status] += 1
                if sending:
                    connection.send()
                else:
                    in_flight -= 1
    return statuses


@dataclass
class Window:
    server: str
    requests: int
    statuses: dict[int, int]
    seconds: float
    server_cpu_s: float
    client_cpu_s: float

    @property
    def cpu_ms_per_request(self) -> float:
        return self.server_cpu_s / self.requests * 1e3

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def utilisation(self) -> float:
        return self.server_cpu_s / self.seconds


def window(name: str, server: servers.Process, connections: int, seconds: float,
           pool: Sequence[bytes]) -> Window:  # fmt: skip
    open_ = [Connection(server.port, pool, i) for i in range(connections)]
    try:
        drive(open_, WARMUP_S)
        cpu, client, wall = server.cpu_seconds(), time.process_time(), time.perf_counter()
        statuses = drive(open_, seconds)
        wall = time.perf_counter() - wall
        client = time.process_time() - client
        cpu = server.cpu_seconds() - cpu
    finally:
        for connection in open_:
            connection.close()
    return Window(name, statuses.total(), dict(statuses), wall, cpu, client)


@dataclass(frozen=True)
class Candidate:
    """One server to measure: answering or refusing, from this tree or another."""

    mode: str  # one of MODES
    src: Path | None  # the inferopt source tree it imports; None: this one

    @property
    def name(self) -> str:
        return self.mode if self.src is None else f"{self.mode} [{self.src}]"

    @property
    def status(self) -> int:
        return 200 if self.mode == "answered" else 429

    def start(self, repo: Path) -> servers.Process:
        env = dict(os.environ)
        if self.src is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(self.src), env.get("PYTHONPATH")])
            )
        launcher = {
            "answered": ["-m", "inferopt.serve"],
            "refused": [__file__, "--serve-refusing"],
            "floor": [__file__, "--serve-floor"],
        }[self.mode]
        port = servers.free_port()
        command = ["taskset", "-c", str(SERVER_CORE), sys.executable, *launcher, str(repo),
                   "--http-port", str(port), "--no-grpc", *FLAGS]  # fmt: skip
        return servers.Process(command, port, MODEL, env=env)


def start_all(candidates: Sequence[Candidate], repo: Path) -> dict[Candidate, servers.Process]:
    """Every server, started at once (each waits for its model's warm-up)."""
    with ThreadPoolExecutor(len(candidates)) as pool:
        futures = {c: pool.submit(c.start, repo) for c in candidates}
    started = {c: f.result() for c, f in futures.items() if f.exception() is None}
    failed = [f.exception() for f in futures.values() if f.exception() is not None]
    if failed:
        for server in started.values():
            server.stop()
        raise RuntimeError(f"a server did not start: {failed[0]}") from failed[0]
    return started


def measure(started: dict[Candidate, servers.Process], args: argparse.Namespace,
            pool: Sequence[bytes]) -> dict[Candidate, list[Window]]:  # fmt: skip
    """Windows of each candidate in turn, the order rotated each repeat."""
    candidates = list(started)
    windows: dict[Candidate, list[Window]] = {c: [] for c in candidates}
    for repeat in range(args.repeats):
        shift = repeat % len(candidates)
        for c in candidates[shift:] + candidates[:shift]:
            w = window(c.name, started[c], args.connections, args.seconds, pool)
            windows[c].append(w)
            print(f"{c.name:9} {w.requests:6d} requests {w.statuses}  {w.rate:7.0f}/s  "
                  f"server {w.cpu_ms_per_request:.4f} ms CPU/request, "
                  f"{w.utilisation:4.0%} busy; client {w.client_cpu_s / w.seconds:4.0%}",
                  flush=True)  # fmt: skip
    return windows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measured window")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--json", action="store_true", help="JSON bodies, not binary")
    parser.add_argument("--only", choices=MODES, help="measure one kind of server")
    parser.add_argument("--floor", action="store_true", help="also the bare uvloop server")
    parser.add_argument("--compare-src", type=Path, metavar="DIR",
                        help="also servers importing inferopt from DIR, interleaved")  # fmt: skip
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {CLIENT_CORE})
    modes = [args.only] if args.only else ["answered", "refused"]
    if args.floor and "floor" not in modes:
        modes.append("floor")
    trees = [None, args.compare_src.resolve()] if args.compare_src else [None]
    candidates = [Candidate(m, src) for src in trees for m in modes if src is None or m != "floor"]
    pool = requests(args.json)
    with tempfile.TemporaryDirectory() as tmp:
        from inferopt.sources import load

        repo = Path(tmp)
        load("digits-cnn").save(repo / MODEL / "1" / "model.onnx")
        start = time.perf_counter()
        started = start_all(candidates, repo)
        print(f"{len(started)} servers ready in {time.perf_counter() - start:.1f} s", flush=True)
        try:
            windows = measure(started, args, pool)
        finally:
            for server in started.values():
                server.stop()
    for c, mine in windows.items():
        wrong = sum(n for w in mine for s, n in w.statuses.items() if s != c.status)
        costs = [w.cpu_ms_per_request for w in mine]
        print(f"{c.name}: median {statistics.median(costs):.4f} ms server CPU per request "
              f"(min {min(costs):.4f}, max {max(costs):.4f}, {len(costs)} windows, "
              f"median {statistics.median(w.rate for w in mine):.0f} req/s, "
              f"{wrong} not {c.status})")  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-floor"]:
        serve_floor(sys.argv[2:])
        sys.exit(0)
    if sys.argv[1:2] == ["--serve-refusing"]:
        refuse_everything()
        from inferopt.commands.serve import main as serve

        sys.exit(serve(sys.argv[2:]))
    main()
