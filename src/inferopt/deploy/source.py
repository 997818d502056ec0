"""What `inferopt deploy` is given: an artifact folder (`inferopt optimize --out`) or a model
repository folder (docs/serve.md), with the names it deploys under and the files that must
reach the serving pods' storage. Also the checks of user-chosen names: Kubernetes names and
container image references."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnx

from inferopt import external
from inferopt.artifact import MANIFEST, MODEL_FILE
from inferopt.errors import InferoptError
from inferopt.serve.config import MODEL_CONFIG_FILE
from inferopt.serve.layout import Layout

# Kubernetes' DNS-1035 label (what KServe and KubeRay require of InferenceService and
# RayService names): lower-case letters, digits and '-', starting with a letter.
_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS_LABEL_MAX = 63
# KubeRay names the RayCluster it makes `<name>-xxxxx`, so a RayService name is limited to 47.
RAYSERVICE_NAME_MAX = 47
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")  # serve/layout.py's rule

# The grammar of an image reference (github.com/distribution/reference, regexp.go):
# [domain[:port]/]path-component(/path-component)*[:tag][@digest].
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(
    rf"(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_PATH_PART}(?:/{_PATH_PART})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?"
)
_IMAGE_NAME_MAX = 255


class DeployError(InferoptError):
    """What `inferopt deploy` was given cannot be deployed: a missing or unrecognised folder,
    an invalid name or image, an output folder it must not overwrite."""


def check_image(image: str) -> str:
    """`image` if it is a valid container image reference.

    Raises:
        ValueError: it is not (upper-case repository, spaces, a bad tag or digest, ...).
    """
    match = _IMAGE.fullmatch(image)
    name_length = len(image.split("@")[0].rsplit(":", 1)[0]) if match else 0
    if match is None or name_length > _IMAGE_NAME_MAX:
        raise ValueError(
            f"image {image!r} is not a valid image reference: expected "
            "[registry/]name[:tag][@sha256:digest], the name in lower case"
        )
    return image


def check_resource_name(name: str, limit: int = DNS_LABEL_MAX) -> str:
    """`name` if it is a DNS-1035 label of at most `limit` characters.

    Raises:
        ValueError: it is not.
    """
    if len(name) > limit or not _DNS1035.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a valid resource name: at most {limit} lower-case letters, "
            "digits and '-', starting with a letter and ending with a letter or digit"
        )
    return name


def resource_name(name: str) -> str:
    """The Kubernetes name for a model or folder name: lower case, each run of other
    characters ('_', '.') as one '-'.

    Raises:
        ValueError: nothing valid comes of it (it starts with a digit, it is too long).
    """
    candidate = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    try:
        return check_resource_name(candidate, RAYSERVICE_NAME_MAX)
    except ValueError:
        raise ValueError(
            f"no Kubernetes name follows from {name!r} (tried {candidate!r}): give one with "
            f"--name (at most {RAYSERVICE_NAME_MAX} lower-case letters, digits and '-', "
            "starting with a letter)"
        ) from None


@dataclass(frozen=True)
class Source:
    """An artifact or repository to deploy.

    `models`: the model names the server will serve from it. `copies`: (file or folder here,
    where it goes relative to the storage root the pods see as their repository).
    """

    path: Path
    kind: Literal["artifact", "repository"]
    name: str  # the Kubernetes name of the deployment
    models: tuple[str, ...]
    copies: tuple[tuple[Path, str], ...]


def inspect(path: Path, name: str | None = None) -> Source:
    """Read `path` as an artifact folder (inferopt.json and model.onnx) or, failing that, as a
    model repository. An artifact is served as model `name` (default: its folder's name), so
    it is copied to `<name>/` under the storage root; a repository is copied as it is.

    Raises:
        DeployError: `path` is missing, not a folder, an artifact without model.onnx,
            neither an artifact nor a repository holding a model, or no valid name follows.
    """
    if not path.exists():
        raise DeployError(f"{path}: no such file or folder")
    if not path.is_dir():
        raise DeployError(f"{path}: not a folder; give an artifact folder or a model repository")
    try:
        if (path / MANIFEST).is_file():
            return _artifact(path, name)
        return _repository(path, name)
    except ValueError as exc:
        raise DeployError(f"{path}: {exc}") from exc


def _artifact(path: Path, name: str | None) -> Source:
    model = path / MODEL_FILE
    if not model.is_file():
        raise DeployError(
            f"{path}: an inferopt artifact without {MODEL_FILE} (its search kept no model)"
        )
    model_name = name if name is not None else path.resolve().name
    if not _MODEL_NAME.fullmatch(model_name) or ".." in model_name:
        raise ValueError(
            f"{model_name!r} cannot be a model name (letters, digits, '_', '-', '.'): "
            "give one with --name"
        )
    files = [MODEL_FILE, *_data_files(model)]
    if (path / MODEL_CONFIG_FILE).is_file():
        files.append(MODEL_CONFIG_FILE)
    copies = tuple((path / f, f"{model_name}/{f}") for f in files)
    return Source(path, "artifact", resource_name(model_name), (model_name,), copies)


def _repository(path: Path, name: str | None) -> Source:
    layout = Layout(path)
    models = layout.names()
    if not models:
        raise DeployError(
            f"{path}: neither an inferopt artifact ({MANIFEST} and {MODEL_FILE}) nor a model "
            "repository holding a model (see docs/serve.md, 'The model repository')"
        )
    copies: list[tuple[Path, str]] = []
    for model in models:
        source = layout.find(model)
        if source.folder is not None:
            copies.append((source.folder, source.folder.name))
        else:  # a plain REPO/<name>.onnx, and the external-data files beside it
            copies.append((source.path, source.path.name))
            copies.extend((path / f, f) for f in _data_files(source.path))
    deploy_name = name if name is not None else path.resolve().name
    return Source(path, "repository", resource_name(deploy_name), tuple(models), tuple(copies))


def _data_files(model: Path) -> list[str]:
    """The external-data files `model` refers to (relative to its folder); only the graph is
    parsed, not the weights."""
    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and others: all mean "not ONNX"
        raise DeployError(f"{model}: not a readable ONNX model ({exc})") from exc
    return external.locations(proto)
