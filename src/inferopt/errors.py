"""Exception types. Every message names the thing at fault and the problem, in one line."""

from __future__ import annotations


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
