"""`profile(model, config)`: what a model costs to run on this machine, as a `Measurement`.

One straight line of named stages; `compare(a, b)` runs the same line over two models with their
timed runs interleaved (A, B, A, B, ...), so both see the same machine conditions:

  plan points -> shapes and FLOPs -> refuse what cannot fit in memory -> check the model accepts
  every shape -> machine peaks (cached) -> thread sweep -> latency per point -> op profile ->
  memory in fresh processes -> assemble.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import psutil

from inferopt import hardware
from inferopt.errors import InputError
from inferopt.hardware import HardwareInfo
from inferopt.measure import memory, threads
from inferopt.measure.assemble import Machine, assemble_measurement, point_ratio
from inferopt.measure.config import Point, ProfileConfig, plan_points, reference_point
from inferopt.measure.energy import open_rapl
from inferopt.measure.flops import count_compute
from inferopt.measure.graph import peak_live_activation_bytes, shaped_graph, weight_bytes
from inferopt.measure.latency import RunRecord, StopRule, make_runner, measure_interleaved
from inferopt.measure.opprofile import op_breakdown
from inferopt.measure.roofline import machine_peaks
from inferopt.model import Model
from inferopt.report.schema import (
    Comparison,
    Compute,
    Measurement,
    MemoryFigures,
    OpBreakdown,
    ThreadSweep,
)
from inferopt.runtime import SessionConfig, create_session


class Progress(Protocol):
    """Told what is being measured: a stage, units done out of total, and a detail line."""

    def __call__(self, stage: str, done: int, total: int, detail: str = "") -> None: ...


def _silent(stage: str, done: int, total: int, detail: str = "") -> None:
    pass


def profile(
    model: Model, config: ProfileConfig | None = None, progress: Progress | None = None
) -> Measurement:
    """Measure `model` on this machine: latency, throughput, threads, memory, size, FLOPs,
    roofline, per-op time, energy and cost."""
    return _profile_models([model], config or ProfileConfig(), progress or _silent)[0]


def compare(
    first: Model,
    second: Model,
    config: ProfileConfig | None = None,
    progress: Progress | None = None,
) -> Comparison:
    """Profile two models in one run with interleaved timings; ratios are second / first."""
    a, b = _profile_models([first, second], config or ProfileConfig(), progress or _silent)
    return Comparison(
        measurements=(a, b),
        ratios=tuple(point_ratio(pa, pb) for pa, pb in zip(a.points, b.points, strict=True)),
        size_ratio=b.size.serialized_bytes / a.size.serialized_bytes,
        flops_ratio=b.compute.total_flops / max(a.compute.total_flops, 1),
    )


def _profile_models(
    models: Sequence[Model], config: ProfileConfig, progress: Progress
) -> list[Measurement]:
    hw = hardware.probe()
    load_average = _load_average()
    points = _plan(models, config)
    reference = reference_point(points)
    shaped = [_shapes_and_flops(m, points, progress) for m in models]
    for model, per_point in zip(models, shaped, strict=True):
        _refuse_what_cannot_fit(model, points, per_point)
    _check_shapes(models, points, progress)
    progress("machine peaks (once, cached)", 0, 1)
    peaks = machine_peaks(hw, remeasure=config.remeasure_peaks)
    progress("machine peaks (once, cached)", 1, 1)
    sweeps = _sweep_threads(models, reference, config, hw, progress)
    used, thread_notes = _threads_used(models, sweeps)
    records = _measure_latency(models, points, used, config, progress)
    ops = [
        _op_profile(m, reference, t, config, progress) for m, t in zip(models, used, strict=True)
    ]
    memories, memory_warnings = _measure_memory(models, points, shaped, used, config, progress)
    return [
        assemble_measurement(
            model=models[i],
            points=points,
            reference=reference,
            records=records[i],
            computes=[one.compute for one in shaped[i]],
            sweep=sweeps[i],
            ops=ops[i],
            memory=memories[i],
            peaks=peaks,
            config=config,
            machine=Machine(hw, load_average),
            warnings=thread_notes[i] + memory_warnings[i],
        )
        for i in range(len(models))
    ]


@dataclass(frozen=True)
class Shaped:
    """What the graph's shapes at one point tell before anything runs."""

    compute: Compute
    weight_bytes: int
    activation_bytes: int  # the most bytes alive at once (see graph.peak_live_activation_bytes)


def _plan(models: Sequence[Model], config: ProfileConfig) -> tuple[Point, ...]:
    plans = [plan_points(m.io, config, m.name) for m in models]
    if any(p != plans[0] for p in plans):
        names = " and ".join(m.name for m in models)
        raise InputError(f"cannot compare {names}: they take different shapes (batch/sequence)")
    return plans[0]


def _shapes_and_flops(model: Model, points: Sequence[Point], progress: Progress) -> list[Shaped]:
    result = []
    for done, (batch, seq) in enumerate(points):
        progress(f"shapes and FLOPs: {model.name}", done, len(points))
        graph = shaped_graph(model, batch, seq)
        activations, _known = peak_live_activation_bytes(graph)
        result.append(Shaped(count_compute(graph, batch, seq), weight_bytes(graph), activations))
    progress(f"shapes and FLOPs: {model.name}", len(points), len(points))
    return result


def _refuse_what_cannot_fit(model: Model, points: Sequence[Point], shaped: list[Shaped]) -> None:
    available = _available_memory()
    for (batch, seq), one in zip(points, shaped, strict=True):
        needed = one.weight_bytes + one.activation_bytes
        if needed > available:
            shape = f"batch {batch}" + (f" with --seq-lens {seq}" if seq else "")
            raise InputError(
                f"--batch-sizes {batch}: {model.name} needs an estimated {_gib(needed)} at "
                f"{shape} (weights plus live activations), more than the {_gib(available)} "
                "of memory available"
            )


def _check_shapes(models: Sequence[Model], points: Sequence[Point], progress: Progress) -> None:
    """Run each batch size once at the shortest sequence and each sequence length once at the
    smallest batch, so a rejected shape fails in seconds with the flag that chose it."""
    small_batch, short_seq = points[0]
    checks: dict[Point, str] = {(small_batch, s): f"--seq-lens {s}" for _, s in points if s}
    checks.update({(b, short_seq): f"--batch-sizes {b}" for b, _ in points})
    for model in models:
        session = create_session(model.proto, SessionConfig(intra_op_threads=1), label=model.name)
        for done, ((batch, seq), flag) in enumerate(checks.items()):
            progress(f"checking shapes: {model.name}", done, len(checks))
            feeds = model.io.sample_inputs(batch, seq or 1)
            label = f"{flag} ({model.name} at batch {batch}" + (f", seq {seq})" if seq else ")")
            make_runner(session, feeds, label)()
        progress(f"checking shapes: {model.name}", len(checks), len(checks))


def _sweep_threads(
    models: Sequence[Model],
    point: Point,
    config: ProfileConfig,
    hw: HardwareInfo,
    progress: Progress,
) -> list[ThreadSweep]:
    tried = threads.candidates(config.threads, hw.usable_cores)
    rule = _rule(config, min_time_s=0.0, max_time_s=config.sweep_time_s)
    stage = f"thread sweep {', '.join(map(str, tried))}"

    def on_check(runs: int, ci: float) -> None:
        progress(stage, 0, 1, f"{runs} runs each, CI ±{ci:.1f}%")

    sweeps = threads.sweep(
        models, point, tried, rule, hw=hw, sessions=config.concurrent_sessions,
        seed=config.seed, on_check=on_check,
    )  # fmt: skip
    progress(stage, 1, 1)
    return sweeps


def _threads_used(
    models: Sequence[Model], sweeps: Sequence[ThreadSweep]
) -> tuple[list[int], list[tuple[str, ...]]]:
    """A model alone runs at its best count; compared models all run at the first one's. Run
    by run interleaved, sessions with different thread pools disturb each other on a busy
    machine, and one setting keeps the ratios about the models."""
    first = sweeps[0].best_threads
    notes: list[tuple[str, ...]] = [()]
    for model, sweep in zip(models[1:], sweeps[1:], strict=True):
        differs = sweep.best_threads != first
        notes.append(
            (f"compared at {first} intra-op threads, the first model's best; alone, "
             f"{model.name} was fastest at {sweep.best_threads}",) if differs else ()
        )  # fmt: skip
    return [first] * len(models), notes


def _measure_latency(
    models: Sequence[Model],
    points: Sequence[Point],
    thread_counts: Sequence[int],
    config: ProfileConfig,
    progress: Progress,
) -> list[list[RunRecord]]:
    """Per model, per point: the timed runs, interleaved across models at each point."""
    sessions = [
        create_session(m.proto, SessionConfig(intra_op_threads=t), label=m.name)
        for m, t in zip(models, thread_counts, strict=True)
    ]
    rule = _rule(
        config, min_time_s=config.min_time_per_point_s, max_time_s=config.max_time_per_point_s
    )
    rapl = open_rapl()
    records: list[list[RunRecord]] = [[] for _ in models]
    for done, (batch, seq) in enumerate(points):
        where = f"batch {batch}" + (f", seq {seq}" if seq else "")
        runners = [
            make_runner(s, m.io.sample_inputs(batch, seq or 1, config.seed), f"{m.name} {where}")
            for m, s in zip(models, sessions, strict=True)
        ]

        def on_check(runs: int, ci: float, where: str = where, done: int = done) -> None:
            progress("latency", done, len(points), f"{where}: {runs} runs, CI ±{ci:.1f}%")

        for per_model, record in zip(
            records, measure_interleaved(runners, rule, rapl=rapl, on_check=on_check), strict=True
        ):
            per_model.append(record)
    progress("latency", len(points), len(points))
    return records


def _rule(config: ProfileConfig, *, min_time_s: float, max_time_s: float) -> StopRule:
    return StopRule(
        target_ci_pct=config.target_ci_pct,
        max_time_s=max_time_s,
        min_time_s=min(min_time_s, max_time_s),
        min_runs=config.min_runs,
        max_runs=config.max_runs,
        warmup_runs=config.warmup_runs,
        warmup_s=config.warmup_s,
    )


def _op_profile(
    model: Model, point: Point, thread_count: int, config: ProfileConfig, progress: Progress
) -> OpBreakdown:
    progress(f"op profile: {model.name}", 0, 1)
    result = op_breakdown(
        model, point, threads=thread_count, runs=config.op_profile_runs,
        warmup_runs=config.warmup_runs, seed=config.seed,
    )  # fmt: skip
    progress(f"op profile: {model.name}", 1, 1)
    return result


def _measure_memory(
    models: Sequence[Model],
    points: Sequence[Point],
    shaped: Sequence[list[Shaped]],
    thread_counts: Sequence[int],
    config: ProfileConfig,
    progress: Progress,
) -> tuple[list[MemoryFigures | None], list[tuple[str, ...]]]:
    """Memory per model, and per model the warnings: a failed probe does not fail the profile."""
    figures: list[MemoryFigures | None] = [None] * len(models)
    warnings: list[tuple[str, ...]] = [()] * len(models)
    if not config.memory:
        return figures, warnings
    for i, model in enumerate(models):
        progress("memory (fresh processes)", i, len(models), model.name)
        try:
            figures[i] = memory.measure_memory(
                model,
                points,
                [one.activation_bytes for one in shaped[i]],
                threads=thread_counts[i],
                runs=config.memory_runs,
                timeout_s=config.memory_timeout_s,
                seed=config.seed,
            )
        except memory.MemoryMeasurementError as exc:
            warnings[i] = (f"memory not measured: {exc}",)
    progress("memory (fresh processes)", len(models), len(models))
    return figures, warnings


def _available_memory() -> int:
    available = int(psutil.virtual_memory().available)
    limit = hardware.probe().cgroup_memory_limit_bytes
    return min(available, limit) if limit is not None else available


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:  # not every platform has one
        return None


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"
