"""Exception types. Every message names the thing at fault and the problem, in one line."""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class InferoptError(Exception):
    """Base of every error inferopt raises on purpose. The CLI prints these as one line, exit 2."""


class ModelLoadError(InferoptError):
    """A model source could not be read, imported or run (missing file, not ONNX, bad op, ...)."""


class ExportError(InferoptError):
    """A PyTorch module could not be exported to ONNX by any exporter."""


class ParityError(InferoptError):
    """The exported ONNX model disagrees with its source beyond tolerance."""


class InputError(InferoptError):
    """Inputs (or data) do not match what the model expects."""


class ZooError(InferoptError):
    """An unknown zoo name, or a zoo model whose package is not installed."""


def first_line(exc: BaseException, *, named: bool = False, innermost: bool = False) -> str:
    """One line to put in our own message about a library's exception: its first non-blank
    line (colour codes removed, at most 300 characters). `named` prefixes the exception type;
    `innermost` follows `__cause__` first, since torch.onnx wraps the real reason in a generic
    "Failed to export the model" error."""
    while innermost and exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [ln for ln in _ANSI.sub("", str(exc)).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0][:300]}" if named else lines[0][:300]
