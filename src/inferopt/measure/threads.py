"""The intra-op thread count: which to try, which is best, and which oversubscribe the machine.

Oversubscription (more busy threads than usable cores) makes ONNX Runtime's worker threads wait
for each other's time slices: latency rises and becomes erratic. It happens when threads x
sessions running side by side exceeds the cores this process may use, and, inside containers,
when ORT's default (one thread per physical core of the host) exceeds the cores pinned to us.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from inferopt.hardware import HardwareInfo
from inferopt.measure.latency import (
    OnCheck,
    RunRecord,
    StopRule,
    make_runner,
    measure_interleaved,
)
from inferopt.measure.stats import latency_stats
from inferopt.model import Model
from inferopt.report.schema import ThreadSweep, ThreadTrial
from inferopt.runtime import SessionConfig, create_session

MAX_DENSE_SWEEP = 8  # up to this many cores, try every count; beyond, powers of two


def candidates(requested: Sequence[int] | None, usable_cores: int) -> tuple[int, ...]:
    """The thread counts to try: as requested, else 1..usable cores (powers of two and the
    core count itself on big machines, where every count would take too long)."""
    if requested:
        return tuple(sorted(set(requested)))
    if usable_cores <= MAX_DENSE_SWEEP:
        return tuple(range(1, usable_cores + 1))
    powers = [2**i for i in range(usable_cores.bit_length()) if 2**i < usable_cores]
    return (*powers, usable_cores)


def is_oversubscribed(threads: int, sessions: int, usable_cores: int) -> bool:
    return threads * sessions > usable_cores


def warnings(
    tried: Sequence[int], sessions: int, hw: HardwareInfo, ort_default: int | None
) -> tuple[str, ...]:
    found = [
        f"{t} intra-op threads x {sessions} concurrent session(s) = {t * sessions} busy threads "
        f"on {hw.usable_cores} usable cores: oversubscribed"
        for t in tried
        if is_oversubscribed(t, sessions, hw.usable_cores)
    ]
    if ort_default is not None and is_oversubscribed(ort_default, sessions, hw.usable_cores):
        found.append(
            f"ONNX Runtime's default (intra_op_threads=0) starts {ort_default} threads per "
            f"session, more than the {hw.usable_cores} usable cores: set the thread count"
        )
    return tuple(found)


def best_of(trials: Sequence[ThreadTrial]) -> int:
    """The fewest threads whose median lies within the fastest trial's 95% CI: when more
    threads do not make a difference we can measure, they only cost cores."""
    fastest = min(trials, key=lambda t: t.p50_ms)
    good = [t.threads for t in trials if t.p50_ms <= fastest.ci95_high_ms]
    return min(good)


def sweep(
    models: Sequence[Model],
    point: tuple[int, int | None],
    tried: Sequence[int],
    rule: StopRule,
    *,
    hw: HardwareInfo,
    sessions: int,
    seed: int = 0,
    on_check: OnCheck | None = None,
) -> list[ThreadSweep]:
    """Latency at `point` for every model and thread count, `rule.max_time_s` split between
    them. Each count runs in a block of its own: interleaved run by run, a session using every
    core leaves the next session's run to pay for it on a busy machine (the scheduler hands
    the other processes their share back), which made one thread look twice as slow."""
    batch, seq = point
    where = f"batch {batch}" + (f", seq {seq}" if seq else "")
    share = dataclasses.replace(
        rule, max_time_s=rule.max_time_s / (len(models) * len(tried)), min_time_s=0.0
    )
    ort_default = hw.physical_cores  # what ORT's thread pool sizes itself to when given 0
    result = []
    for model in models:
        feeds = model.io.sample_inputs(batch, seq or 1, seed)
        trials = []
        for threads in tried:
            session = create_session(
                model.proto, SessionConfig(intra_op_threads=threads), label=model.name
            )
            runner = make_runner(session, feeds, f"{model.name} at {where}")
            (record,) = measure_interleaved([runner], share, on_check=on_check)
            trials.append(_trial(threads, record, sessions, hw.usable_cores))
        result.append(
            ThreadSweep(
                batch=batch,
                seq=seq,
                trials=tuple(trials),
                best_threads=best_of(trials),
                usable_cores=hw.usable_cores,
                concurrent_sessions=sessions,
                ort_default_threads=ort_default,
                warnings=warnings(tried, sessions, hw, ort_default),
            )
        )
    return result


def _trial(threads: int, record: RunRecord, sessions: int, usable_cores: int) -> ThreadTrial:
    stats = latency_stats(
        record.wall_s,
        warmup_runs=record.warmup_runs,
        stop_reason=record.stop_reason,
        measured_s=record.measured_s,
        keep_samples=False,
    )
    return ThreadTrial(
        threads=threads,
        p50_ms=stats.p50_ms,
        ci95_low_ms=stats.ci95_low_ms,
        ci95_high_ms=stats.ci95_high_ms,
        runs=stats.runs,
        oversubscribed=is_oversubscribed(threads, sessions, usable_cores),
    )
