"""PyTorch module -> ONNX Model, with dynamic batch and sequence axes and a parity check.

The dynamo exporter (torch.export) is tried first; where it cannot capture the module we fall
back to the TorchScript exporter and record why. Either way the result is run side by side
with the module on a batch size and sequence length unlike the example's, because both
exporters can silently turn a dynamic size into a constant."""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import logging
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch

from inferopt import parity
from inferopt.errors import ExportError, InputError, ParityError, first_line
from inferopt.iospec import IOSpec, sample, suspect_input
from inferopt.model import Model, Provenance, from_proto

Exporter = Literal["auto", "dynamo", "torchscript"]
# Exporter failures: the innermost cause, named (torch.onnx wraps it in a generic error).
_why = functools.partial(first_line, named=True, innermost=True)


@dataclass(frozen=True)
class ExportConfig:
    exporter: Exporter = "auto"
    opset: int | None = None  # None: the exporter's default
    batch_axis: int | None = 0  # None: a model with no batch axis
    seq_axis: int | Literal["auto"] | None = "auto"  # auto: 1 when inputs are rank-2 int ids
    output_names: tuple[str, ...] | None = None  # None: "output", or output_0, output_1, ...
    check_parity: bool = True
    parity_batch: int = 3
    parity_seq: int = 57
    atol: float = 1e-4
    rtol: float = 1e-3

    def __post_init__(self) -> None:
        if self.exporter not in ("auto", "dynamo", "torchscript"):
            raise ValueError(f"exporter must be auto, dynamo or torchscript, not {self.exporter!r}")
        if self.parity_batch < 1 or self.parity_seq < 1:
            raise ValueError("parity_batch and parity_seq must be >= 1")
        if self.atol < 0 or self.rtol < 0:
            raise ValueError("atol and rtol must be >= 0")


def export_module(
    module: torch.nn.Module,
    example_inputs: dict[str, torch.Tensor] | tuple[torch.Tensor, ...] | torch.Tensor,
    config: ExportConfig | None = None,
    *,
    source: str | None = None,
    kind: str = "torch",
) -> Model:
    """Export `module` to ONNX and check it agrees with the module on other shapes."""
    config = config or ExportConfig()
    label = source or type(module).__name__
    feeds = _named_inputs(module, example_inputs)
    seq_axis = _resolve_seq_axis(config, feeds)
    was_training = module.training
    module.eval()
    try:
        proto, exporter, note = _export(module, feeds, config, seq_axis, label)
        names = config.output_names or _default_output_names(len(proto.graph.output))
        _rename_outputs(proto, names, label)
        provenance = Provenance(label, kind, exporter, note)
        model = from_proto(proto, provenance)
        model = model.with_io(_io_from_examples(model.io, feeds, config.batch_axis, seq_axis))
        # What the examples do not tell (a mask's convention, an id table's size) is found
        # from the graph and by running it, so generated inputs are valid for the model.
        model = model.with_found_inputs(adapt_axes=False)  # parity checks the axes
        if config.check_parity:
            report = check_against_module(model, module, config, feeds, label)
            model = replace(model, provenance=replace(provenance, parity=report))
        return model
    finally:
        module.train(was_training)


def check_against_module(
    model: Model,
    module: torch.nn.Module,
    config: ExportConfig,
    examples: dict[str, torch.Tensor],
    label: str,
) -> parity.ParityReport:
    """Run module and ONNX model on a shape unlike the examples'; raise ParityError if they
    disagree (or the ONNX model cannot run that shape at all).

    Shapes come from the examples with the batch and sequence axes changed, never from the
    ONNX graph's declared shapes: a baked-in dim there is exactly what this must catch."""
    batch, seq = _parity_shape(model.io, examples, config)
    inputs = _parity_inputs(model.io, examples, batch, seq)
    where = f"batch {batch}" + (f", sequence length {seq}" if seq else "")
    try:
        with torch.no_grad():
            reference = _flatten(module(**{k: torch.from_numpy(v) for k, v in inputs.items()}))
    except Exception as exc:  # the module itself is not shape-polymorphic on these axes
        raise ExportError(
            f"{label}: the module itself fails at {where} ({_why(exc)}); if its batch or "
            "sequence size is fixed, export with batch_axis/seq_axis set to None"
        ) from exc
    expected = dict(zip(model.io.output_names, reference, strict=True))
    try:
        got = model.run(inputs)
    except Exception as exc:  # ORT errors are untyped; any failure here is a parity failure
        raise ParityError(
            f"{label}: the ONNX model fails at {where} although the module runs: "
            f"{_why(exc)}; the exporter baked in a shape seen in the example inputs"
        ) from exc
    report = parity.compare_outputs(
        expected, got, atol=config.atol, rtol=config.rtol, batch=batch, seq=seq
    )
    parity.require(report, label, suspect_input(model.io))
    return report


def _parity_inputs(
    io_spec: IOSpec, examples: dict[str, torch.Tensor], batch: int, seq: int | None
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    inputs = {}
    for spec in io_spec.inputs:
        shape = list(examples[spec.name].shape)
        if io_spec.batch_axis is not None and len(shape) > io_spec.batch_axis:
            shape[io_spec.batch_axis] = batch
        if seq is not None and io_spec.seq_axis is not None and len(shape) > io_spec.seq_axis:
            shape[io_spec.seq_axis] = seq
        inputs[spec.name] = sample(spec, tuple(shape), rng)
    return inputs


def _named_inputs(
    module: torch.nn.Module, example_inputs: dict[str, torch.Tensor] | tuple[Any, ...] | Any
) -> dict[str, torch.Tensor]:
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if isinstance(example_inputs, dict):
        feeds = dict(example_inputs)
    else:
        params = [
            p.name
            for p in inspect.signature(module.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if len(example_inputs) > len(params):
            raise InputError(
                f"{type(module).__name__}.forward takes {len(params)} inputs, "
                f"{len(example_inputs)} example inputs given"
            )
        feeds = dict(zip(params, example_inputs, strict=False))
    for name, value in feeds.items():
        if not isinstance(value, torch.Tensor):
            raise InputError(f"example input {name!r} is a {type(value).__name__}, not a tensor")
    return feeds


def _resolve_seq_axis(config: ExportConfig, feeds: dict[str, torch.Tensor]) -> int | None:
    if config.seq_axis != "auto":
        return config.seq_axis
    token_like = all(t.dim() == 2 and not t.is_floating_point() for t in feeds.values())
    return 1 if token_like else None


def _dynamic_axes(
    feeds: dict[str, torch.Tensor], batch_axis: int | None, seq_axis: int | None
) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for name, tensor in feeds.items():
        axes[name] = {}
        if batch_axis is not None and tensor.dim() > batch_axis:
            axes[name][batch_axis] = "batch"
        if seq_axis is not None and tensor.dim() > seq_axis:
            axes[name][seq_axis] = "seq"
    return axes


def _export(
    module: torch.nn.Module,
    feeds: dict[str, torch.Tensor],
    config: ExportConfig,
    seq_axis: int | None,
    label: str,
) -> tuple[onnx.ModelProto, str, str | None]:
    axes = _dynamic_axes(feeds, config.batch_axis, seq_axis)
    if config.exporter in ("auto", "dynamo"):
        try:
            return _export_dynamo(module, feeds, axes, config.opset), "dynamo", None
        except Exception as exc:  # torch.export raises many types; all mean "try the other"
            if config.exporter == "dynamo":
                raise ExportError(f"{label}: the dynamo exporter failed: {_why(exc)}") from exc
            note = f"dynamo exporter failed ({_why(exc)}); used the TorchScript exporter"
    else:
        note = None
    try:
        return _export_torchscript(module, feeds, axes, config.opset), "torchscript", note
    except Exception as exc:
        raise ExportError(f"{label}: export to ONNX failed: {_why(exc)}") from exc


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters print progress and warnings meant for their own developers."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _export_dynamo(
    module: torch.nn.Module,
    feeds: dict[str, torch.Tensor],
    axes: dict[str, dict[int, str]],
    opset: int | None,
) -> onnx.ModelProto:
    dims = {"batch": torch.export.Dim("batch"), "seq": torch.export.Dim("seq")}
    shapes = {name: {axis: dims[d] for axis, d in a.items()} for name, a in axes.items()}
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            module, (), kwargs=feeds, dynamo=True, dynamic_shapes=shapes, opset_version=opset
        )
    if program is None:
        raise ExportError("the dynamo exporter returned no program")
    return program.model_proto


def _export_torchscript(
    module: torch.nn.Module,
    feeds: dict[str, torch.Tensor],
    axes: dict[str, dict[int, str]],
    opset: int | None,
) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as tmp, _quiet(), torch.no_grad():
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            module,
            tuple(feeds.values()),
            path,
            dynamo=False,
            input_names=list(feeds),
            dynamic_axes=axes,
            opset_version=opset or 17,
        )
        return onnx.load(str(path))


def _default_output_names(count: int) -> tuple[str, ...]:
    return ("output",) if count == 1 else tuple(f"output_{i}" for i in range(count))


def _rename_outputs(proto: onnx.ModelProto, names: tuple[str, ...], label: str) -> None:
    """Give graph outputs the requested names, moving aside any inner value already so named."""
    graph = proto.graph
    if len(names) != len(graph.output):
        raise ExportError(
            f"{label}: {len(names)} output names given but the model has {len(graph.output)}"
        )
    renames = {o.name: new for o, new in zip(graph.output, names, strict=True) if o.name != new}
    taken = {v for n in graph.node for v in n.output} | {i.name for i in graph.input}
    for clash in set(renames.values()) & taken - set(renames):
        renames[clash] = f"{clash}__inner"
    for node in graph.node:
        node.input[:] = [renames.get(v, v) for v in node.input]
        node.output[:] = [renames.get(v, v) for v in node.output]
    for value in list(graph.output) + list(graph.value_info):
        value.name = renames.get(value.name, value.name)


def _io_from_examples(
    io_spec: IOSpec,
    feeds: dict[str, torch.Tensor],
    batch_axis: int | None,
    seq_axis: int | None,
) -> IOSpec:
    """Axes as exported, and each input's value range taken from its examples, so generated
    inputs stay in the domain the model knows (token ids within the vocabulary, say)."""
    ranges = {}
    for name, tensor in feeds.items():
        values = tensor.detach().to(torch.float64)
        ranges[name] = (float(values.min()), float(values.max())) if values.numel() else (0, 1)
    return io_spec.with_axes(batch_axis, seq_axis).with_value_ranges(ranges)


def _parity_shape(
    io_spec: IOSpec, examples: dict[str, torch.Tensor], config: ExportConfig
) -> tuple[int, int | None]:
    first = next(iter(examples.values()))
    batch, seq = config.parity_batch, config.parity_seq
    if io_spec.batch_axis is not None and first.shape[io_spec.batch_axis] == batch:
        batch += 1
    if io_spec.seq_axis is None:
        return batch, None
    if first.shape[io_spec.seq_axis] == seq:
        seq += 1
    return batch, seq


def _flatten(output: Any) -> list[np.ndarray]:
    if isinstance(output, torch.Tensor):
        return [output.detach().cpu().numpy()]
    if isinstance(output, dict):
        return [a for v in output.values() for a in _flatten(v)]
    if isinstance(output, list | tuple):
        return [a for v in output for a in _flatten(v)]
    raise ExportError(f"module returned a {type(output).__name__}; tensors are expected")
