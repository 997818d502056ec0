"""The server process: uvicorn (HTTP) and grpc.aio (gRPC) in one asyncio event loop over one
model repository, and a graceful drain on SIGTERM.

    Server(repo, ServerConfig(...)).run()        # blocking, handles SIGTERM/SIGINT
    with BackgroundServer(repo, config) as s:    # in a thread (tests, notebooks)
        s.wait_ready(); ... s.http_url ...

Drain order on SIGTERM: report not-ready, stop accepting connections (HTTP and gRPC), let every
accepted request finish (the batchers keep running), then close the batchers and exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import logging
import math
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import grpc
import uvicorn

from inferopt.errors import InferoptError
from inferopt.serve import eventloop, grpc_service
from inferopt.serve.app import create_app
from inferopt.serve.config import ConfigFile, ModelConfig, ServerConfig
from inferopt.serve.context import Context
from inferopt.serve.errors import ConfigError
from inferopt.serve.gate import AdmissionGate
from inferopt.serve.layout import Layout
from inferopt.serve.metrics import Metrics
from inferopt.serve.repository import Repository, WrapRunner

log = logging.getLogger("inferopt.serve")
_START_TIMEOUT_S = 30.0


class _HttpServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Signals are the Server's: the drain must cover gRPC and the batchers, not only HTTP.
        yield


class Server:
    def __init__(
        self,
        repository: str | Path,
        config: ServerConfig | None = None,
        model_config: ModelConfig | None = None,
        config_file: str | Path | None = None,
        wrap_runner: WrapRunner | None = None,
    ) -> None:
        """`wrap_runner(model_name, runner)`, if given, returns the runner each loaded model
        version is served by (before its warm-up): the hook for test doubles, e.g. a runner
        with a known latency (see docs/serve.md, "Python API")."""
        root = Path(repository)
        if not root.is_dir():
            raise ConfigError(f"{root}: the model repository must be a folder")
        self.config = config or ServerConfig()
        file = ConfigFile.read(Path(config_file)) if config_file else ConfigFile()
        self.metrics = Metrics()
        base = model_config or ModelConfig()
        self.repository = Repository(Layout(root), base, file, self.metrics, wrap_runner)
        self.context = Context(self.repository, self.metrics, self.config)
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        self._http: _HttpServer | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._grpc: grpc.aio.Server | None = None
        self._loading: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    # ---- starting ----

    async def start(self) -> None:
        """Listen on both ports, then load and warm every model in the background (the
        server is live at once, ready when the models are)."""
        self._report_budget()
        await self._start_http()
        if self.config.grpc_port is not None:
            await self._start_grpc()
        grpc_address = _address(self.config.host, self.grpc_port) if self.grpc_port else "off"
        http_address = _address(self.config.host, self.http_port)
        log.info("listening http=%s grpc=%s", http_address, grpc_address)
        self._loading = asyncio.create_task(self._load())

    async def _load(self) -> None:
        await self.repository.load_all()
        # What start-up made (sessions, modules, warm-up arrays) lives as long as the server:
        # out of the cyclic collector's sight, so its full collections no longer walk it and
        # stall requests for milliseconds (measured with perf_analyzer: one such pause made
        # 1-second windows disagree by more than its 10%).
        gc.collect()
        gc.freeze()

    async def _start_http(self) -> None:
        sock = _bind(self.config.host, self.config.http_port)
        self.http_port = sock.getsockname()[1]
        app = AdmissionGate(create_app(self.context), self.repository)
        config = uvicorn.Config(
            app,
            log_config=None,
            log_level="warning",
            access_log=self.config.access_log,
            lifespan="off",
            http=_http_protocol(self.repository),
            ws="none",
            proxy_headers=False,  # no proxy in front by default: skip the middleware
            timeout_graceful_shutdown=math.ceil(self.config.drain_timeout_s),
        )
        self._http = _HttpServer(config)
        self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]))
        for _ in range(int(_START_TIMEOUT_S / 0.01)):  # bounded: uvicorn has no started event
            if self._http.started or self._http_task.done():
                break
            await asyncio.sleep(0.01)
        if not self._http.started:
            raise ConfigError(f"the HTTP server did not start on port {self.http_port}")

    async def _start_grpc(self) -> None:
        options = [
            ("grpc.max_receive_message_length", self.config.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),  # else a second server could share the port silently
        ]
        self._grpc = grpc.aio.server(options=options)
        grpc_service.add_to_server(self.context, self._grpc)
        address = _address(self.config.host, self.config.grpc_port)
        try:
            self.grpc_port = self._grpc.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen for gRPC on {address}: {exc}") from exc
        await self._grpc.start()

    def _report_budget(self) -> None:
        """Say what may run at once, and warn when that is more threads than cores."""
        cores = os.cpu_count() or 1
        configs = self.repository.configs()
        for name, c in sorted(configs.items()):
            log.info(
                "%s: %d instance(s) x %d ONNX Runtime thread(s), batches of up to %d rows, "
                "%d requests queued at most",
                name,
                c.instances,
                c.threads(cores),
                c.max_batch_size,
                c.max_queue_size,
            )
        total = sum(c.instances * c.threads(cores) for c in configs.values())
        log.info(
            "thread budget: %d inference thread(s) across %d model(s) on %d cores, plus the "
            "event loop thread (HTTP, gRPC, batching)",
            total,
            len(configs),
            cores,
        )
        if total > cores:
            log.warning(
                "warning: %d inference threads oversubscribe %d cores when models run at "
                "once; lower instances or intra_op_threads (see docs/serve.md)",
                total,
                cores,
            )

    async def wait_loaded(self) -> None:
        """Until start-up loading has finished (each model ready, or failed)."""
        if self._loading is not None:
            await self._loading

    # ---- stopping ----

    def request_stop(self) -> None:
        """Start the drain (idempotent); `wait_stopped` returns when it is over."""
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._drain())

    async def stop(self) -> None:
        self.request_stop()
        await self.wait_stopped()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def _drain(self) -> None:
        log.info("draining: finishing accepted requests, refusing new connections")
        self.context.draining = True
        grpc_stop = None
        if self._grpc is not None:
            grpc_stop = asyncio.create_task(self._grpc.stop(grace=self.config.drain_timeout_s))
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            await self._http_task
        if grpc_stop is not None:
            await grpc_stop
        if self._loading is not None:
            self._loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loading
        try:
            await asyncio.wait_for(self.repository.close(), self.config.drain_timeout_s)
        except TimeoutError:
            log.error("drain timed out after %.0f s; exiting anyway", self.config.drain_timeout_s)
        log.info("stopped")
        self._stopped.set()

    # ---- running in the foreground ----

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then drain and return. A second signal exits now."""
        eventloop.run(self._run_until_signal())

    async def _run_until_signal(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            await self.start()
            await self.wait_stopped()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        if self._stop_task is not None:
            log.warning("second %s: exiting without finishing the drain", signal.Signals(sig).name)
            os._exit(1)
        log.info("%s received", signal.Signals(sig).name)
        self.request_stop()


def _http_protocol(repository: Repository) -> type[asyncio.Protocol] | str:
    """httptools with the admission gate in the protocol (see gate.py); h11 when httptools
    is not installed (the ASGI gate then refuses, at a higher cost per refusal)."""
    if importlib.util.find_spec("httptools") is None:  # not `except ImportError`: a broken
        return "h11"  # gate_protocol must fail loudly, not quietly serve slower
    from inferopt.serve.gate_protocol import gated_protocol

    return gated_protocol(repository)


def _address(host: str, port: int | None) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind(host: str, port: int) -> socket.socket:
    """The HTTP listening socket, bound here so a busy port is a clear one-line error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and
    # without it a response written in two parts waits out a delayed ACK (~40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen for HTTP on {host}:{port}: {exc.strerror}") from exc
    return sock


class BackgroundServer:
    """A Server running in a thread of its own, for tests and notebooks."""

    def __init__(
        self,
        repository: str | Path,
        config: ServerConfig | None = None,
        model_config: ModelConfig | None = None,
        config_file: str | Path | None = None,
        wrap_runner: WrapRunner | None = None,
    ) -> None:
        self._arguments = (repository, config, model_config, config_file, wrap_runner)
        self.server: Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, name="inferopt-serve", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def http_url(self) -> str:
        """`host:port`, as tritonclient takes it."""
        assert self.server is not None
        return _address(self.server.config.host, self.server.http_port)

    @property
    def grpc_url(self) -> str:
        assert self.server is not None
        return _address(self.server.config.host, self.server.grpc_port)

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        if not self._started.wait(_START_TIMEOUT_S):
            raise ConfigError(f"the server did not start within {_START_TIMEOUT_S:.0f} s")
        if isinstance(self._error, InferoptError):
            raise self._error  # e.g. a port in use: the one-line message says it best
        if self._error is not None:
            raise ConfigError(f"the server did not start: {self._error!r}") from self._error
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until start-up loading is over (every model warmed, or failed)."""
        assert self.server is not None and self._loop is not None
        loaded = asyncio.run_coroutine_threadsafe(self.server.wait_loaded(), self._loop)
        loaded.result(timeout)

    def stop(self, timeout: float = 60.0) -> None:
        if self._loop is not None and self.server is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.server.request_stop)
        self._thread.join(timeout)

    def _main(self) -> None:
        try:
            eventloop.run(self._serve())
        except BaseException as exc:  # reported to the thread that waits in __enter__
            self._error = exc
            self._started.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.server = Server(*self._arguments)
        await self.server.start()
        self._started.set()
        await self.server.wait_stopped()
