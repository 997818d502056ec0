"""Where the time goes: ONNX Runtime's own profiler, aggregated by op type.

ORT profiles the graph it actually runs, after its optimizations, so op types here are often
fused ones (FusedMatMul, SkipLayerNormalization, BiasGelu, ...) that the model file does not
contain. A kernel's time is its wall time on the calling thread, including waiting for the
worker threads it split its work over.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inferopt.measure.latency import make_runner
from inferopt.model import Model
from inferopt.report.schema import OpBreakdown, OpTime
from inferopt.runtime import SessionConfig, create_session

KERNEL_SUFFIX = "_kernel_time"


def op_breakdown(
    model: Model,
    point: tuple[int, int | None],
    *,
    threads: int,
    runs: int,
    warmup_runs: int,
    seed: int = 0,
) -> OpBreakdown:
    """Profile `runs` runs after `warmup_runs` at `point` and aggregate the trace by op type."""
    batch, seq = point
    feeds = model.io.sample_inputs(batch, seq or 1, seed)
    with tempfile.TemporaryDirectory(prefix="inferopt-profile-") as folder:
        config = SessionConfig(intra_op_threads=threads, profile_prefix=str(Path(folder) / "ort"))
        session = create_session(model.proto, config, label=model.name)
        run = make_runner(session, feeds, f"{model.name} at batch {batch}")
        for _ in range(warmup_runs + runs):
            run()
        trace = Path(session.end_profiling())
        events = json.loads(trace.read_text())
        trace.unlink()  # traces grow by megabytes per run; the folder goes too, this is explicit
    return parse_trace(events, skip_runs=warmup_runs, batch=batch, seq=seq, threads=threads)


def parse_trace(
    events: Sequence[dict[str, Any]], *, skip_runs: int, batch: int, seq: int | None, threads: int
) -> OpBreakdown:
    """Per op type, the median over runs of its kernel time in a run. Runs before the first
    `skip_runs` are cut (ORT's profiler records from session creation on, warm-up included);
    medians, because one run slowed by another process would dominate a mean of ten."""
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[
        skip_runs:
    ]
    kernels = [
        e
        for e in events
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith(KERNEL_SUFFIX)
    ]
    per_run = [_op_times(kernels, start, end) for start, end in windows]
    ops = sorted({op for run in per_run for op in run})
    median_us = {op: float(np.median([run.get(op, (0, 0))[0] for run in per_run])) for op in ops}
    total_us = sum(median_us.values())
    runs = max(len(per_run), 1)
    times = [
        OpTime(
            op_type=op,
            calls_per_run=sum(run.get(op, (0, 0))[1] for run in per_run) / runs,
            ms_per_run=median_us[op] / 1e3,
            share=median_us[op] / total_us if total_us else 0.0,
        )
        for op in sorted(ops, key=lambda o: -median_us[o])
    ]
    kept = [e for e in kernels if any(start <= e["ts"] <= end for start, end in windows)]
    return OpBreakdown(
        batch=batch,
        seq=seq,
        threads=threads,
        runs=len(per_run),
        kernel_ms_per_run=total_us / 1e3,
        ops=tuple(times),
        arena_held_bytes=_max_arg(kept, "mem_arena_held"),
        arena_peak_in_use_bytes=_max_arg(kept, "mem_in_use_peak"),
    )


def _op_times(
    kernels: Sequence[dict[str, Any]], start: int, end: int
) -> dict[str, tuple[int, int]]:
    """op type -> (microseconds, calls) of the kernels inside one run's window."""
    found: dict[str, tuple[int, int]] = {}
    for event in kernels:
        if start <= event["ts"] <= end:
            op = event.get("args", {}).get("op_name", "?")
            us, calls = found.get(op, (0, 0))
            found[op] = (us + event["dur"], calls + 1)
    return found


def _max_arg(events: Sequence[dict[str, Any]], key: str) -> int | None:
    """The largest value of a numeric kernel argument; None when this ORT does not report it
    (memory counters appeared in recent versions)."""
    values = [int(e["args"][key]) for e in events if key in e.get("args", {})]
    return max(values) if values else None
