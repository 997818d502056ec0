"""This machine's limits, and how close a model gets to them.

The peaks are measured with ONNX Runtime itself, because the model runs on ORT's kernels and the
vendor's datasheet figure is not what those kernels reach: fp32 from a MatMul, int8 from a
MatMulInteger (uint8 x int8, the layout ORT's dynamic quantization produces), memory bandwidth
from a ReduceSum streaming a tensor larger than the caches. Each is the best run over a few
sizes and thread counts: a peak is what the machine can do, and the fastest run is the one that
other processes disturbed least. Measured once per hardware fingerprint and cached.
"""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from inferopt.cache import cache_dir
from inferopt.hardware import HardwareInfo
from inferopt.report.schema import Compute, MachinePeaks, RooflinePoint
from inferopt.runtime import SessionConfig, create_session

CACHE_VERSION = 1  # bump when the method below changes: old cached peaks are then ignored
GEMM_SIZES = (512, 1024)  # square; big enough to reach the kernel's steady state
BANDWIDTH_ELEMENTS = 64 * 2**20  # float32: 256 MiB, beyond any L3 cache
BUDGET_S = 0.4  # per size and thread count
METHOD = (
    "best run of ONNX Runtime MatMul (fp32) and MatMulInteger (uint8 x int8) at n=512 and 1024 "
    "with 1 and all usable threads; bandwidth: ReduceSum over 256 MiB of float32"
)


def machine_peaks(hw: HardwareInfo, *, remeasure: bool = False) -> MachinePeaks:
    """The cached peaks for this machine's fingerprint, measured first if absent."""
    path = cache_dir("roofline") / f"{hw.fingerprint()}-v{CACHE_VERSION}.json"
    if path.is_file() and not remeasure:
        try:
            return dataclasses.replace(_read(path), from_cache=True)
        except (ValueError, KeyError, TypeError):
            pass  # a damaged cache file is measured again and overwritten
    peaks = measure_peaks(hw)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(dataclasses.asdict(peaks)))
    partial.replace(path)  # atomic: a killed run never leaves half a file
    return peaks


def _read(path: Path) -> MachinePeaks:
    data: dict[str, Any] = json.loads(path.read_text())
    return MachinePeaks(**data)


def measure_peaks(hw: HardwareInfo) -> MachinePeaks:
    thread_counts = sorted({1, hw.usable_cores})
    return MachinePeaks(
        fp32_flops_per_s=_gemm_peak(thread_counts, integer=False),
        int8_ops_per_s=_gemm_peak(thread_counts, integer=True),
        bandwidth_bytes_per_s=_bandwidth(hw.usable_cores),
        fingerprint=hw.fingerprint(),
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
        from_cache=False,
        method=METHOD,
    )


def gemm_model(n: int, *, integer: bool) -> onnx.ModelProto:
    """Y = A @ B with B a constant n x n weight, as a model quantized by ORT would run it."""
    rng = np.random.default_rng(0)
    weight: np.ndarray
    if integer:
        weight = rng.integers(-128, 128, size=(n, n), dtype=np.int8)
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        weight = rng.standard_normal((n, n), dtype=np.float32)
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph(
        [node],
        f"gemm{n}",
        [helper.make_tensor_value_info("A", a_type, [n, n])],
        [helper.make_tensor_value_info("Y", y_type, [n, n])],
        [numpy_helper.from_array(weight, "B")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _gemm_peak(thread_counts: list[int], *, integer: bool) -> float:
    best = 0.0
    for n in GEMM_SIZES:
        rng = np.random.default_rng(1)
        a: np.ndarray = (
            rng.integers(0, 256, (n, n), dtype=np.uint8)
            if integer
            else rng.random((n, n), np.float32)
        )
        for threads in thread_counts:
            session = create_session(
                gemm_model(n, integer=integer), SessionConfig(intra_op_threads=threads)
            )
            best = max(best, 2 * n**3 / _best_seconds(session, {"A": a}))
    return best


def _bandwidth(threads: int) -> float:
    x = np.random.default_rng(2).random(BANDWIDTH_ELEMENTS, dtype=np.float32)
    node = helper.make_node("ReduceSum", ["X"], ["Y"], keepdims=0)
    graph = helper.make_graph(
        [node],
        "stream",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [BANDWIDTH_ELEMENTS])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = create_session(model, SessionConfig(intra_op_threads=threads))
    return x.nbytes / _best_seconds(session, {"X": x})


def _best_seconds(session: Any, feeds: dict[str, np.ndarray]) -> float:
    for _ in range(2):  # warm-up: first runs allocate and pick kernels
        session.run(None, feeds)
    best = float("inf")
    runs = 0
    deadline = time.perf_counter() + BUDGET_S
    while runs < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        session.run(None, feeds)
        best = min(best, time.perf_counter() - start)
        runs += 1
    return best


def roofline_point(compute: Compute, latency_s: float, peaks: MachinePeaks) -> RooflinePoint:
    """Where a run of `compute` FLOPs in `latency_s` seconds sits against the machine's roofs."""
    flops = compute.total_flops
    traffic = max(compute.traffic_bytes, 1)
    achieved = flops / latency_s
    return RooflinePoint(
        achieved_flops_per_s=achieved,
        fraction_of_fp32_peak=achieved / peaks.fp32_flops_per_s,
        fraction_of_int8_peak=achieved / peaks.int8_ops_per_s,
        compute_floor_fp32_ms=1e3 * flops / peaks.fp32_flops_per_s,
        compute_floor_int8_ms=1e3 * flops / peaks.int8_ops_per_s,
        memory_floor_ms=1e3 * traffic / peaks.bandwidth_bytes_per_s,
        intensity_flops_per_byte=flops / traffic,
    )
