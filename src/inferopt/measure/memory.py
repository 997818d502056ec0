"""Memory: the resident memory (RSS) a model adds when loaded and when run, measured in a fresh
process per model and arena setting, and an estimate from shapes made before anything runs.

A fresh process (a new interpreter, not a fork) is the honest way to see a load cost: in the
profiling process, memory freed by earlier sessions is reused and hides it. Peaks come from
Linux's VmHWM ("high water mark"), which the child resets before each step by writing 5 to
/proc/self/clear_refs; elsewhere the figure is RSS after the runs (a lower bound of the peak).
The child is killed after a timeout, so a stuck model cannot hang the profile.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import psutil

from inferopt.iospec import IOSpec
from inferopt.model import Model
from inferopt.report.schema import MemoryFigures, MemoryMethod, PointMemory
from inferopt.runtime import SessionConfig, create_session

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
RESET_PEAK = "5"  # clear_refs code that resets VmHWM to the current RSS (Linux >= 4.0)

Point = tuple[int, int | None]


class PeakMeter:
    """Current and peak RSS of this process."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.method: MemoryMethod = "vmhwm" if self._can_reset() else "rss-after-run"

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def reset_peak(self) -> None:
        if self.method == "vmhwm":
            CLEAR_REFS.write_text(RESET_PEAK)

    def peak(self) -> int:
        if self.method == "vmhwm":
            for line in STATUS.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # reported in kB
        return self.rss()

    @staticmethod
    def _can_reset() -> bool:
        try:
            CLEAR_REFS.write_text(RESET_PEAK)
            return "VmHWM:" in STATUS.read_text()
        except OSError:
            return False


@dataclass(frozen=True)
class ChildJob:
    model_path: str
    io: IOSpec
    points: tuple[Point, ...]
    threads: int
    arena: bool
    runs: int
    seed: int
    # The folder of the model's external data when its weights stay on disk (over 2 GiB):
    # only the graph is written for the child, which maps the weights from where they are.
    data_dir: str | None = None

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "io": self.io.to_json()})

    @staticmethod
    def from_json(text: str) -> ChildJob:
        data = json.loads(text)
        points = tuple((int(b), None if s is None else int(s)) for b, s in data["points"])
        return ChildJob(**{**data, "io": IOSpec.from_json(data["io"]), "points": points})


@dataclass(frozen=True)
class ChildResult:
    method: MemoryMethod
    load_peak_bytes: int
    load_retained_bytes: int
    peak_added_bytes: tuple[int, ...]  # per point, above the RSS after loading
    retained_bytes: tuple[int, ...]


class MemoryMeasurementError(Exception):
    """The child process failed, died or ran out of time; the profile goes on without memory."""


def measure_in_this_process(job: ChildJob) -> ChildResult:
    """Load the model, then run each point in order (smallest first is the caller's choice),
    recording RSS added above the process before loading and above the loaded model."""
    meter = PeakMeter()
    before_load = meter.rss()
    meter.reset_peak()
    config = SessionConfig(intra_op_threads=job.threads, memory_arena=job.arena)
    session = create_session(job.model_path, config, data_dir=job.data_dir)
    load_peak = meter.peak() - before_load
    loaded = meter.rss()
    peaks, retained = [], []
    for batch, seq in job.points:
        feeds = job.io.sample_inputs(batch, seq or 1, job.seed)
        meter.reset_peak()
        for _ in range(job.runs):
            session.run(None, feeds)
        peaks.append(meter.peak() - loaded)
        del feeds
        retained.append(meter.rss() - loaded)
    return ChildResult(meter.method, load_peak, loaded - before_load, tuple(peaks), tuple(retained))


def run_child(job: ChildJob, timeout_s: float) -> ChildResult:
    """`measure_in_this_process` in a fresh Python process, killed after `timeout_s`.

    A new interpreter (`python -m`), rather than multiprocessing: nothing of this process is
    inherited or re-imported, so it also works from scripts without a __main__ guard."""
    command = [sys.executable, "-m", "inferopt.measure.memory"]
    try:
        done = subprocess.run(
            command, input=job.to_json(), capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        raise MemoryMeasurementError(f"the memory probe took longer than {timeout_s:g} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise MemoryMeasurementError(f"the memory probe failed: {last}")
    data = json.loads(done.stdout)
    return ChildResult(
        method=data["method"],
        load_peak_bytes=data["load_peak_bytes"],
        load_retained_bytes=data["load_retained_bytes"],
        peak_added_bytes=tuple(data["peak_added_bytes"]),
        retained_bytes=tuple(data["retained_bytes"]),
    )


def measure_memory(
    model: Model,
    points: Sequence[Point],
    estimates: Sequence[int],
    *,
    threads: int,
    runs: int,
    timeout_s: float,
    seed: int = 0,
) -> MemoryFigures:
    """Memory with ORT's arena on (its default) and off, each in a fresh process. `points` are
    measured from the smallest to the largest; results come back in the given order."""
    order = sorted(range(len(points)), key=lambda i: _elements(points[i]))
    with tempfile.TemporaryDirectory(prefix="inferopt-memory-") as folder:
        path, data_dir = _write_for_child(model, Path(folder) / "model.onnx")
        chosen = tuple(points[i] for i in order)
        job = ChildJob(path, model.io, chosen, threads, True, runs, seed, data_dir)
        arena = run_child(job, timeout_s)
        no_arena = run_child(dataclasses.replace(job, arena=False, runs=1), timeout_s)
    by_point: dict[int, PointMemory] = {}
    for rank, index in enumerate(order):
        by_point[index] = PointMemory(
            peak_added_bytes=arena.peak_added_bytes[rank],
            retained_bytes=arena.retained_bytes[rank],
            peak_added_no_arena_bytes=no_arena.peak_added_bytes[rank],
            estimated_activation_bytes=estimates[index],
        )
    return MemoryFigures(
        method=arena.method,
        load_peak_bytes=arena.load_peak_bytes,
        load_retained_bytes=arena.load_retained_bytes,
        points=tuple(by_point[i] for i in range(len(points))),
    )


def _write_for_child(model: Model, path: Path) -> tuple[str, str | None]:
    """The file the child loads, and the folder of its weights when they stay on disk (not
    copied: a 2 GiB copy per probe would cost more than the probe)."""
    if model.data_dir is None:
        return str(model.save(path)), None
    onnx.save_model(model.stamped_proto(), str(path))
    return str(path), str(model.data_dir)


def _elements(point: Point) -> int:
    batch, seq = point
    return batch * (seq or 1)


if __name__ == "__main__":
    # The child side of run_child: a job on stdin, the result on stdout.
    result = measure_in_this_process(ChildJob.from_json(sys.stdin.read()))
    print(json.dumps(dataclasses.asdict(result)))
