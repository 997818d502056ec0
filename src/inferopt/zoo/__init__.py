"""The zoo: embedded default models with their own data and metric, trained locally or shipped
in packages, so that every command works offline with nothing given."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from inferopt.errors import ZooError
from inferopt.zoo.registry import TorchSource, ZooData, ZooEntry

DEFAULT = "minilm"
# name -> (module, attribute); modules import torch, so they load only when an entry is used.
_ENTRIES = {
    "minilm": ("inferopt.zoo.minilm", "MINILM"),
    "digits-cnn": ("inferopt.zoo.digits", "DIGITS_CNN"),
    "digits-mlp": ("inferopt.zoo.digits", "DIGITS_MLP"),
}
SUMMARIES = {
    "minilm": "all-MiniLM-L6-v2 sentence embeddings, mean pooled; metric: fidelity to fp32",
    "digits-cnn": "small CNN trained on scikit-learn's digits; metric: top-1 accuracy",
    "digits-mlp": "MLP trained on scikit-learn's digits; metric: top-1 accuracy",
}


def names() -> list[str]:
    return list(_ENTRIES)


def is_zoo_name(name: str) -> bool:
    return name in _ENTRIES


def get(name: str) -> ZooEntry:
    """The zoo entry called `name`; ZooError when unknown or its packages are missing."""
    if name not in _ENTRIES:
        raise ZooError(f"{name!r} is not a zoo model; the zoo has {', '.join(_ENTRIES)}")
    module_name, attribute = _ENTRIES[name]
    missing = [m for m in ("torch", "sklearn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ZooError(
            f"zoo model {name!r} needs {', '.join(missing)}: pip install 'inferopt[torch]'"
        )
    module = importlib.import_module(module_name)
    entry: ZooEntry = getattr(module, attribute)
    return entry


def cache_path(entry: ZooEntry) -> Path:
    """Where the exported ONNX of `entry` is kept, keyed by everything that changes it."""
    from importlib.metadata import version

    from inferopt import __version__
    from inferopt.cache import cache_dir

    key = f"{entry.name}-v{entry.version}-inferopt{__version__}-torch{version('torch')}"
    return cache_dir("zoo") / f"{key}-onnx{version('onnx')}.onnx"


__all__ = ["DEFAULT", "TorchSource", "ZooData", "ZooEntry", "get", "is_zoo_name", "names"]
