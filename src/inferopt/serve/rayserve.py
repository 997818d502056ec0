"""inferopt's server as a Ray Serve application: each replica runs the same ASGI app, batcher
and admission as `inferopt serve`; Ray does the routing, replicas, autoscaling and failover.

    serve.run(build(app_args(...)))                    # what `inferopt serve --ray` does
    import_path: inferopt.serve.rayserve:build         # in a Serve config (`serve deploy`)

HTTP: Ray's proxy hands each request to a replica's ASGI app unchanged.
gRPC: Ray's gRPC proxy serves `inference.GRPCInferenceService` (the servicer function is
listed in the config's grpc_options) and calls the replica's method of the same name with
the request message. `_GrpcContext` gives our servicer the grpc.aio context it expects, so
errors keep their codes (a refusal stays RESOURCE_EXHAUSTED with its retry-after).

Metrics: every replica mirrors its own registry into Ray's metrics (`MetricsMirror`), which
Ray exports per replica on each node's metrics port; /metrics and the statistics extension
refuse, since through the proxy they would show one replica as the whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import urllib.request
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import ray
from ray import serve
from ray.serve.metrics import Gauge
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferopt import rayaddress
from inferopt.serve import grpc_service
from inferopt.serve.app import create_app
from inferopt.serve.config import ConfigFile, ModelConfig, ServerConfig
from inferopt.serve.context import Context
from inferopt.serve.errors import ConfigError
from inferopt.serve.gate import AdmissionGate
from inferopt.serve.layout import Layout
from inferopt.serve.metrics import Metrics
from inferopt.serve.proto import grpc_service_pb2 as pb
from inferopt.serve.rayconfig import (
    APP_NAME,
    DEPLOYMENT_NAME,
    GRPC_SERVICER,
    RaySettings,
    app_args,
    deployment_options,
    repository_revision,
)
from inferopt.serve.rayconfig import replica_threads as threads_for
from inferopt.serve.rayproxy import CALLBACK, CALLBACK_ENV, PROXY_HEADER, REPLICA_HEADER
from inferopt.serve.repository import Repository

log = logging.getLogger("inferopt.serve")
MIRROR_INTERVAL_S = 1.0  # how often a replica copies its figures into Ray's metrics
_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]


class _Aborted(Exception):
    """Raised by `_GrpcContext.abort` after setting the status: Ray keeps the code we set."""


class _GrpcContext:
    """The part of grpc.aio's ServicerContext our servicer uses, over Ray's gRPC context."""

    def __init__(self, ray_context: Any) -> None:
        self._ray = ray_context

    def time_remaining(self) -> float | None:
        return None  # Ray's proxy holds the client's deadline; it cancels us when it passes

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return list(self._ray.invocation_metadata())

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._ray.set_trailing_metadata(list(metadata))

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self._ray.set_code(code)
        self._ray.set_details(details)
        raise _Aborted(details)


class MetricsMirror:
    """Copies a replica's Prometheus samples into Ray Gauges of the same names and labels.

    Why gauges for counters too: each replica holds its own running totals, and Ray adds the
    replica's labels, so summing the gauges over replicas gives the server's totals at any
    moment, histogram buckets included (`histogram_quantile` reads any series with `le`).
    Why copy instead of counting in Ray's metrics directly: the server's hot path keeps its
    plain-integer counts (metrics.RequestCounts), which cost a fraction of a Ray update."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._gauges: dict[tuple[str, tuple[str, ...]], Gauge] = {}

    def copy(self) -> None:
        for family in self._metrics.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue  # a timestamp per replica: summing it means nothing
                keys = tuple(sorted(sample.labels))
                gauge = self._gauges.get((sample.name, keys))
                if gauge is None:
                    text = family.documentation
                    gauge = Gauge(sample.name, description=text, tag_keys=keys)  # type: ignore[arg-type]
                    self._gauges[(sample.name, keys)] = gauge
                gauge.set(float(sample.value), tags=dict(sample.labels))

    async def run(self, interval_s: float = MIRROR_INTERVAL_S) -> None:
        while True:
            self.copy()
            await asyncio.sleep(interval_s)


@serve.ingress()
class InferoptReplica:
    """One replica: a repository loaded and warmed before Ray routes to it (the constructor
    returns when every model is served, or raises, and Ray starts another)."""

    async def __init__(  # type: ignore[misc]  # Ray awaits an async constructor
        self,
        repository: str,
        model: dict[str, Any],
        server: dict[str, Any],
        threads: int,
        config_file: str | None = None,
        revision: str | None = None,
    ) -> None:
        base = ModelConfig(**{**model, "intra_op_threads": threads})
        config = ServerConfig(**server)
        file = ConfigFile.read(Path(config_file)) if config_file else ConfigFile()
        self.metrics = Metrics()
        self.repository = Repository(Layout(Path(repository)), base, file, self.metrics)
        replica = serve.get_replica_context().replica_id.unique_id
        self.context = Context(self.repository, self.metrics, config, replica=replica)
        self.grpc = grpc_service.InferenceService(self.context)
        await self.repository.load_all()
        if not self.repository.ready:
            raise RuntimeError(f"replica {replica}: not every model in {repository} loaded")
        self._mirror = asyncio.create_task(MetricsMirror(self.metrics).run())
        log.info("replica %s ready (revision %s)", replica, revision)

    def __serve_build_asgi_app__(self) -> ASGIApp:
        app = AdmissionGate(create_app(self.context), self.repository)
        return _signed(app, (self.context.replica or "").encode())

    async def check_health(self) -> None:
        if not self.context.ready:
            raise RuntimeError("a model stopped serving")

    async def __del__(self) -> None:
        """Ray calls this when the replica stops, after its requests have finished."""
        self._mirror.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._mirror
        await self.repository.close()
        # Then Ray's ASGI wrapper's own shutdown (it follows this class in the MRO).
        await super().__del__()  # type: ignore[misc]


def _signed(app: ASGIApp, replica: bytes) -> ASGIApp:
    """`app` with the replica's header on every response: the proxy's retry middleware
    (rayproxy.py) tells a model's answer from Ray's own failure by it."""

    async def signed(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_signed(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (REPLICA_HEADER, replica)]
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, send_signed)

    return signed


def _grpc_method(name: str) -> Callable[..., Coroutine[Any, Any, Any]]:
    """The replica's method for RPC `name`: our servicer's, behind `_GrpcContext`."""
    empty = getattr(pb, _SERVICE.methods_by_name[name].output_type.name)

    async def method(self: InferoptReplica, request: Any, grpc_context: Any) -> Any:
        try:
            return await getattr(self.grpc, name)(request, _GrpcContext(grpc_context))
        except _Aborted:
            return empty()  # the code and details set on the context are what the client gets

    method.__name__ = name
    return method


for _name in _SERVICE.methods_by_name:
    setattr(InferoptReplica, _name, _grpc_method(_name))


@dataclass(frozen=True)
class RayDeployment:
    """Where a deployed application answers (Ray's proxies, on every node)."""

    http_url: str
    grpc_url: str | None
    replicas: str  # "2", or "auto (1..4)"


def connect(address: str | None) -> None:
    """Join the Ray cluster at `address` ("auto": the one on this machine; "host:port" or
    "ray://host:port"), or with None the one on this machine if any, else a new local one.

    Raises:
        ConfigError: Ray cannot be reached at `address`.
    """
    if ray.is_initialized():
        return
    if address not in (None, "auto", "local"):
        _check_reachable(address)
    # Inherited by the processes of a Ray instance this call starts (not by a running one).
    os.environ.setdefault(CALLBACK_ENV, CALLBACK)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "this machine"
        raise ConfigError(f"cannot reach Ray at {where}: {exc}".splitlines()[0]) from exc


def _check_reachable(address: str) -> None:
    """Fail in seconds when nothing listens at `address`: Ray itself retries for minutes."""
    try:
        rayaddress.probe(address)
    except ValueError as exc:
        raise ConfigError(f"--ray {address}: expected HOST:PORT, ray://HOST:PORT or auto") from exc
    except OSError as exc:
        raise ConfigError(f"cannot reach Ray at {address}: {exc}") from exc


def deploy(
    repository: str | Path,
    model: ModelConfig | None = None,
    server: ServerConfig | None = None,
    settings: RaySettings | None = None,
    *,
    address: str | None = None,
    config_file: str | Path | None = None,
) -> RayDeployment:
    """Deploy (or roll out again) the repository as the Ray Serve application `inferopt`
    and return once its replicas are ready. Every deploy through this (Ray's Python API) is
    a rolling update: new replicas start, and the old ones stop once those are ready and
    their own requests are answered. (`serve deploy` of `rayconfig.serve_config` changes
    replica counts in place, as its arguments hold no counts.)

    Raises:
        ConfigError: Ray unreachable, port 0 (Ray's proxies need fixed ports), management
            on (it is off under Ray), or the repository is not a folder.
    """
    root = Path(repository).resolve()
    if not root.is_dir():
        raise ConfigError(f"{repository}: the model repository must be a folder")
    model, server, settings = (
        model or ModelConfig(),
        server or ServerConfig(),
        settings or RaySettings(),
    )
    if server.management_enabled:
        raise ConfigError("--management is off under Ray: versions roll out by redeploying")
    if server.http_port == 0 or server.grpc_port == 0:
        raise ConfigError("under Ray, give fixed ports: Ray's proxies listen on every node")
    connect(address)
    grpc_options = None
    if server.grpc_port is not None:
        grpc_options = {"port": server.grpc_port, "grpc_servicer_functions": [GRPC_SERVICER]}
    serve.start(
        http_options={"host": server.host, "port": server.http_port}, grpc_options=grpc_options
    )
    file = str(Path(config_file).resolve()) if config_file else None
    args = app_args(str(root), model, server, settings, file, repository_revision(root))
    serve.run(build(args), name=APP_NAME, route_prefix="/")
    _check_proxy(server)
    count = f"auto ({settings.min_replicas}..{settings.max_replicas})"
    return RayDeployment(
        f"{server.host}:{server.http_port}",
        None if server.grpc_port is None else f"{server.host}:{server.grpc_port}",
        str(settings.replicas) if settings.replicas is not None else count,
    )


def _check_proxy(server: ServerConfig) -> None:
    """Warn when Ray's HTTP proxy lacks the retry middleware (Ray was started without it)."""
    host = "127.0.0.1" if server.host in ("0.0.0.0", "::") else server.host
    url = f"http://{host}:{server.http_port}/v2/health/live"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            marked = answer.headers.get(PROXY_HEADER.decode()) is not None
    except OSError as exc:
        log.warning("could not reach Ray's HTTP proxy at %s: %s", url, exc)
        return
    if not marked:
        log.warning(
            "Ray's HTTP proxy runs without inferopt's retry middleware: requests in flight on "
            "a replica that dies will fail with 500. Start Ray with %s=%s (docs/scaleout.md)",
            CALLBACK_ENV,
            CALLBACK,
        )


def undeploy() -> None:
    """Delete the application: Ray drains each replica's requests first."""
    serve.delete(APP_NAME)


def build(args: dict[str, Any]) -> Any:
    """The Ray Serve application for `args` (as `rayconfig.app_args` makes them): the
    deployment with the options `rayconfig.deployment_options` maps the settings to.

    Raises:
        TypeError, ValueError: an unknown or invalid setting in `args`.
    """
    model = ModelConfig(**args["model"])
    server = ServerConfig(**args["server"])
    settings = RaySettings(**args["ray"])
    options = deployment_options(model, server, settings)
    init = (
        args["repository"],
        args["model"],
        args["server"],
        threads_for(model, settings),  # not the counts: see rayconfig.serve_config
        args.get("config_file"),
        args.get("revision"),
    )
    deployment = serve.deployment(name=DEPLOYMENT_NAME, **options)(InferoptReplica)
    return deployment.bind(*init)


__all__ = [
    "InferoptReplica",
    "MetricsMirror",
    "RayDeployment",
    "build",
    "connect",
    "deploy",
    "undeploy",
]
