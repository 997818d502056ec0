"""Turn the pipeline's raw results into a `Measurement`: per-point statistics, roofline, energy
and cost, the best throughput, and the warnings a reader should see next to the figures."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from inferopt.hardware import HardwareInfo
from inferopt.measure.config import Point, ProfileConfig
from inferopt.measure.energy import energy_figures, energy_note
from inferopt.measure.latency import RunRecord
from inferopt.measure.roofline import roofline_point
from inferopt.measure.size import size_figures
from inferopt.measure.stats import latency_stats
from inferopt.model import Model
from inferopt.report.schema import (
    BestThroughput,
    Compute,
    CostBasis,
    MachineInfo,
    MachinePeaks,
    Measurement,
    MemoryFigures,
    ModelInfo,
    OpBreakdown,
    PointRatio,
    PointResult,
    ThreadSweep,
)

BUSY_LOAD_FRACTION = 0.5  # a 1-minute load average above this share of the cores means noise


@dataclass(frozen=True)
class Machine:
    hw: HardwareInfo
    load_average: float | None  # 1-minute, taken before measuring


def assemble_measurement(
    *,
    model: Model,
    points: Sequence[Point],
    reference: Point,
    records: Sequence[RunRecord],
    computes: Sequence[Compute],
    sweep: ThreadSweep,
    ops: OpBreakdown,
    memory: MemoryFigures | None,
    peaks: MachinePeaks,
    config: ProfileConfig,
    machine: Machine,
    warnings: Sequence[str],
) -> Measurement:
    results = tuple(
        _point_result(point, record, compute, sweep.best_threads, peaks, config, memory, index)
        for index, (point, record, compute) in enumerate(
            zip(points, records, computes, strict=True)
        )
    )
    best = max(results, key=lambda r: r.throughput_per_s)
    method = results[0].energy.method
    return Measurement(
        model=_model_info(model),
        machine=MachineInfo(
            fingerprint=machine.hw.fingerprint(),
            usable_cores=machine.hw.usable_cores,
            load_average_1m=machine.load_average,
            hardware=_plain(machine.hw.to_json()),
        ),
        config=_plain(config.to_json()),
        size=size_figures(model),
        points=results,
        best_throughput=BestThroughput(best.batch, best.seq, best.throughput_per_s),
        compute=computes[list(points).index(reference)],
        threads=sweep,
        ops=ops,
        memory=memory,
        peaks=peaks,
        cost=CostBasis(
            price_per_hour=config.price_per_hour,
            watts_per_core=config.watts_per_core,
            energy_method=method,
            energy_note=energy_note(method, config.watts_per_core),
        ),
        warnings=(
            *_busy(machine),
            *sweep.warnings,
            *_unstable(results, config),
            *_above_peak(results, peaks),
            *warnings,
        ),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def _plain(data: dict[str, Any]) -> dict[str, Any]:
    """As it reads back from JSON (tuples become lists), so a record equals its round trip."""
    plain: dict[str, Any] = json.loads(json.dumps(data))
    return plain


def _point_result(
    point: Point,
    record: RunRecord,
    compute: Compute,
    threads: int,
    peaks: MachinePeaks,
    config: ProfileConfig,
    memory: MemoryFigures | None,
    index: int,
) -> PointResult:
    batch, seq = point
    stats = latency_stats(
        record.wall_s,
        warmup_runs=record.warmup_runs,
        stop_reason=record.stop_reason,
        measured_s=record.measured_s,
        target_ci_pct=config.target_ci_pct,
        keep_samples=config.keep_samples,
    )
    latency_s = stats.p50_ms / 1e3
    energy = energy_figures(
        items=len(record.wall_s) * batch,
        cpu_s=sum(record.cpu_s),
        rapl_j=sum(record.energy_j) if record.energy_j is not None else None,
        wall_s_per_item=latency_s / batch,
        watts_per_core=config.watts_per_core,
        price_per_hour=config.price_per_hour,
    )
    return PointResult(
        batch=batch,
        seq=seq,
        threads=threads,
        latency=stats,
        throughput_per_s=batch / latency_s,
        flops=compute.total_flops,
        roofline=roofline_point(compute, latency_s, peaks),
        energy=energy,
        memory=memory.points[index] if memory is not None else None,
    )


def _model_info(model: Model) -> ModelInfo:
    return ModelInfo(
        name=model.name,
        source=model.provenance.source,
        kind=model.provenance.kind,
        inputs=tuple(t.describe() for t in model.io.inputs),
        outputs=tuple(t.describe() for t in model.io.outputs),
        batch_axis=model.io.batch_axis,
        seq_axis=model.io.seq_axis,
    )


def _busy(machine: Machine) -> tuple[str, ...]:
    load, cores = machine.load_average, machine.hw.usable_cores
    if load is None or load <= BUSY_LOAD_FRACTION * cores:
        return ()
    return (
        f"machine busy before measuring (load average {load:.1f} on {cores} usable cores): "
        "other processes compete for the CPU, expect wider intervals and slower figures",
    )


def _unstable(results: Sequence[PointResult], config: ProfileConfig) -> tuple[str, ...]:
    return tuple(
        f"batch {r.batch}" + (f", seq {r.seq}" if r.seq else "") + f": median's 95% CI is "
        f"±{r.latency.ci95_halfwidth_pct:.2f}% after {r.latency.runs} runs "
        f"({r.latency.stop_reason}; target ±{config.target_ci_pct:g}%)"
        for r in results
        if not r.latency.stable
    )


def _above_peak(results: Sequence[PointResult], peaks: MachinePeaks) -> tuple[str, ...]:
    fastest = max(r.roofline.fraction_of_fp32_peak for r in results)
    if fastest <= 1.0:
        return ()
    return (
        f"the model ran at {fastest:.2f}x the cached fp32 peak (measured {peaks.measured_at}), "
        "which was measured low, probably on a busy machine: re-measure with --remeasure-peaks",
    )


def point_ratio(first: PointResult, second: PointResult) -> PointRatio:
    """Second over first. The bounds divide the CIs' opposite ends: conservative, since the
    two intervals hold at 95% each."""
    a, b = first.latency, second.latency
    mem_a = first.memory.peak_added_bytes if first.memory else 0
    mem_b = second.memory.peak_added_bytes if second.memory else 0
    return PointRatio(
        batch=first.batch,
        seq=first.seq,
        p50_ratio=b.p50_ms / a.p50_ms,
        p50_ratio_low=b.ci95_low_ms / a.ci95_high_ms,
        p50_ratio_high=b.ci95_high_ms / a.ci95_low_ms,
        throughput_ratio=second.throughput_per_s / first.throughput_per_s,
        peak_memory_ratio=mem_b / mem_a if mem_a > 0 and mem_b > 0 else None,
    )
