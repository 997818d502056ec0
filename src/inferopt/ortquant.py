"""ONNX Runtime's weight-only quantizer module, imported without its side effect on logging.

`onnxruntime.quantization.matmul_nbits_quantizer` calls `logging.basicConfig(level=INFO)` when
it is imported: the root logger gets a stderr handler at INFO, and from then on every library's
INFO records (onnxscript's optimizer writes hundreds per pass) reach the user's terminal. The
import here puts the root logger's handlers and level back as they were."""

from __future__ import annotations

import logging
from types import ModuleType


def nbits_quantizer() -> ModuleType:
    """The module `onnxruntime.quantization.matmul_nbits_quantizer`, with the root logger as it
    was before the first import. Its own logger is set to WARNING (it logs a line per node)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from onnxruntime.quantization import matmul_nbits_quantizer
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    logging.getLogger(matmul_nbits_quantizer.__name__).setLevel(logging.WARNING)
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    module: ModuleType = matmul_nbits_quantizer
    return module
