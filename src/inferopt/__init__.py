"""inferopt: make a trained model cheaper to run, measure what it costs, and serve it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from inferopt.model import Model
    from inferopt.search.auto import SearchResult

from inferopt.errors import (
    ExportError,
    InferoptError,
    InputError,
    ModelLoadError,
    ParityError,
    ZooError,
)


def load(source: Any, example_inputs: Any = None, **options: Any) -> Model:
    """Import a model: an .onnx file, artifact or Hugging Face folder, zoo name,
    'pkg.module:factory', or a PyTorch module with example inputs. See inferopt.sources.load."""
    from inferopt.sources import load as _load

    return _load(source, example_inputs, **options)


def optimize(source: Any = None, out: Any = None, **options: Any) -> SearchResult:
    """Search for the fastest model within an accuracy budget (the zoo's default model when
    `source` is None) and, with `out`, write the artifact folder. Options: `data`, `config`
    (inferopt.search.SearchConfig), `progress`. See inferopt.search.auto.optimize."""
    from inferopt import zoo
    from inferopt.search.auto import optimize as _optimize

    return _optimize(zoo.DEFAULT if source is None else source, out, **options)


def __getattr__(name: str) -> Any:
    # The measurement API loads on first use: `inferopt export` should not pay for it.
    if name in ("profile", "compare", "ProfileConfig"):
        from inferopt import measure

        return getattr(measure, name)
    if name in ("generate", "stream", "GenerationConfig"):  # generators: docs/generate.md
        from inferopt.generative import generate

        return getattr(generate, name)
    raise AttributeError(f"module 'inferopt' has no attribute {name!r}")


__all__ = [
    "ExportError",
    "GenerationConfig",
    "InferoptError",
    "InputError",
    "ModelLoadError",
    "ParityError",
    "ProfileConfig",
    "ZooError",
    "__version__",
    "compare",
    "generate",
    "load",
    "optimize",
    "profile",
    "stream",
]
