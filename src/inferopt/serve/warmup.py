"""Loading a model version and warming it up before it takes traffic.

Warm-up runs every batch size the batcher will use once, so the first requests do not pay for
ONNX Runtime's planning, and measures each, the batcher's first latency estimates. Its inputs
come, in order, from the model's own config (`warmup_data`: real inputs, like Triton's
`model_warmup`; `input_shapes`: the sizes to run), from what an earlier import found and
stored in the file, or from discovery (inferopt.discovery: found from the graph, confirmed by
running). A warm-up that fails never makes a valid model unavailable: the model loads with a
warning and the first real request warms it up. Only a model ONNX Runtime cannot load at all
is unavailable, with a reason a person can act on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inferopt import analysis, discovery, stated
from inferopt.data import Dataset
from inferopt.errors import InferoptError, first_line
from inferopt.iospec import IOSpec, needs_discovery, problem_of
from inferopt.model import Model, load_onnx
from inferopt.serve.batch import BatchAxes
from inferopt.serve.config import ModelConfig
from inferopt.serve.errors import ServeError
from inferopt.serve.layout import ModelSource
from inferopt.serve.runner import OnnxRunner, RunControl, Runner

log = logging.getLogger("inferopt.serve")
WrapRunner = Callable[[str, Runner], Runner]  # (model name, loaded runner) -> runner to serve


@dataclass(frozen=True)
class Loaded:
    runner: Runner
    latency: dict[int, float]  # seconds per batch by batch size; empty: not warmed up
    warning: str | None = None  # why warm-up was skipped or cut short


def load_and_warm(source: ModelSource, config: ModelConfig, wrap: WrapRunner | None) -> Loaded:
    """In a worker thread: the session, the inputs it accepts, then warm-up at every batch
    size through the (wrapped, if asked) runner, so the estimates include the wrapper."""
    label = f"{source.name} version {source.version}"
    model = load_onnx(source.path, verify=False)  # the session below checks it
    runner = OnnxRunner(model, config.threads(), label)
    io, problem = inputs_for(model, runner, config, source.folder)
    runner.adopt(io)
    served: Runner = wrap(source.name, runner) if wrap is not None else runner
    if problem is not None:
        return _unwarmed(served, label, problem)
    axes = BatchAxes.of(io, config.sequence_batching)
    sizes = warmup_sizes(config.max_batch_size if axes.batch is not None else 0)
    try:
        latency = warm_up(served, sizes, config.warmup_seq_len)
    except ServeError as exc:
        return _unwarmed(served, label, f"warm-up failed: {exc.message}")
    return Loaded(served, latency)


def _unwarmed(runner: Runner, label: str, why: str) -> Loaded:
    warning = f"{label}: loaded without warm-up ({why}); the first request warms it up"
    log.warning("%s", warning)
    return Loaded(runner, {}, warning)


def inputs_for(
    model: Model, runner: OnnxRunner, config: ModelConfig, folder: Path | None
) -> tuple[IOSpec, str | None]:
    """The spec warm-up generates inputs from, and why there is none that runs (or None). A
    setting that does not fit the model (an unknown input in `input_shapes`, an unreadable
    `warmup_data`) is a reason to load without warm-up, not to refuse the model."""
    try:
        return _inputs_for(model, runner, config, folder)
    except InferoptError as exc:
        settings = f"input_shapes={config.input_shapes!r}, warmup_data={config.warmup_data!r}"
        return model.io, f"the model's warm-up settings do not fit it ({settings}): {exc}"


def _inputs_for(
    model: Model, runner: OnnxRunner, config: ModelConfig, folder: Path | None
) -> tuple[IOSpec, str | None]:
    io = model.io
    shapes = parse_shapes(config.input_shapes)

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return runner.run(feeds, RunControl())

    if config.warmup_data is not None:
        path = Path(config.warmup_data)
        path = path if path.is_absolute() or folder is None else folder / path
        samples = Dataset.from_npz(path).samples
        analysed = analysis.analyse(model.proto, io)
        return stated.follow_data(stated.state_shapes(analysed, shapes)[0], samples), None
    if not shapes and not needs_discovery(io):
        return io, problem_of(io)
    found = discovery.discover(run, model.proto, io, shapes)
    return found.io, found.problem


def parse_shapes(text: str | None) -> dict[str, tuple[int, ...]]:
    """`input_shapes = "images:1,3,640,640 mask:1,640"` (as --input-shape, space-separated)."""
    return dict(stated.parse_shape(part) for part in (text or "").split())


def warmup_sizes(max_batch_size: int) -> list[int]:
    """Powers of two up to the max, and the max: ONNX Runtime on CPU plans per shape once,
    so these cover the first-request stalls while keeping start-up short."""
    if max_batch_size <= 1:
        return [1]
    sizes = [1 << i for i in range(max_batch_size.bit_length()) if 1 << i < max_batch_size]
    return [*sizes, max_batch_size]


def warm_up(runner: Runner, sizes: list[int], seq_len: int) -> dict[int, float]:
    """Run each batch size twice (the first run plans and allocates); return the second run's
    seconds per batch size, the batcher's first latency estimates. Sizes past the first that
    fail are left to the first real request."""
    seconds: dict[int, float] = {}
    for size in sizes:
        try:
            inputs = runner.io.sample_inputs(batch=size, seq=seq_len)
        except InferoptError as exc:
            raise ServeError(first_line(exc)) from exc
        try:
            runner.run(inputs, RunControl())
        except ServeError:
            if not seconds:
                raise
            break
        start = time.perf_counter()
        runner.run(inputs, RunControl())
        seconds[size] = time.perf_counter() - start
    return seconds
