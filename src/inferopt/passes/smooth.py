"""Activation smoothing before INT8 (the SmoothQuant idea: Xiao et al., 2023).

Transformer activations have a few channels with values 10-100x the rest; quantized per tensor,
those outliers spend the int8 range and the other channels round to a handful of levels. For
each MatMul with constant weights W[K, N] and input X[..., K], a per-channel scale
s_k = max|X_k|^alpha / max|W_k|^(1 - alpha) moves the outliers into the weights:
X W = (X / s)(s W). The weights absorb the scale (and are quantized per output channel); X / s
is one elementwise Mul, so the model stays exactly equivalent in float."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from inferopt.data import Dataset
from inferopt.errors import InputError
from inferopt.model import Model
from inferopt.passes.base import Pass, PassContext, PassResult, Tolerance, copy_proto
from inferopt.passes.calibrate import CalibrationConfig, activation_stream


@dataclass(frozen=True)
class Smooth(Pass):
    alpha: float = 0.75  # 0: all difficulty left in activations; 1: all moved into weights
    samples: int = 64
    name = "smooth"
    needs_weights_in_memory = True
    search = ({"alpha": 0.5}, {"alpha": 0.75})
    tolerance = Tolerance(atol=1e-3, rtol=1e-2)  # float re-association only

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.samples < 1:
            raise ValueError("samples must be >= 1")

    def run(self, model: Model, context: PassContext) -> PassResult:
        targets = _targets(model.proto)
        if not targets:
            raise InputError(f"{model.name}: no MatMul with constant weights to smooth")
        data = context.calibration or Dataset(context.verification)
        data.check_against(model.io)
        absmax = channel_absmax(
            model.proto, data, sorted({n.input[0] for n in targets}), self.samples
        )
        proto = copy_proto(model.proto)
        smoothed = _rewrite(proto, absmax, self.alpha)
        return PassResult(proto, {"smoothed_matmuls": smoothed, "alpha": self.alpha})


SMOOTHED_OPS = ("MatMul", "Attention")  # both compute input[0] @ input[1] with constant weights


def _targets(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    initializers = {i.name for i in proto.graph.initializer}
    return [n for n in proto.graph.node if n.op_type in SMOOTHED_OPS and n.input[1] in initializers]


def channel_absmax(
    proto: onnx.ModelProto, data: Dataset, tensors: list[str], samples: int
) -> dict[str, np.ndarray]:
    """max |x| per last-axis channel of each tensor over the samples, streamed."""
    config = CalibrationConfig(max_samples=samples, batch_size=1)
    absmax: dict[str, np.ndarray] = {}
    for batch in activation_stream(proto, tensors, data, config):
        for name, values in batch.items():
            channel = np.abs(values.reshape(-1, values.shape[-1])).max(axis=0)
            absmax[name] = np.maximum(absmax[name], channel) if name in absmax else channel
    return absmax


def _rewrite(proto: onnx.ModelProto, absmax: dict[str, np.ndarray], alpha: float) -> int:
    graph = proto.graph
    initializers = {i.name: i for i in graph.initializer}
    # A weight read by another node too (a tied embedding's table, read by the lm_head's
    # MatMul and, transposed, by the embedding Gather) cannot be rescaled for one reader.
    readers = Counter(name for node in graph.node for name in node.input)
    nodes: list[onnx.NodeProto] = []
    count = 0
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type in SMOOTHED_OPS else None
        if weight is not None and readers[weight.name] == 1 and node.input[0] in absmax:
            w = numpy_helper.to_array(weight)
            scale = _scale(absmax[node.input[0]], w, alpha)
            weight.CopyFrom(
                numpy_helper.from_array((w * scale[:, None]).astype(w.dtype), weight.name)
            )
            inverse = f"{node.name}_smooth_inv"
            graph.initializer.append(
                numpy_helper.from_array((1.0 / scale).astype(w.dtype), inverse)
            )
            smoothed = f"{node.name}_smoothed_input"
            nodes.append(
                helper.make_node(
                    "Mul", [node.input[0], inverse], [smoothed], name=f"{node.name}_smooth"
                )
            )
            node.input[0] = smoothed
            count += 1
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def _scale(act_absmax: np.ndarray, weight: np.ndarray, alpha: float) -> np.ndarray:
    w_absmax = np.abs(weight).max(axis=1)
    scale = np.power(np.maximum(act_absmax, 1e-5), alpha) / np.power(
        np.maximum(w_absmax, 1e-5), 1 - alpha
    )
    clipped: np.ndarray = np.clip(scale, 1e-5, 1e5).astype(np.float32)
    return clipped
