"""inferopt's serving settings in Ray Serve's terms, declared once here and used by
`inferopt serve --ray`, `--ray-config` and the KubeRay manifest (deploy/kserve.py).

No Ray import: the config is plain data, printable without a cluster.

How the settings map (`deployment_options`; the why is in docs/scaleout.md):
- CPUs per replica: `ray_actor_options.num_cpus`, and each replica's ONNX Runtime threads
  (unless `intra_op_threads` is set), so replicas on one node do not oversubscribe it.
- Ongoing requests per replica: the model's `max_queue_size`. A replica keeps its own
  batcher and admission, which need the requests in hand to merge them and to refuse early.
- Requests Ray queues in front of the replicas (at each proxy) when every replica is full:
  `max_queue_size` again; past it Ray answers 429 with Retry-After, as our gate does.
- Autoscaling: Ray's, on ongoing requests per replica (`target_ongoing`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from inferopt.serve.config import ModelConfig, ServerConfig

APP_NAME = "inferopt"
DEPLOYMENT_NAME = "InferoptReplica"
IMPORT_PATH = "inferopt.serve.rayserve:build"
GRPC_SERVICER = (
    "inferopt.serve.proto.grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server"
)
RETRY_AFTER_S = 1.0  # what Ray's own 429 advises; our gate computes its own per refusal


@dataclass(frozen=True)
class RaySettings:
    """How many replicas, and how big. `replicas=None` means autoscaling between
    `min_replicas` and `max_replicas` on `target_ongoing` requests per replica.

    Raises:
        ValueError: a count below 1 (min_replicas below 0), min above max, or a
            non-positive CPU share or target.
    """

    replicas: int | None = 1
    min_replicas: int = 1
    max_replicas: int = 4
    target_ongoing: float = field(default=2.0)
    cpus_per_replica: float = 1.0
    upscale_delay_s: float = 2.0  # Ray's default is 30 s; inference load changes faster
    downscale_delay_s: float = 20.0
    look_back_s: float = 10.0  # the window Ray averages ongoing requests over (Ray: 30 s)

    def __post_init__(self) -> None:
        if self.replicas is not None and self.replicas < 1:
            raise ValueError(f"replicas must be >= 1 or 'auto', got {self.replicas}")
        if self.min_replicas < 0:
            raise ValueError(f"min_replicas must be >= 0, got {self.min_replicas}")
        if self.max_replicas < max(1, self.min_replicas):
            raise ValueError(
                f"max_replicas ({self.max_replicas}) must be >= 1 and >= min_replicas "
                f"({self.min_replicas})"
            )
        for name in ("target_ongoing", "cpus_per_replica"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.look_back_s > 0:
            raise ValueError(f"look_back_s must be > 0, got {self.look_back_s}")
        for name in ("upscale_delay_s", "downscale_delay_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def replica_threads(model: ModelConfig, settings: RaySettings) -> int:
    """ONNX Runtime intra-op threads per running batch in one replica: the replica's CPU
    share split over its instances (at least 1), unless the model config sets them."""
    if model.intra_op_threads:
        return model.intra_op_threads
    return max(1, math.floor(settings.cpus_per_replica / model.instances))


def deployment_options(
    model: ModelConfig, server: ServerConfig, settings: RaySettings
) -> dict[str, Any]:
    """The Ray Serve deployment options (the keys of a deployment in a Serve config file and
    of `serve.deployment(...)`) for replicas serving with `model`'s settings.

    Returns:
        A dict with `ray_actor_options`, `max_ongoing_requests`, `max_queued_requests`,
        `backpressure_config`, `graceful_shutdown_timeout_s`, health-check periods, and either
        `num_replicas` or `autoscaling_config`.
    """
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": settings.cpus_per_replica},
        "max_ongoing_requests": model.max_queue_size,
        "max_queued_requests": model.max_queue_size,
        "backpressure_config": {"status_code": 429, "retry_after_s": RETRY_AFTER_S},
        # Ray waits this long for a stopping replica's requests: our drain timeout.
        "graceful_shutdown_timeout_s": server.drain_timeout_s,
        "graceful_shutdown_wait_loop_s": 0.5,
        "health_check_period_s": 2.0,
        "health_check_timeout_s": 10.0,
        # Ray logs every request by default; ours only when asked (--access-log).
        "logging_config": {"enable_access_log": server.access_log},
    }
    if settings.replicas is not None:
        options["num_replicas"] = settings.replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": settings.min_replicas,
            "max_replicas": settings.max_replicas,
            "target_ongoing_requests": settings.target_ongoing,
            "upscale_delay_s": settings.upscale_delay_s,
            "downscale_delay_s": settings.downscale_delay_s,
            "look_back_period_s": settings.look_back_s,
        }
    return options


def app_args(
    repository: str,
    model: ModelConfig,
    server: ServerConfig,
    settings: RaySettings,
    config_file: str | None = None,
    revision: str | None = None,
) -> dict[str, Any]:
    """The arguments `inferopt.serve.rayserve:build` takes (plain JSON). `revision` changes
    when the repository's files do, so redeploying the same path rolls new replicas out."""
    return {
        "repository": repository,
        "model": asdict(model),
        "server": {
            "max_body_bytes": server.max_body_bytes,
            "drain_timeout_s": server.drain_timeout_s,
            "access_log": server.access_log,
        },
        "ray": asdict(settings),
        "config_file": config_file,
        "revision": revision,
    }


def serve_config(
    repository: str,
    model: ModelConfig,
    server: ServerConfig,
    settings: RaySettings,
    config_file: str | None = None,
    revision: str | None = None,
) -> dict[str, Any]:
    """A Ray Serve config file (`serve deploy`, KubeRay's `serveConfigV2`) for one inferopt
    application: HTTP on `server.http_port`, gRPC (Open Inference Protocol) on
    `server.grpc_port` through Ray's gRPC proxy, every address `server.host`. Give
    `revision` (`repository_revision`) so that new model files roll out on `serve deploy`:
    Ray restarts replicas only when the config changes."""
    http: dict[str, Any] = {"host": server.host, "port": server.http_port}
    args = app_args(repository, model, server, settings, config_file, revision)
    # Ray derives the application's version from its arguments: with the replica counts in
    # them, scaling would replace every replica. The counts live in `deployments` alone.
    args["ray"] = {"cpus_per_replica": settings.cpus_per_replica}
    config: dict[str, Any] = {
        "proxy_location": "EveryNode",
        "http_options": http,
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": IMPORT_PATH,
                "args": args,
                "deployments": [
                    {"name": DEPLOYMENT_NAME, **deployment_options(model, server, settings)}
                ],
            }
        ],
    }
    if server.grpc_port is not None:
        config["grpc_options"] = {
            "port": server.grpc_port,
            "grpc_servicer_functions": [GRPC_SERVICER],
        }
    return config


def repository_revision(root: Path) -> str:
    """A short digest of the repository's files (paths, sizes, modification times): it
    changes when a version is added or a file replaced, so a redeploy rolls new replicas
    out, and stays when nothing changed, so a redeploy leaves the replicas running."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]
