"""`inferopt deploy kserve ARTIFACT_OR_REPO --image IMAGE --out DIR`: Kubernetes manifests
(KServe ClusterServingRuntime and InferenceService, KubeRay RayService, kustomization) and
the Dockerfile of the image they run, for an artifact folder or a model repository.
Nothing is applied or built: the command prints what to run next."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inferopt.commands.serve import replicas_flag
from inferopt.errors import InferoptError

if TYPE_CHECKING:  # imported on use: `inferopt --help` does not load ONNX and YAML
    from inferopt.deploy.kserve import KServeConfig
    from inferopt.deploy.source import Source


def add_parser(subparsers: Any) -> None:
    """Register `deploy` and its target `kserve` on the CLI's subparsers."""
    deploy = subparsers.add_parser(
        "deploy",
        help="write Kubernetes manifests that serve an artifact or repository",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    targets = deploy.add_subparsers(dest="deploy_target", required=True, metavar="TARGET")
    kserve = targets.add_parser(
        "kserve",
        help="KServe runtime and InferenceService, KubeRay RayService, Dockerfile",
        description="Write a KServe ClusterServingRuntime (kserve-inferopt) and an example "
        "InferenceService, a KubeRay RayService, a kustomization.yaml listing them, and the "
        "Dockerfile of the image they run (see docs/scaleout.md).",
    )
    kserve.add_argument("source", metavar="ARTIFACT_OR_REPO", type=Path)
    kserve.add_argument("--image", required=True, help="the image the pods run (you build it)")
    kserve.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder to write")
    kserve.add_argument("--force", action="store_true", help="replace DIR if it is not empty")
    kserve.add_argument(
        "--name",
        help="model name of an artifact, deployment name of a repository (default: its folder)",
    )
    where = kserve.add_mutually_exclusive_group()
    where.add_argument(
        "--bake", action="store_true", help="copy the models into the image (at /models)"
    )
    where.add_argument(
        "--repository",
        metavar="PATH",
        help="where the Ray pods mount the models' volume (default /mnt/models)",
    )
    kserve.add_argument("--claim", help="PersistentVolumeClaim of the models (default NAME-models)")
    kserve.add_argument("--wheel", type=Path, help="inferopt wheel to copy into DIR/wheels/")
    kserve.add_argument("--ray-version", help="Ray of the image and RayService (default: this one)")
    sizes = kserve.add_argument_group("sizes")
    sizes.add_argument(
        "--replicas", type=replicas_flag, default=1, help="N, or 'auto' (autoscaling)"
    )
    sizes.add_argument("--min-replicas", type=int, default=1, help="with --replicas auto")
    sizes.add_argument("--max-replicas", type=int, default=4, help="with --replicas auto")
    sizes.add_argument(
        "--cpus", type=float, default=1.0, help="CPUs of KServe's container and of each replica"
    )
    sizes.add_argument("--memory", default="2Gi", help="memory of each serving pod (2Gi)")
    kserve.add_argument(
        "--check",
        type=Path,
        metavar="CRD_DIR",
        help="validate the manifests against the CRD YAML files in CRD_DIR (needs jsonschema)",
    )
    kserve.set_defaults(func=run)


def config(args: argparse.Namespace) -> KServeConfig:
    """The KServeConfig the flags describe.

    Raises:
        DeployError: a flag's value is invalid (the message names it).
    """
    from inferopt.deploy.kserve import KServeConfig
    from inferopt.deploy.source import DeployError
    from inferopt.serve.rayconfig import RaySettings

    try:
        settings = RaySettings(
            replicas=args.replicas,
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
            cpus_per_replica=args.cpus,
        )
        return KServeConfig(
            image=args.image,
            name=args.name,
            bake=args.bake,
            repository=args.repository,
            claim=args.claim,
            memory=args.memory,
            ray_version=args.ray_version,
            wheel=args.wheel,
            ray=settings,
        )
    except ValueError as exc:
        raise DeployError(str(exc)) from exc


def run(args: argparse.Namespace) -> int:
    try:  # imported late: `inferopt --help` stays fast, and works without PyYAML
        from inferopt.deploy import inspect, manifests, storage_layout, write
        from inferopt.deploy.dockerfile import WHEELS
    except ImportError as exc:
        raise InferoptError(
            f"inferopt deploy needs {exc.name or 'its dependencies'}: pip install 'inferopt[serve]'"
        ) from exc

    settings = config(args)
    source = inspect(args.source, settings.name)
    if args.check is not None:  # before writing: a manifest that fails is not left behind
        _check(args.check, manifests(source, settings))
    written = write(source, args.out, settings, force=args.force)
    out = args.out
    print(f"wrote {out}: {', '.join(p.name for p in written)}")
    _describe(source)
    print("copy to storage (KServe's storageUri; the RayService's volume):")
    for line in storage_layout(source, "STORAGE"):
        print(f"  {line}")
    print("next:")
    if settings.wheel is None:
        print(f"  pip wheel --no-deps -w {out / WHEELS} <inferopt source folder>")
    print(f"  docker build -t {settings.image} {out} && docker push {settings.image}")
    print(f"  set storageUri in {out / 'inferenceservice.yaml'} (an example value now)")
    print(f"  kubectl kustomize {out} | kubectl apply -f -")
    return 0


def _describe(source: Source) -> None:
    kind = "artifact" if source.kind == "artifact" else "repository"
    print(f"{kind} {source.path}: model(s) {', '.join(source.models)} as {source.name}")


def _check(crd_dir: Path, found: dict[str, dict[str, Any]]) -> None:
    """Validate the custom resources in `found` against the CRDs in `crd_dir`.

    Raises:
        InferoptError: jsonschema or Ray is missing, or `crd_dir` is not a folder.
        ManifestError: a manifest fails.
    """
    missing = [m for m in ("jsonschema", "ray") if importlib.util.find_spec(m) is None]
    if missing:
        raise InferoptError(f"--check needs {' and '.join(missing)}: pip install jsonschema ray")
    from inferopt.deploy.schema import CrdSchemas, check

    if not crd_dir.is_dir():
        raise InferoptError(f"{crd_dir}: no such folder (give one holding CRD YAML files)")
    check(found, CrdSchemas.load(crd_dir))
    print(f"checked {', '.join(found)}: valid (CRDs from {crd_dir}; Ray's Serve schema)")
