"""Where models are in a repository folder. Three layouts, all read-only to us:

    REPO/<name>/<version>/model.onnx   Triton's layout; the highest version number is served
    REPO/<name>/model.onnx             an artifact folder from `inferopt optimize` (version 1)
    REPO/<name>.onnx                   a plain ONNX file (version 1)

A model folder may hold `serve.toml` (its settings). Only `.onnx` files (protobuf) and TOML are
ever read: no pickle, no Python, no custom-op libraries. Names are checked against a strict
pattern and resolved paths must stay inside the repository, so a name from a URL can never
reach a file outside it (`..`, symlinks out of the folder).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from inferopt.serve.errors import BadRequest, NotFound

log = logging.getLogger("inferopt.serve")
MODEL_FILE = "model.onnx"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_VERSION = re.compile(r"[1-9][0-9]{0,8}")


@dataclass(frozen=True)
class ModelSource:
    """One servable model version on disk."""

    name: str
    version: str
    path: Path  # the .onnx file
    folder: Path | None  # the model's folder (for serve.toml); None for a plain .onnx file


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name) or ".." in name:
        raise BadRequest(
            f"invalid model name {name!r}: use letters, digits, '_', '-' and '.', "
            "starting with a letter or digit"
        )
    return name


def check_version(version: str) -> str:
    if not _VERSION.fullmatch(version):
        raise BadRequest(f"invalid model version {version!r}: versions are positive integers")
    return version


class Layout:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def names(self) -> list[str]:
        """Every model name the folder holds, sorted."""
        found = set()
        for entry in sorted(self.root.iterdir()):
            name = entry.stem if entry.suffix == ".onnx" else entry.name
            if _NAME.fullmatch(name) and self._source_or_none(name) is not None:
                found.add(name)
        return sorted(found)

    def find(self, name: str) -> ModelSource:
        """The version of `name` to serve: its highest version number."""
        check_name(name)
        source = self._source_or_none(name)
        if source is None:
            raise NotFound(f"no model {name!r} in the repository {self.root}")
        return source

    def _source_or_none(self, name: str) -> ModelSource | None:
        folder = self.root / name
        if folder.is_dir():
            return self._from_folder(name, folder)
        file = self.root / f"{name}.onnx"
        if file.is_file() and self._inside(file):
            return ModelSource(name, "1", file, None)
        return None

    def _from_folder(self, name: str, folder: Path) -> ModelSource | None:
        if not self._inside(folder):
            log.warning("%s: skipped, it leads outside the repository", folder)
            return None
        versions = [
            int(d.name)
            for d in folder.iterdir()
            if _VERSION.fullmatch(d.name) and (d / MODEL_FILE).is_file()
        ]
        if versions:
            version = str(max(versions))
            path = folder / version / MODEL_FILE
        elif (folder / MODEL_FILE).is_file():
            version, path = "1", folder / MODEL_FILE
        else:
            return None
        return ModelSource(name, version, path, folder) if self._inside(path) else None

    def _inside(self, path: Path) -> bool:
        return path.resolve().is_relative_to(self.root)
