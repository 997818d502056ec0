"""The folder `inferopt deploy kserve` writes: the manifests as YAML, each headed by comments
saying what it does and what the user must provide, the Dockerfile, and the build context's
wheel and baked repository when asked for. Written into a sibling staging folder and renamed
into place, so a failed run leaves nothing half-written at the destination."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path
from typing import Any

import yaml

from inferopt.artifact import swap_into_place
from inferopt.deploy.dockerfile import MODELS, WHEELS, dockerfile
from inferopt.deploy.kserve import (
    FILES,
    GRPC_PORT,
    HTTP_PORT,
    KSERVE_MOUNT,
    RAY_GRPC_PORT,
    RAY_HTTP_PORT,
    RUNTIME_NAME,
    KServeConfig,
    claim_name,
    manifests,
)
from inferopt.deploy.source import DeployError, Source, inspect

DOCKERFILE = "Dockerfile"
COMMENT_WIDTH = 90
STORAGE_NOTE = "an example: replace it with where you copied the files (see above)"


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2) as literal blocks, which read as the YAML they are;
    no anchors and aliases for values used twice (the serve ports of head and workers)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    return dumper.represent_scalar(
        "tag:yaml.org,2002:str", data, style="|" if "\n" in data else None
    )


_Dumper.add_representer(str, _str)


def to_yaml(manifest: dict[str, Any]) -> str:
    """`manifest` as block-style YAML, keys in their given order."""
    return yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def render(source: Source, config: KServeConfig) -> dict[str, str]:
    """Every file's text by name: the manifests (YAML with comments) and the Dockerfile.

    Raises:
        DeployError: no Ray version is known.
    """
    found = manifests(source, config)
    texts = {
        name: _comment(_header(name, source, config)) + to_yaml(manifest)
        for name, manifest in found.items()
    }
    isvc = FILES["isvc"]
    texts[isvc] = _annotate(texts[isvc], "storageUri", STORAGE_NOTE)
    texts[DOCKERFILE] = dockerfile(source, config)
    return texts


def write(
    source: Path | Source, out: Path, config: KServeConfig, *, force: bool = False
) -> list[Path]:
    """Write the manifests and the Dockerfile into `out`, with `wheels/` (the wheel given
    as `config.wheel`) and `models/` (the repository, when `config.bake`) for the build.

    Returns:
        The files written at the top of `out`, in order.

    Raises:
        DeployError: `source` is not an artifact or repository, `out` is a file, or a
            non-empty folder and `force` is not set (then `out` is replaced whole), or the
            wheel is missing.
    """
    src = source if isinstance(source, Source) else inspect(source, config.name)
    if out.exists() and not out.is_dir():
        raise DeployError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise DeployError(f"{out}: folder exists and is not empty; give --force to replace it")
    if config.wheel is not None and not config.wheel.is_file():
        raise DeployError(f"{config.wheel}: no such wheel file")
    texts = render(src, config)
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        for name, text in texts.items():
            (staging / name).write_text(text)
        if config.wheel is not None:
            (staging / WHEELS).mkdir()
            shutil.copy2(config.wheel, staging / WHEELS / config.wheel.name)
        if config.bake:
            _copy_repository(src, staging / MODELS)
        swap_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / name for name in texts]


def _copy_repository(source: Source, target: Path) -> None:
    for local, dest in source.copies:
        path = target / dest
        path.parent.mkdir(parents=True, exist_ok=True)
        if local.is_dir():
            shutil.copytree(local, path)
        else:
            shutil.copy2(local, path)


def storage_layout(source: Source, root: str) -> list[str]:
    """One line per copy: the local file or folder, and where it goes under `root`."""
    return [
        f"{local}{'/' if local.is_dir() else ''} -> {root.rstrip('/')}/{dest}"
        + ("/" if local.is_dir() else "")
        for local, dest in source.copies
    ]


def _header(name: str, source: Source, config: KServeConfig) -> list[str]:
    """The comment paragraphs heading file `name`."""
    models = ", ".join(source.models)
    if name == FILES["runtime"]:
        return [
            f"ClusterServingRuntime {RUNTIME_NAME}: KServe runs `inferopt serve {KSERVE_MOUNT}` "
            "for InferenceServices of model format onnx (protocols v2 and grpc-v2): HTTP on "
            f"{HTTP_PORT}, gRPC on {GRPC_PORT}. KServe's storage initializer fetches the "
            f"InferenceService's storageUri into {KSERVE_MOUNT}.",
            "Two container ports need KServe's Standard (RawDeployment) mode. Knative allows "
            f"one port per container: for Knative mode delete `ports` (HTTP on {HTTP_PORT} is "
            "its default).",
            "An InferenceService's `args` are appended to these and the last flag wins (e.g. "
            "[--max-batch-size, '16']). --intra-op-threads matches the CPU limit: change "
            "them together.",
        ]
    if name == FILES["isvc"]:
        return [
            f"InferenceService {source.name}: serves {models} through the {RUNTIME_NAME} "
            "runtime (Open Inference Protocol over HTTP and gRPC).",
            "storageUri below is an EXAMPLE value, to replace. Copy the files to your storage "
            "(s3://, gs://, https://, or a PersistentVolumeClaim as pvc://NAME/) like this:",
            *("  " + line for line in storage_layout(source, "STORAGE")),
            "and set storageUri to STORAGE. KServe copies it to /mnt/models, where each model "
            "is served under the name of its folder (or file).",
        ]
    if name == FILES["ray"]:
        return [
            f"RayService {source.name}: serves {models} as Ray Serve replicas running "
            "inferopt's server (KubeRay). serveConfigV2 is inferopt.serve.rayconfig's "
            f"serve_config. Ray's proxies listen on HTTP {RAY_HTTP_PORT} (port `serve`) and "
            f"gRPC {RAY_GRPC_PORT} (`serve-grpc`), behind KubeRay's Service "
            f"{source.name}-serve-svc. The head holds no replica (num-cpus 0); each worker "
            "pod has one replica's CPUs.",
            *_ray_files(source, config),
            f"The image's Ray must be the rayVersion below ({config.resolved_ray_version()}).",
        ]
    return [
        "kubectl kustomize THIS_FOLDER | kubectl apply -f -",
        "Needs KServe's and KubeRay's CRDs in the cluster. The InferenceService and the "
        "RayService are two ways to serve the same models: drop the one you do not use.",
    ]


def _ray_files(source: Source, config: KServeConfig) -> list[str]:
    if config.bake:
        return [f"The model files are baked into the image, at {config.ray_repository()}."]
    return [
        f"The model files come from the PersistentVolumeClaim {claim_name(source, config)}, "
        f"mounted read-only at {config.ray_repository()} on the head and every worker (so "
        "its access mode must be ReadOnlyMany or ReadWriteMany). Create it and copy into it:",
        *("  " + line for line in storage_layout(source, "CLAIM")),
    ]


def _comment(paragraphs: list[str]) -> str:
    """Comment lines: paragraphs wrapped, lines starting with two spaces kept as they are."""
    lines: list[str] = []
    for text in paragraphs:
        lines.extend([text] if text.startswith("  ") else _wrap(text))
    return "".join(f"# {line}\n" for line in lines)


def _wrap(text: str) -> list[str]:
    # Whole words only: names such as digits-cnn-serve-svc and --max-batch-size stay whole.
    return textwrap.wrap(text, COMMENT_WIDTH, break_on_hyphens=False, break_long_words=False)


def _annotate(text: str, key: str, note: str) -> str:
    """`text` with `# note` after the one line that sets `key`."""
    lines = text.splitlines(keepends=True)
    matches = [i for i, line in enumerate(lines) if line.lstrip().startswith(f"{key}: ")]
    if len(matches) != 1:
        raise ValueError(f"expected one {key!r} line, found {len(matches)}")
    i = matches[0]
    lines[i] = f"{lines[i].rstrip()}  # {note}\n"
    return "".join(lines)
