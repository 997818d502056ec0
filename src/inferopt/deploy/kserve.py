"""Kubernetes manifests that serve an artifact or model repository with `inferopt serve`:
a KServe `ClusterServingRuntime` and an example `InferenceService`, and a KubeRay
`RayService` running the same server as Ray Serve replicas (serve/rayconfig.py), with a
`kustomization.yaml` listing them. `write` adds the Dockerfile of the image they run.

KServe's conventions, as its own v2 runtimes (Triton, MLServer) follow them: the model files
are fetched from `storageUri` into /mnt/models; HTTP on 8080; the gRPC port is declared
second and named `h2c`, which KServe's Standard (raw deployment) mode exposes with
appProtocol kubernetes.io/h2c. Model names come from the repository layout, as with Triton,
so the runtime needs no `{{.Name}}` template: an artifact is stored under its model name.
KubeRay's: the head container's port named `serve` (and `serve-grpc`) becomes the Service.
"""

from __future__ import annotations

import importlib.metadata
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from inferopt import __version__
from inferopt.deploy.source import DeployError, Source, check_image, inspect
from inferopt.serve.config import ModelConfig, ServerConfig
from inferopt.serve.rayconfig import (
    RaySettings,
    replica_threads,
    repository_revision,
    serve_config,
)
from inferopt.serve.rayproxy import CALLBACK, CALLBACK_ENV

RUNTIME_NAME = "kserve-inferopt"
KSERVE_MOUNT = "/mnt/models"  # where KServe's storage initializer puts storageUri's files
BAKED_REPOSITORY = "/models"  # where --bake puts them in the image
HTTP_PORT, GRPC_PORT = 8080, 8081  # KServe's model-server ports
RAY_HTTP_PORT, RAY_GRPC_PORT = 8000, 9000  # Ray Serve's defaults; KubeRay's `serve` port
USER_ID = 1000  # numeric, so `runAsNonRoot` can verify it without reading /etc/passwd
HEAD_MEMORY = "2Gi"  # the head runs Serve's controller and a proxy, never a replica

FILES = {
    "runtime": "clusterservingruntime.yaml",
    "isvc": "inferenceservice.yaml",
    "ray": "rayservice.yaml",
    "kustomization": "kustomization.yaml",
}
_QUANTITY = re.compile(r"([0-9]+(\.[0-9]+)?)([KMGTPE]i|[kMGTPE])?")
_VERSION = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+")
_WHEEL = re.compile(r"inferopt-[^-]+-[^-]+-[^-]+-[^-]+\.whl")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


@dataclass(frozen=True)
class KServeConfig:
    """What to deploy and how big: the image, the name, where the Ray pods read the
    repository, the model settings and the sizes.

    `name` is an artifact's model name, or a repository's deployment name (default: the
    folder's name); the Kubernetes names follow from it. `model` holds the settings every
    model is served with, unless its serve.toml says otherwise: flags of KServe's
    `inferopt serve`, arguments of the Ray application.

    `repository` is the folder the Ray pods serve: by default /mnt/models, where the
    PersistentVolumeClaim `claim` (default `<name>-models`) is mounted; with `bake`, the
    image's own copy at /models. `ray.cpus_per_replica` sizes KServe's container as well as
    each Ray replica, and `memory` each of their pods.

    Raises:
        ValueError: an invalid image, name, claim, path, quantity or version, or
            `repository` together with `bake`.
    """

    image: str
    name: str | None = None
    bake: bool = False
    repository: str | None = None
    claim: str | None = None
    memory: str = "2Gi"
    ray_version: str | None = None
    wheel: Path | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    ray: RaySettings = field(default_factory=RaySettings)

    def __post_init__(self) -> None:
        check_image(self.image)
        if self.name is not None and not self.name:
            raise ValueError("name must not be empty")
        if self.bake and self.repository is not None:
            raise ValueError(f"with bake, the repository is the image's {BAKED_REPOSITORY}")
        if self.repository is not None and not PurePosixPath(self.repository).is_absolute():
            raise ValueError(f"repository must be an absolute path, got {self.repository!r}")
        if self.claim is not None and not _DNS1123_SUBDOMAIN.fullmatch(self.claim):
            raise ValueError(f"claim {self.claim!r} is not a valid PersistentVolumeClaim name")
        if not _QUANTITY.fullmatch(self.memory):
            raise ValueError(
                f"memory must be a Kubernetes quantity (2Gi, 512Mi), got {self.memory!r}"
            )
        if self.ray_version is not None and not _VERSION.fullmatch(self.ray_version):
            raise ValueError(f"ray_version must be like 2.60.0, got {self.ray_version!r}")
        if self.wheel is not None and not _WHEEL.fullmatch(self.wheel.name):
            raise ValueError(f"wheel must be an inferopt wheel (inferopt-*.whl), got {self.wheel}")

    def ray_repository(self) -> str:
        """The repository path inside the Ray pods."""
        if self.bake:
            return BAKED_REPOSITORY
        return self.repository or KSERVE_MOUNT

    def wheel_name(self) -> str:
        """The wheel file the Dockerfile installs (from the build context's wheels/)."""
        return self.wheel.name if self.wheel else f"inferopt-{__version__}-py3-none-any.whl"

    def resolved_ray_version(self) -> str:
        """`ray_version`, else the Ray installed here (the image pins the same).

        Raises:
            DeployError: neither is there.
        """
        if self.ray_version:
            return self.ray_version
        try:
            return importlib.metadata.version("ray")
        except importlib.metadata.PackageNotFoundError:
            raise DeployError(
                "Ray is not installed here, so its version for the RayService and the image "
                "is unknown: give --ray-version"
            ) from None


def manifests(source: Path | Source, config: KServeConfig) -> dict[str, dict[str, Any]]:
    """The manifests, by file name: the ClusterServingRuntime, the example InferenceService,
    the RayService and the kustomization listing them.

    Raises:
        DeployError: `source` is not an artifact or repository (see `source.inspect`), or no
            Ray version is known.
    """
    src = source if isinstance(source, Source) else inspect(source, config.name)
    resources = {
        FILES["runtime"]: runtime(config),
        FILES["isvc"]: inference_service(src, config),
        FILES["ray"]: ray_service(src, config),
    }
    return {**resources, FILES["kustomization"]: kustomization(list(resources))}


def claim_name(source: Source, config: KServeConfig) -> str:
    """The PersistentVolumeClaim holding the repository (KServe's pvc:// example, Ray's
    volume)."""
    return config.claim or f"{source.name}-models"


def runtime(config: KServeConfig) -> dict[str, Any]:
    """The ClusterServingRuntime: `inferopt serve /mnt/models` on 8080 (HTTP) and 8081
    (gRPC), for models of format onnx, protocols v2 and grpc-v2."""
    threads = replica_threads(config.model, config.ray)
    container = {
        "name": "kserve-container",
        "image": config.image,
        "command": ["inferopt", "serve"],
        # An InferenceService's `args` are appended to these, and the last flag wins.
        "args": [
            KSERVE_MOUNT,
            *("--host", "0.0.0.0", "--http-port", str(HTTP_PORT)),
            *("--grpc-port", str(GRPC_PORT)),
            # ONNX Runtime would otherwise size its pool by the node's cores, not the limit.
            *("--intra-op-threads", str(threads)),
            *_model_flags(config.model),
        ],
        "ports": [
            {"name": "http1", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "h2c", "containerPort": GRPC_PORT, "protocol": "TCP"},
        ],
        # Ready once every model is loaded and warmed, not merely listening.
        "readinessProbe": _probe("/v2/health/ready", HTTP_PORT),
        "livenessProbe": _probe("/v2/health/live", HTTP_PORT),
        "securityContext": _security(),
        "resources": _resources(config.ray.cpus_per_replica, config.memory),
    }
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ClusterServingRuntime",
        "metadata": {"name": RUNTIME_NAME},
        "spec": {
            "annotations": {
                "prometheus.kserve.io/port": str(HTTP_PORT),
                "prometheus.kserve.io/path": "/metrics",
            },
            "supportedModelFormats": [{"name": "onnx", "version": "1", "autoSelect": True}],
            "protocolVersions": ["v2", "grpc-v2"],
            "containers": [container],
        },
    }


def inference_service(source: Source, config: KServeConfig) -> dict[str, Any]:
    """An InferenceService on the runtime. Its storageUri is an example (the claim the
    RayService mounts) that the user replaces with where they copied the files."""
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": source.name,
            # Knative mode takes one container port; the runtime declares two (HTTP, gRPC).
            # KServe >= 0.16 calls this mode Standard and still accepts this name.
            "annotations": {"serving.kserve.io/deploymentMode": "RawDeployment"},
        },
        "spec": {
            "predictor": {
                "model": {
                    "modelFormat": {"name": "onnx"},
                    "protocolVersion": "v2",
                    "runtime": RUNTIME_NAME,
                    "storageUri": f"pvc://{claim_name(source, config)}/",
                }
            }
        },
    }


def ray_service(source: Source, config: KServeConfig) -> dict[str, Any]:
    """The RayService: a head that holds no replica, and one worker group with one pod per
    replica's CPUs, every pod running the user's image and reading the repository at
    `config.ray_repository()` (a read-only volume, or the image's baked copy)."""
    server = ServerConfig(host="0.0.0.0", http_port=RAY_HTTP_PORT, grpc_port=RAY_GRPC_PORT)
    # The revision of the files deployed: new files give a new serveConfigV2, which KubeRay
    # rolls out; the same files leave the running replicas alone.
    revision = repository_revision(source.path)
    serve = serve_config(config.ray_repository(), config.model, server, config.ray, None, revision)
    settings = config.ray
    pod_cpus = max(1, math.ceil(settings.cpus_per_replica))
    per_pod = max(1, math.floor(pod_cpus / settings.cpus_per_replica))
    low = settings.replicas if settings.replicas is not None else settings.min_replicas
    high = settings.replicas if settings.replicas is not None else settings.max_replicas
    serve_ports = [
        {"name": "serve", "containerPort": RAY_HTTP_PORT},
        {"name": "serve-grpc", "containerPort": RAY_GRPC_PORT},
    ]
    head_ports = [
        {"name": "gcs-server", "containerPort": 6379},
        {"name": "dashboard", "containerPort": 8265},
        {"name": "client", "containerPort": 10001},
        *serve_ports,
    ]
    cluster: dict[str, Any] = {
        "rayVersion": config.resolved_ray_version(),
        "headGroupSpec": {
            # No CPUs for Ray to schedule: replicas run on workers only.
            "rayStartParams": {"num-cpus": "0"},
            "template": _ray_pod(
                "ray-head", head_ports, _resources(1, HEAD_MEMORY), source, config
            ),
        },
        "workerGroupSpecs": [
            {
                "groupName": "replicas",
                "replicas": math.ceil(low / per_pod),
                "minReplicas": math.ceil(low / per_pod),
                "maxReplicas": math.ceil(high / per_pod),
                "rayStartParams": {"num-cpus": str(pod_cpus)},
                "template": _ray_pod(
                    "ray-worker", serve_ports, _resources(pod_cpus, config.memory), source, config
                ),
            }
        ],
    }
    if settings.replicas is None:  # Serve autoscales replicas; KubeRay adds pods for them
        cluster["enableInTreeAutoscaling"] = True
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": source.name},
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve, sort_keys=False),
            "rayClusterConfig": cluster,
        },
    }


def _ray_pod(
    name: str,
    ports: list[dict[str, Any]],
    resources: dict[str, Any],
    source: Source,
    config: KServeConfig,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": config.image,
        "ports": ports,
        "resources": resources,
        # Ray's HTTP proxy then retries requests whose replica died (serve/rayproxy.py).
        "env": [{"name": CALLBACK_ENV, "value": CALLBACK}],
    }
    spec: dict[str, Any] = {"containers": [container]}
    if not config.bake:
        container["volumeMounts"] = [
            {"name": "models", "mountPath": config.ray_repository(), "readOnly": True}
        ]
        spec["volumes"] = [
            {
                "name": "models",
                "persistentVolumeClaim": {
                    "claimName": claim_name(source, config),
                    "readOnly": True,
                },
            }
        ]
    return {"spec": spec}


def kustomization(files: list[str]) -> dict[str, Any]:
    """A kustomization listing `files` as its resources."""
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": files,
    }


def _model_flags(model: ModelConfig) -> list[str]:
    """`inferopt serve`'s flags for the settings of `model` that differ from the defaults
    (each setting's flag is its name with dashes, as commands/serve.py derives them)."""
    default = ModelConfig()
    flags: list[str] = []
    for f in fields(ModelConfig):
        value = getattr(model, f.name)
        if f.name != "intra_op_threads" and value is not None and value != getattr(default, f.name):
            flags += ["--" + f.name.replace("_", "-"), str(value)]
    return flags


def _probe(path: str, port: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": 5, "failureThreshold": 3}


def _security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": USER_ID,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }


def _resources(cpus: float, memory: str) -> dict[str, Any]:
    # Requests equal to limits: the pod's CPU share is what the thread counts assume.
    amount = {"cpu": _cpu(cpus), "memory": memory}
    return {"requests": dict(amount), "limits": dict(amount)}


def _cpu(cpus: float) -> str:
    return str(int(cpus)) if float(cpus).is_integer() else f"{round(cpus * 1000)}m"
