"""Memory: the peak meter, the probe in a fresh process, its time bound and failures."""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import numpy as np
import pytest

from inferopt.measure.memory import (
    ChildJob,
    MemoryMeasurementError,
    PeakMeter,
    measure_in_this_process,
    run_child,
)
from inferopt.model import Model


def _job(model: Model, folder: Path, **changes: object) -> ChildJob:
    path = str(model.save(folder / "m.onnx"))
    fields: dict[str, object] = {
        "model_path": path, "io": model.io, "points": ((1, None), (64, None)), "threads": 1,
        "arena": True, "runs": 1, "seed": 0,
    }  # fmt: skip
    return ChildJob(**{**fields, **changes})  # type: ignore[arg-type]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_peak_meter_sees_a_freed_allocation() -> None:
    meter = PeakMeter()
    assert meter.method == "vmhwm"
    meter.reset_peak()
    before = meter.rss()
    # Fresh pages from an anonymous map, touched: a malloc'd block could reuse freed heap
    # pages that are still resident (earlier tests leave some) and not raise RSS at all.
    block = mmap.mmap(-1, 64 * 2**20)
    np.frombuffer(block, dtype=np.uint8)[:] = 1
    block.close()
    assert meter.peak() - before >= 60 * 2**20
    assert meter.rss() - before < 32 * 2**20  # freed, yet the peak remembers it


def test_job_round_trips_through_json(mlp: Model, tmp_path: Path) -> None:
    job = _job(mlp, tmp_path, points=((1, None), (2, 16)))
    assert ChildJob.from_json(job.to_json()) == job


def test_in_process_probe_reports_per_point(mlp: Model, tmp_path: Path) -> None:
    result = measure_in_this_process(_job(mlp, tmp_path))
    assert len(result.peak_added_bytes) == len(result.retained_bytes) == 2
    assert result.load_peak_bytes >= result.load_retained_bytes - 2**20
    assert all(b >= -(2**20) for b in result.peak_added_bytes)  # allow allocator noise


def test_fresh_process_probe_returns_the_same_shape_of_result(mlp: Model, tmp_path: Path) -> None:
    result = run_child(_job(mlp, tmp_path), timeout_s=60)
    assert result.method in ("vmhwm", "rss-after-run")
    assert len(result.peak_added_bytes) == 2
    assert result.load_retained_bytes > 0  # a session costs at least some memory


def test_the_probe_is_killed_after_its_timeout(mlp: Model, tmp_path: Path) -> None:
    with pytest.raises(MemoryMeasurementError, match=r"longer than 0\.01 s"):
        run_child(_job(mlp, tmp_path), timeout_s=0.01)


def test_a_failing_probe_reports_its_last_error_line(mlp: Model, tmp_path: Path) -> None:
    job = _job(mlp, tmp_path, model_path=str(tmp_path / "missing.onnx"))
    with pytest.raises(MemoryMeasurementError, match=r"the memory probe failed: .*missing\.onnx"):
        run_child(job, timeout_s=60)
