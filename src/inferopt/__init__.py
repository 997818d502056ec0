"""inferopt: make a trained model cheaper to run, measure what it costs, and serve it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from inferopt.model import Model

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


def __getattr__(name: str) -> Any:
    # The measurement API loads on first use: `inferopt export` should not pay for it.
    if name in ("profile", "compare", "ProfileConfig"):
        from inferopt import measure

        return getattr(measure, name)
    raise AttributeError(f"module 'inferopt' has no attribute {name!r}")


__all__ = [
    "ExportError",
    "InferoptError",
    "InputError",
    "ModelLoadError",
    "ParityError",
    "ProfileConfig",
    "ZooError",
    "__version__",
    "compare",
    "load",
    "profile",
]
