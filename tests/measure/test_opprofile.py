"""Per-op time from ONNX Runtime's profiler: trace parsing, and a real profile."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest

from inferopt.measure.opprofile import op_breakdown, parse_trace
from inferopt.model import Model


def _kernel(op: str, ts: int, dur: int, **args: str) -> dict[str, Any]:
    return {"cat": "Node", "name": f"n_{op}_kernel_time", "ts": ts, "dur": dur,
            "args": {"op_name": op, **args}}  # fmt: skip


def test_warm_up_runs_are_cut_and_ops_aggregated() -> None:
    events = [
        {"name": "model_run", "cat": "Session", "ts": 0, "dur": 100},  # warm-up
        _kernel("MatMul", 10, 90),
        {"name": "model_run", "cat": "Session", "ts": 200, "dur": 100},
        _kernel("MatMul", 210, 30, mem_arena_held="4096", mem_in_use_peak="1024"),
        _kernel("Relu", 250, 10),
        {"name": "model_run", "cat": "Session", "ts": 400, "dur": 100},
        _kernel("MatMul", 410, 50),
        _kernel("Relu", 470, 10, mem_arena_held="8192"),
        {"name": "session_initialization", "cat": "Session", "ts": -50, "dur": 40},
    ]
    ops = parse_trace(events, skip_runs=1, batch=1, seq=None, threads=1)
    assert ops.runs == 2
    assert [(o.op_type, o.ms_per_run, o.calls_per_run) for o in ops.ops] == [
        ("MatMul", pytest.approx(0.040), 1.0),
        ("Relu", pytest.approx(0.010), 1.0),
    ]
    assert ops.ops[0].share == pytest.approx(0.8)
    assert ops.kernel_ms_per_run == pytest.approx(0.050)
    assert (ops.arena_held_bytes, ops.arena_peak_in_use_bytes) == (8192, 1024)


def test_one_slow_run_does_not_move_the_figures() -> None:
    events = []
    for run, matmul_us in enumerate((30, 3000, 32)):  # the second run was preempted
        events += [{"name": "model_run", "ts": run * 10_000, "dur": 5000},
                   _kernel("MatMul", run * 10_000 + 1, matmul_us)]  # fmt: skip
    ops = parse_trace(events, skip_runs=0, batch=1, seq=None, threads=1)
    assert ops.ops[0].ms_per_run == pytest.approx(0.032)


def test_a_trace_without_memory_counters_reports_none() -> None:
    events = [{"name": "model_run", "ts": 0, "dur": 10}, _kernel("Add", 1, 5)]
    ops = parse_trace(events, skip_runs=0, batch=1, seq=None, threads=1)
    assert ops.arena_held_bytes is None and ops.ops[0].op_type == "Add"


def test_real_profile_lists_the_fused_gemm_and_deletes_the_trace(
    mlp: Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ops = op_breakdown(mlp, (4, None), threads=1, runs=5, warmup_runs=2)
    assert ops.runs == 5
    names = {o.op_type for o in ops.ops}
    assert names & {"Gemm", "FusedGemm"} and "MatMul" in names  # ORT fuses Gemm + Relu
    assert sum(o.share for o in ops.ops) == pytest.approx(1.0)
    assert list(tmp_path.iterdir()) == []  # no trace, no folder left behind
