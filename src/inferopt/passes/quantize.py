"""INT8 quantization with ONNX Runtime's quantizer: dynamic (weights int8, activations scaled
at run time) and static (QDQ, activation ranges calibrated here in bounded memory).

Signedness follows the CPU: without VNNI, ORT's u8s8 integer kernels add pairs of products in
16 bits and can saturate, which is why one model loses accuracy on one CPU and not another;
there weights default to uint8 (u8u8 kernels). With VNNI (or AMX) int8 weights are exact and
fast. Every default can be overridden.

Fused attention is never handed to ORT's quantizer whole: its QAttention drops the attention
bias that carries the padding mask (see passes/attention.py). Dynamic int8 splits each fused
Attention into a projection MatMul, which it quantizes, and a float MultiHeadAttention core
that keeps every mask; a node that cannot be split stays in float, and the report says which
and why."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
    save_tensors_data,
)
from onnxruntime.quantization.calibrate import TensorData, TensorsData

from inferopt import hardware
from inferopt.errors import InputError
from inferopt.model import Model, from_proto
from inferopt.passes import attention, sensitivity
from inferopt.passes.base import Pass, PassContext, PassResult, Tolerance, copy_proto
from inferopt.passes.calibrate import CalibrationConfig, Method, collect_ranges

Signedness = Literal["auto", "int8", "uint8"]
_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
# Gather (embedding tables) is left out: on minilm it saves 35 MB but costs ~1.5 points of
# nearest-neighbour agreement; add it with op_types=MatMul+Attention+Gather when size matters.
DYNAMIC_OPS = ("MatMul", "Gemm", "Attention")
STATIC_OPS = ("Conv", "MatMul", "Gemm")
# A sanity bound that catches a broken quantization; the fidelity a user cares about is
# measured on held-out data by the recipe runner, against their budget.
INT8_TOLERANCE = Tolerance(min_cosine=0.9)


def weight_type(choice: Signedness) -> QuantType:
    if choice == "auto":
        return QuantType.QInt8 if hardware.probe().has_vnni else QuantType.QUInt8
    return _TYPES[choice]


def _check_common(weights: str, fallback: float | None) -> None:
    if weights not in ("auto", *_TYPES):
        raise ValueError(f"weights must be auto, int8 or uint8, not {weights!r}")
    if fallback is not None and not 0.0 < fallback <= 1.0:
        raise ValueError(f"fallback is a target cosine in (0, 1], got {fallback}")


def quantizable_nodes(proto: onnx.ModelProto, op_types: tuple[str, ...]) -> list[str]:
    """Names of nodes of `op_types` with a constant (initializer) weight input."""
    initializers = {i.name for i in proto.graph.initializer}
    return [
        n.name
        for n in proto.graph.node
        if n.op_type in op_types and any(i in initializers for i in n.input[1:2])
    ]


def nothing_to_quantize(
    proto: onnx.ModelProto,
    op_types: tuple[str, ...],
    name: str,
    kept: dict[str, str] | None = None,
) -> str | None:
    """When no node would be quantized, the note that says so: the op types the pass takes,
    the weighted op types the model has instead (subgraphs included), and the Attention nodes
    left in float with the reason (`kept`); None when there is something to quantize."""
    if quantizable_nodes(proto, op_types):
        return None
    found = ", ".join(_weighted_op_types(proto)) or "none"
    why = "".join(f"; Attention {n!r} stays float: {r}" for n, r in (kept or {}).items())
    return (
        f"pass {name!r} changed nothing: it quantizes {', '.join(op_types) or 'nothing'} with "
        f"constant weights, and this model's weighted ops are {found}{why}"
    )


def unchanged(model: Model, context: PassContext, note: str) -> PassResult:
    """The model as it was, with the note on the console and in the report: a quantization
    that changes nothing is said, not raised (it is a fact about the model, not an error)."""
    context.notes.append(note)
    return PassResult(copy_proto(model.proto), {"changed": False, "note": note})


# Ops whose cost is in a weight (what a quantizer could take), to name the ones a model has.
WEIGHTED_OPS = frozenset(
    {"Conv", "ConvTranspose", "MatMul", "Gemm", "Attention", "LSTM", "GRU", "RNN", "Gather"}
)


def _weighted_op_types(proto: onnx.ModelProto) -> list[str]:
    """Weighted op types with a constant weight, in the main graph or (marked) in subgraphs."""
    constants = {i.name for i in proto.graph.initializer}
    found: dict[str, None] = {}

    def walk(graph: onnx.GraphProto, inside: bool) -> None:
        constants.update(i.name for i in graph.initializer)
        for node in graph.node:
            if node.op_type == "Constant":
                constants.update(node.output)
            weight = node.input[:1] if node.op_type == "Gather" else node.input[1:2]
            if node.op_type in WEIGHTED_OPS and set(weight) & constants:
                found[node.op_type + (" (in a subgraph)" if inside else "")] = None
            for attr in node.attribute:
                for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                    walk(sub, True)

    walk(proto.graph, False)
    return list(found)


def _quiet_ort_quantizer() -> None:
    # ORT's quantizer logs advice at WARNING on the root logger for every call.
    logging.getLogger().setLevel(logging.ERROR)


@dataclass(frozen=True)
class DynamicInt8(Pass):
    per_channel: bool = True
    weights: Signedness = "auto"
    reduce_range: bool = False
    op_types: tuple[str, ...] = DYNAMIC_OPS
    exclude: tuple[str, ...] = ()  # node names kept in float
    include: tuple[str, ...] = ()  # when set, only these nodes are quantized
    fallback: float | None = None  # target cosine: keep the most sensitive nodes in float
    name = "int8-dynamic"
    needs_weights_in_memory = True
    search = ({},)
    # Tried only when the plain variant misses the budget: the sensitivity scan is costly.
    fallback_targets = (0.999, 0.9997)
    tolerance = INT8_TOLERANCE

    def __post_init__(self) -> None:
        _check_common(self.weights, self.fallback)

    def run(self, model: Model, context: PassContext) -> PassResult:
        original = model
        model, options, split = self._split_attention(model, context)
        note = nothing_to_quantize(model.proto, options.op_types, self.name, split.kept)
        if note is not None:
            return unchanged(original, context, note)
        _quiet_ort_quantizer()

        def quantize(exclude: tuple[str, ...], include: tuple[str, ...]) -> onnx.ModelProto:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "q.onnx"
                quantize_dynamic(
                    model.proto,
                    out,
                    op_types_to_quantize=list(options.op_types),
                    per_channel=options.per_channel,
                    reduce_range=options.reduce_range,
                    weight_type=weight_type(options.weights),
                    nodes_to_quantize=list(include or options.include) or None,
                    nodes_to_exclude=list(options.exclude + exclude) or None,
                    # Values whose type ONNX shape inference cannot follow through contrib
                    # ops (an unpadded graph's packed tokens) are float activations.
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
                )
                return onnx.load(str(out))

        report: dict[str, object] = {"weight_type": weight_type(self.weights).name}
        if split.projections or split.kept:
            report["attention"] = {"split": split.projections, "kept_float": split.kept}
        return _with_fallback(model, context, quantize, options, report)

    def _split_attention(
        self, model: Model, context: PassContext
    ) -> tuple[Model, DynamicInt8, attention.Split]:
        """The model with its fused Attention nodes split (when Attention is among the op
        types), and these options restated for it."""
        if "Attention" not in self.op_types:
            return model, self, attention.Split(model.proto)
        split = attention.split_attention(model.proto)
        for node, reason in split.kept.items():
            context.notes.append(f"int8-dynamic: Attention {node!r} kept in float: {reason}")
        options = self._after_split(split, model.proto)
        if split.projections:
            model = from_proto(split.proto, model.provenance, verify=False).with_io(model.io)
        return model, options, split

    def _after_split(self, split: attention.Split, proto: onnx.ModelProto) -> DynamicInt8:
        """These options restated for the split model: Attention is left out of the op types
        (a node that could not be split stays in float), names given for split Attention
        nodes apply to their projections, and when MatMul was not asked for, only the
        projections are quantized among the MatMuls."""
        op_types = tuple(t for t in self.op_types if t != "Attention")
        exclude = tuple(split.projections.get(n, n) for n in self.exclude)
        include = tuple(split.projections.get(n, n) for n in self.include)
        if split.projections and "MatMul" not in op_types:
            op_types += ("MatMul",)
            others = quantizable_nodes(proto, ("MatMul",))
            exclude += tuple(n for n in others if n not in include)
        return replace(self, op_types=op_types, exclude=exclude, include=include)


@dataclass(frozen=True)
class StaticInt8(Pass):
    calibration: Method = "minmax"
    percentile: float = 99.999
    samples: int = 128
    per_channel: bool = True
    weights: Signedness = "auto"
    activations: Literal["int8", "uint8"] = "uint8"
    op_types: tuple[str, ...] = STATIC_OPS
    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    fallback: float | None = None  # target cosine: keep the most sensitive nodes in float
    name = "int8-static"
    needs_weights_in_memory = True
    search = ({"calibration": "minmax"}, {"calibration": "percentile"}, {"calibration": "entropy"})
    fallback_targets = (0.999, 0.9997)
    tolerance = INT8_TOLERANCE

    def __post_init__(self) -> None:
        CalibrationConfig(self.calibration, self.percentile, max_samples=self.samples)
        _check_common(self.weights, self.fallback)
        if self.activations not in _TYPES:
            raise ValueError(f"activations must be int8 or uint8, not {self.activations!r}")

    def run(self, model: Model, context: PassContext) -> PassResult:
        if context.calibration is None:
            raise InputError(
                f"{model.name}: static int8 needs calibration data (--data FILE.npz, or a zoo "
                "model's own data)"
            )
        context.calibration.check_against(model.io)
        note = nothing_to_quantize(model.proto, self.op_types, self.name)
        if note is not None:
            return unchanged(model, context, note)
        config = CalibrationConfig(self.calibration, self.percentile, max_samples=self.samples)
        ranges = collect_ranges(model.proto, context.calibration, config)
        _quiet_ort_quantizer()

        def quantize(exclude: tuple[str, ...], include: tuple[str, ...]) -> onnx.ModelProto:
            with tempfile.TemporaryDirectory() as tmp:
                return self._quantize(model.proto, ranges, Path(tmp), exclude, include)

        report = {
            "calibration": self.calibration,
            "calibrated_tensors": len(ranges),
            "weight_type": weight_type(self.weights).name,
        }
        return _with_fallback(model, context, quantize, self, report)

    def _quantize(
        self,
        proto: onnx.ModelProto,
        ranges: dict[str, tuple[float, float]],
        tmp: Path,
        exclude: tuple[str, ...],
        include: tuple[str, ...],
    ) -> onnx.ModelProto:
        cache = tmp / "ranges.json"
        data = {
            name: TensorData(lowest=np.float32(lo), highest=np.float32(hi))
            for name, (lo, hi) in ranges.items()
        }
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
        quantize_static(
            proto,
            tmp / "q.onnx",
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(self.op_types),
            per_channel=self.per_channel,
            activation_type=_TYPES[self.activations],
            weight_type=weight_type(self.weights),
            nodes_to_quantize=list(include or self.include) or None,
            nodes_to_exclude=list(self.exclude + exclude) or None,
            calibrate_method=CalibrationMethod.MinMax,
            calibration_cache_path=cache,
        )
        return onnx.load(str(tmp / "q.onnx"))


def _with_fallback(
    model: Model,
    context: PassContext,
    quantize: sensitivity.Quantizer,
    options: DynamicInt8 | StaticInt8,
    report: dict[str, object],
) -> PassResult:
    """Quantize everything, or, with a fallback target, keep the fewest most-sensitive nodes
    in float that meet it on the calibration samples. The ranking goes into the report."""
    if options.fallback is None:
        return PassResult(quantize((), ()), {**report, "excluded": list(options.exclude)})
    feeds = _sensitivity_feeds(model, context)
    candidates = [
        n
        for n in quantizable_nodes(model.proto, options.op_types)
        if n not in options.exclude and (not options.include or n in options.include)
    ]
    ranking = sensitivity.rank(model, candidates, quantize, feeds)
    kept, cosine = sensitivity.smallest_fallback(model, ranking, quantize, feeds, options.fallback)
    excluded = tuple(s.node for s in ranking[:kept])
    report = {
        **report,
        "excluded": list(options.exclude + excluded),
        "fallback_target": options.fallback,
        "fallback_cosine": round(cosine, 6),
        "sensitivity": [
            {"node": s.node, "op": s.op_type, "error": float(f"{s.error:.3g}")} for s in ranking
        ],
    }
    return PassResult(quantize(excluded, ()), report)


SENSITIVITY_SAMPLES = 32


def _sensitivity_feeds(model: Model, context: PassContext) -> list[dict[str, np.ndarray]]:
    if context.calibration is None:
        return list(context.verification)
    return context.calibration.spread(SENSITIVITY_SAMPLES)
