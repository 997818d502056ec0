"""Latency of ONNX Runtime sessions, measured honestly: warm-up excluded, repeated until the
median's 95% confidence interval is narrow enough or a time cap is hit, and several sessions
interleaved in short blocks (A, B, A, B, ...) so that a drift in machine load hits all of them
alike, each block settled first so that no timed run follows another session's.

Each run records wall time, process CPU time and, where readable, RAPL package energy; the
energy module turns the last two into joules per inference.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from inferopt.errors import InputError
from inferopt.measure.energy import RaplCounter
from inferopt.measure.stats import ci_halfwidth_pct
from inferopt.model import Model
from inferopt.report.schema import StopReason

Runner = Callable[[], object]
# Called at each convergence check with (runs so far, worst CI half-width in % of the median).
OnCheck = Callable[[int, float], None]
# Untimed runs of a session before it is timed right after another one. Measured on minilm
# (2-core AMD EPYC, ORT 1.32, 2 threads): after another session ran, a session's first ~70 ms
# run up to 2x slower (its worker threads had gone to sleep, the other's still spin). Timed
# run by run in alternation, a model that runs in 10.1 ms alone read 19.7 ms, and an A/A
# comparison of the search's probe read 0.57-0.80x.
SETTLE_S = 0.15
# When several sessions are compared, each turn times one of them this long (one run at least)
# after its settle: the settle then costs 0.15 s in 0.4 s, and each session still gets a turn
# every ~0.8 s (two sessions), often enough to share the machine's drifts.
BLOCK_S = 0.25


@dataclass(frozen=True)
class StopRule:
    """When to stop repeating. The CI target is checked only once `min_runs` are in."""

    target_ci_pct: float | None  # stop when every median's CI half-width is within this %
    max_time_s: float  # ... or when this much time went into the repeats (all sessions)
    # At least this long, so samples span slow drifts (another process's burst) that a few
    # milliseconds of runs would miss and the CI, which assumes independent runs, cannot see.
    min_time_s: float = 0.0
    min_runs: int = 10
    max_runs: int = 10_000
    warmup_runs: int = 3  # per session, excluded: arena growth, kernel choice, cold caches
    warmup_s: float = 0.2  # and at least this long, so tiny models also reach a steady state

    def __post_init__(self) -> None:
        if self.target_ci_pct is not None and not self.target_ci_pct > 0:
            raise ValueError(f"target_ci_pct must be > 0 or None, got {self.target_ci_pct}")
        if not self.max_time_s > 0:
            raise ValueError(f"max_time_s must be > 0, got {self.max_time_s}")
        if not 1 <= self.min_runs <= self.max_runs:
            raise ValueError(
                f"need 1 <= min_runs <= max_runs, got {self.min_runs} and {self.max_runs}"
            )
        if not 0 <= self.min_time_s <= self.max_time_s:
            raise ValueError(f"need 0 <= min_time_s <= max_time_s, got {self.min_time_s}")
        if self.warmup_runs < 0 or self.warmup_s < 0:
            raise ValueError("warmup_runs and warmup_s must be >= 0")


@dataclass
class RunRecord:
    """Per-run measurements of one session, warm-up excluded."""

    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    energy_j: list[float] | None = None  # only with a RAPL counter
    warmup_runs: int = 0
    stop_reason: StopReason = "time-cap"
    measured_s: float = 0.0


def make_runner(session: Any, feeds: dict[str, np.ndarray], label: str) -> Runner:
    """`session.run` on fixed feeds; a failure becomes InputError naming `label` (the shape)."""
    options = ort.RunOptions()
    options.log_severity_level = 4  # fatal only: we report a failure ourselves, in one line

    def run() -> object:
        try:
            return session.run(None, feeds, options)
        except Exception as exc:  # ORT raises pybind types; report the first line, keep the cause
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InputError(f"{label}: the model rejected this input: {first}") from exc

    return run


def measure_interleaved(
    runners: Sequence[Runner],
    rule: StopRule,
    *,
    rapl: RaplCounter | None = None,
    on_check: OnCheck | None = None,
) -> list[RunRecord]:
    """Warm each runner up, then time them in turn until `rule` says stop; one record each.

    One runner is timed run after run. Several take turns: each turn runs its runner untimed
    for SETTLE_S (one run at least), then timed for BLOCK_S (one run at least; shorter when the
    rule's time cap is near, alike for every runner; ended by max_runs), so no timed run comes
    right after another session's."""
    records = [RunRecord(energy_j=[] if rapl else None) for _ in runners]
    for runner, record in zip(runners, records, strict=True):
        record.warmup_runs = _warm_up(runner, rule)
    start = time.perf_counter()
    next_check = rule.min_runs
    reason: StopReason | None = None
    while reason is None:
        # Every turn of a rotation lasts as long, the time cap's remainder shared among them.
        left = start + rule.max_time_s - time.perf_counter()
        block = min(BLOCK_S, left / len(runners) - SETTLE_S)
        for runner, record in zip(runners, records, strict=True):
            if len(runners) == 1:
                _timed_run(runner, record, rapl)
                continue
            settle(runner, SETTLE_S)
            end = time.perf_counter() + block
            _timed_run(runner, record, rapl)
            while time.perf_counter() < end and len(record.wall_s) < rule.max_runs:
                _timed_run(runner, record, rapl)
        runs = min(len(r.wall_s) for r in records)
        elapsed = time.perf_counter() - start
        if runs >= next_check or elapsed >= rule.max_time_s or runs >= rule.max_runs:
            # Checks grow geometrically: each check sorts every sample, which would dominate the
            # loop for a model that runs in microseconds if done every round.
            next_check = max(runs + 1, int(runs * 1.2))
            reason = _stop_reason(records, rule, elapsed, on_check)
    for record in records:
        record.stop_reason = reason
        record.measured_s = time.perf_counter() - start
    return records


def _warm_up(runner: Runner, rule: StopRule) -> int:
    runs = 0
    deadline = time.perf_counter() + rule.warmup_s
    while runs < rule.warmup_runs or time.perf_counter() < deadline:
        runner()
        runs += 1
    return runs


def settle(runner: Runner, seconds: float) -> None:
    """Run untimed until `seconds` have passed, one run at least (see SETTLE_S)."""
    end = time.perf_counter() + seconds
    runner()
    while time.perf_counter() < end:
        runner()


def _timed_run(runner: Runner, record: RunRecord, rapl: RaplCounter | None) -> None:
    # Energy and CPU time are read outside the wall-clock window so they do not inflate it.
    energy_before = rapl.read_joules() if rapl else 0.0
    cpu_before = time.process_time()
    wall_before = time.perf_counter()
    runner()
    wall_after = time.perf_counter()
    cpu_after = time.process_time()
    record.wall_s.append(wall_after - wall_before)
    record.cpu_s.append(cpu_after - cpu_before)
    if rapl is not None and record.energy_j is not None:
        record.energy_j.append(rapl.read_joules() - energy_before)


def _stop_reason(
    records: list[RunRecord], rule: StopRule, elapsed: float, on_check: OnCheck | None
) -> StopReason | None:
    runs = min(len(r.wall_s) for r in records)
    worst = max(ci_halfwidth_pct(r.wall_s) for r in records)
    if on_check is not None:
        on_check(runs, worst)
    if runs < rule.min_runs or elapsed < rule.min_time_s:
        return None
    if rule.target_ci_pct is not None and worst <= rule.target_ci_pct:
        return "ci-target"
    if runs >= rule.max_runs:
        return "max-runs"
    if elapsed >= rule.max_time_s:
        return "time-cap"
    return None


@dataclass(frozen=True)
class QuickLatency:
    batch: int
    seq: int | None
    runs: int
    median_ms: float
    p90_ms: float


def quick_latency(
    model: Model, *, batch: int = 1, seq: int = 128, budget_s: float = 1.0, warmup: int = 3
) -> QuickLatency:
    """A fast first figure: median latency over as many runs as fit in `budget_s`."""
    feeds = model.io.sample_inputs(batch=batch, seq=seq)
    runner = make_runner(model.session(), feeds, f"batch {batch}, seq {seq}")
    rule = StopRule(None, budget_s, min_runs=5, warmup_runs=warmup, warmup_s=0.0)
    (record,) = measure_interleaved([runner], rule)
    ms = np.asarray(record.wall_s) * 1e3
    seq_used = seq if model.io.seq_axis is not None else None
    return QuickLatency(
        batch, seq_used, len(ms), float(np.median(ms)), float(np.percentile(ms, 90))
    )
