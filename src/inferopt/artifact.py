"""The artifact folder `inferopt optimize` writes: model.onnx, inferopt.json (the manifest:
recipe, provenance, measurements, machine, versions) and report.md.

Written into a sibling temporary folder and renamed into place, so a failed or interrupted run
never leaves anything at --out that looks like a finished artifact."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inferopt.errors import InferoptError
from inferopt.model import Model

MANIFEST = "inferopt.json"
MODEL_FILE = "model.onnx"
REPORT = "report.md"
SCHEMA_VERSION = 1


class ArtifactError(InferoptError):
    """The output folder cannot be written (it exists and is not an inferopt artifact, ...)."""


def check_destination(out: Path) -> None:
    """Refuse early to overwrite a folder that is not ours."""
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ArtifactError(f"{out}: folder exists, is not empty and is not an inferopt artifact")


def write(out: Path, model: Model, manifest: dict[str, Any], report: str) -> Path:
    def fill(folder: Path) -> None:
        model.save(folder / MODEL_FILE)
        write_manifest(folder, manifest)
        (folder / REPORT).write_text(report)

    return write_folder(out, fill)


def write_folder(out: Path, fill: Callable[[Path], None]) -> Path:
    """Let `fill` write the artifact's files into a staging folder, then swap it into place."""
    check_destination(out)
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        fill(staging)
        swap_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    full = {"schema_version": SCHEMA_VERSION, **manifest}
    (folder / MANIFEST).write_text(json.dumps(full, indent=2, default=jsonable) + "\n")


def swap_into_place(staging: Path, out: Path) -> None:
    """Make the finished folder `staging` become `out`, replacing any old one whole."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST if folder.is_dir() else folder
    if not path.is_file():
        raise ArtifactError(f"{path}: no inferopt manifest there")
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from exc
    return data


def jsonable(value: Any) -> Any:
    if isinstance(value, tuple | set):
        return list(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to the manifest")
