"""Running a model: the `Runner` interface the batcher calls from its worker threads, and the
ONNX Runtime implementation (warm-up is in warmup.py).

`Runner` is public so that tests and embedders can put a double in front of a real model
(e.g. one that waits on an event to hold a batch back) without touching the batcher.
"""

from __future__ import annotations

import json
from typing import Protocol

import numpy as np
import onnxruntime as ort

from inferopt.errors import first_line
from inferopt.iospec import IOSpec
from inferopt.model import Model
from inferopt.runtime import SessionConfig, create_session
from inferopt.serve.errors import BadRequest, ModelFailed

Tensors = dict[str, np.ndarray]


class Terminated(Exception):
    """A run stopped because every request in its batch had gone."""


class RunControl:
    """Per-run options; lets the batcher stop a run nobody is waiting for any more."""

    def __init__(self) -> None:
        self.options = ort.RunOptions()
        self.options.log_severity_level = 4  # failures are reported to the client, not logged
        self.terminated = False

    def terminate(self) -> None:
        self.terminated = True
        self.options.terminate = True


class Runner(Protocol):
    """Runs one batch. Called from a worker thread; must be safe to call concurrently."""

    @property
    def io(self) -> IOSpec: ...

    def run(self, inputs: Tensors, control: RunControl) -> Tensors: ...


class OnnxRunner:
    """One ONNX Runtime session per model version, shared by all its concurrent runs (an
    InferenceSession is thread-safe, so instances cost threads, not copies of the weights)."""

    def __init__(self, model: Model, threads: int, label: str) -> None:
        self._io = model.io
        # No spinning: between batches the cores belong to the event loop and other models
        # (measured on digits-cnn: ~470 -> ~900 req/s, server CPU per request halved).
        config = SessionConfig(intra_op_threads=threads, inter_op_threads=1, allow_spinning=False)
        self._session = create_session(model.proto, config, label=label)
        self._outputs = [o.name for o in self._session.get_outputs()]

    @property
    def io(self) -> IOSpec:
        return self._io

    def adopt(self, io: IOSpec) -> None:
        """Serve with `io`: the same model's spec, with what warm-up found it accepts."""
        self._io = io

    def run(self, inputs: Tensors, control: RunControl) -> Tensors:
        feeds = {name: _as_text(array, name) for name, array in inputs.items()}
        try:
            values = self._session.run(self._outputs, feeds, control.options)
        except Exception as exc:  # ORT raises its own pybind types, one per status code
            if control.terminated:
                raise Terminated() from exc
            message = first_line(exc)
            if "INVALID_ARGUMENT" in message:  # e.g. a token id beyond the vocabulary
                raise BadRequest(f"the model rejected the inputs: {message}") from exc
            raise ModelFailed(f"running the model failed: {message}") from exc
        return {name: _as_tensor(v) for name, v in zip(self._outputs, values, strict=True)}


def _as_tensor(value: object) -> np.ndarray:
    """A sequence or map output (ZipMap's class probabilities: one {class: probability} per
    row) as one JSON text per element, a BYTES tensor the protocol can carry."""
    if isinstance(value, np.ndarray):
        return value
    items = value if isinstance(value, list) else [value]
    texts = np.empty(len(items), dtype=np.object_)
    texts[:] = [json.dumps(_plain(item)) for item in items]
    return texts


def _plain(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value.tolist() if isinstance(value, np.ndarray | np.generic) else value


def _as_text(array: np.ndarray, name: str) -> np.ndarray:
    """ONNX strings are text: BYTES elements go in as str (ONNX Runtime would otherwise store
    the repr of a bytes object)."""
    if array.dtype != np.object_:
        return array
    try:
        text = [x.decode() if isinstance(x, bytes) else str(x) for x in array.ravel()]
    except UnicodeDecodeError:
        raise BadRequest(f"input {name!r}: BYTES elements must be UTF-8 text") from None
    converted = np.empty(array.size, dtype=np.object_)
    converted[:] = text
    return converted.reshape(array.shape)
