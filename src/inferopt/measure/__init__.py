"""Measuring what a model costs to run: `profile(model, ProfileConfig(...)) -> Measurement`
and `compare(a, b)`; the stages live in their own modules (latency, threads, memory, flops,
roofline, opprofile, energy), `pipeline` strings them together."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inferopt.measure.config import ProfileConfig
    from inferopt.measure.pipeline import compare, profile

_LAZY = {"profile": "pipeline", "compare": "pipeline", "ProfileConfig": "config"}


def __getattr__(name: str) -> Any:
    # Lazy: `inferopt export` imports measure.latency, and the memory probe's fresh process
    # imports measure.memory; neither should pay for onnxscript, which the pipeline needs.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"inferopt.measure.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'inferopt.measure' has no attribute {name!r}")


__all__ = ["ProfileConfig", "compare", "profile"]
