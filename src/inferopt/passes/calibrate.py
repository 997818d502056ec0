"""Activation ranges for static INT8, in bounded memory.

ONNX Runtime's entropy and percentile calibrators keep every activation of every calibration
sample until the end, which for BERT-sized models runs to hundreds of GB. Here each batch's
activations are reduced as they arrive: a first pass keeps each tensor's running min/max; for
entropy and percentile a second pass fills a fixed-size histogram of |x| per tensor. Memory is
one batch of activations plus (tensors x bins) counters, whatever the number of samples. The
KL-divergence threshold search is written here for that reason (ORT's needs all the data)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx

from inferopt.data import Dataset
from inferopt.runtime import SessionConfig, create_session

Method = Literal["minmax", "entropy", "percentile"]
QUANT_LEVELS = 128  # int8 magnitude levels a threshold is spread over


@dataclass(frozen=True)
class CalibrationConfig:
    method: Method = "minmax"
    percentile: float = 99.999
    bins: int = 2048
    max_samples: int = 128
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.method not in ("minmax", "entropy", "percentile"):
            raise ValueError(
                f"calibration method must be minmax, entropy or percentile, not {self.method!r}"
            )
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError("percentile must be in (50, 100]")
        if self.bins < 2 * QUANT_LEVELS or self.max_samples < 1 or self.batch_size < 1:
            raise ValueError(f"bins must be >= {2 * QUANT_LEVELS}; samples and batch size >= 1")


def float_tensors(proto: onnx.ModelProto) -> list[str]:
    """Every float activation: graph inputs and node outputs that are float32 (after shape
    inference), not initializers."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    graph = inferred.graph
    typed = {
        v.name: v.type.tensor_type.elem_type
        for v in (*graph.input, *graph.value_info, *graph.output)
    }
    initializers = {i.name for i in graph.initializer}
    names = [i.name for i in graph.input] + [o for n in graph.node for o in n.output]
    return [
        n
        for n in dict.fromkeys(names)
        if n and n not in initializers and typed.get(n) == onnx.TensorProto.FLOAT
    ]


def _augmented(proto: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    existing = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in existing:
            model.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    return model


def activation_stream(
    proto: onnx.ModelProto, tensors: list[str], data: Dataset, config: CalibrationConfig
) -> Iterator[dict[str, np.ndarray]]:
    """Each batch's values of `tensors`, one batch at a time, never keeping more than one.
    Re-iterable: each call runs the data again."""
    # No graph optimizations: fused kernels would hide the tensors being calibrated.
    session = create_session(
        _augmented(proto, tensors), SessionConfig(graph_optimization="disable")
    )
    subset = data.subset(range(min(config.max_samples, len(data))))
    for feed in subset.batches(config.batch_size):
        yield dict(zip(tensors, session.run(tensors, feed), strict=True))


def collect_ranges(
    proto: onnx.ModelProto,
    data: Dataset,
    config: CalibrationConfig,
    tensors: list[str] | None = None,
) -> dict[str, tuple[float, float]]:
    """(low, high) per float tensor, by the configured method."""
    tensors = tensors if tensors is not None else float_tensors(proto)
    low = {t: np.inf for t in tensors}
    high = {t: -np.inf for t in tensors}
    for batch in activation_stream(proto, tensors, data, config):
        for name, values in batch.items():
            if values.size:
                low[name] = min(low[name], float(values.min()))
                high[name] = max(high[name], float(values.max()))
    ranges = {t: (low[t], high[t]) for t in tensors if np.isfinite(low[t])}
    if config.method == "minmax":
        return ranges
    histograms = _histograms(activation_stream(proto, tensors, data, config), ranges, config.bins)
    return {t: _clip(ranges[t], _threshold(h, edge, config)) for t, (h, edge) in histograms.items()}


def _histograms(
    stream: Iterator[dict[str, np.ndarray]], ranges: dict[str, tuple[float, float]], bins: int
) -> dict[str, tuple[np.ndarray, float]]:
    """Histogram of |x| over [0, max |x|] per tensor, and its upper edge."""
    edges = {t: max(abs(lo), abs(hi), 1e-12) for t, (lo, hi) in ranges.items()}
    counts = {t: np.zeros(bins, dtype=np.int64) for t in ranges}
    for batch in stream:
        for name, values in batch.items():
            if name in counts:
                h, _ = np.histogram(np.abs(values), bins=bins, range=(0.0, edges[name]))
                counts[name] += h
    return {t: (counts[t], edges[t]) for t in counts}


def _clip(full: tuple[float, float], threshold: float) -> tuple[float, float]:
    low, high = full
    return (max(low, -threshold), min(high, threshold))


def _threshold(hist: np.ndarray, edge: float, config: CalibrationConfig) -> float:
    width = edge / len(hist)
    if hist.sum() == 0:
        return edge
    if config.method == "percentile":
        cdf = np.cumsum(hist) / hist.sum()
        index = int(np.searchsorted(cdf, config.percentile / 100.0))
        return float(min(index + 1, len(hist)) * width)
    return float(_kl_best_bin(hist) * width)


def _kl_best_bin(hist: np.ndarray) -> int:
    """The histogram cut-off whose int8 quantization loses least information (KL divergence
    between the clipped distribution and its QUANT_LEVELS-level quantization)."""
    hist = hist.astype(np.float64)
    best, best_kl = len(hist), np.inf
    step = max(1, (len(hist) - QUANT_LEVELS) // 128)  # 128 candidates: enough resolution
    for cut in range(QUANT_LEVELS, len(hist) + 1, step):
        reference = hist[:cut].copy()
        reference[-1] += hist[cut:].sum()  # outliers are clipped into the last bin
        kl = _kl(reference, _quantized(hist[:cut]))
        if kl < best_kl:
            best, best_kl = cut, kl
    return best


def _quantized(hist: np.ndarray) -> np.ndarray:
    """Merge the bins into QUANT_LEVELS groups and spread each group's mass back evenly over
    its non-empty bins."""
    groups = np.array_split(np.arange(len(hist)), QUANT_LEVELS)
    out = np.zeros_like(hist)
    for idx in groups:
        nonzero = hist[idx] > 0
        if nonzero.any():
            out[idx[nonzero]] = hist[idx].sum() / nonzero.sum()
    return out


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p = p / p.sum()
    q = q / max(q.sum(), 1e-12)
    mask = p > 0
    q_safe = np.where(q[mask] > 0, q[mask], 1e-12)
    return float(np.sum(p[mask] * np.log(p[mask] / q_safe)))
