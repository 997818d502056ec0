"""The repeat loop: warm-up excluded, interleaving, the three ways it stops, error mapping."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from inferopt.errors import InputError
from inferopt.measure.latency import StopRule, make_runner, measure_interleaved, quick_latency
from inferopt.model import Model

sys.path.insert(0, str(Path(__file__).parents[1] / "fixtures"))
from switching import Switching


def _sleeper(seconds: float, calls: list[str], name: str, jitter: float = 0.0) -> object:
    rng = np.random.default_rng(len(name))

    def run() -> None:
        calls.append(name)
        time.sleep(seconds * (1 + jitter * rng.random()))

    return run


def test_several_runners_take_settled_turns_after_each_warms_up() -> None:
    calls: list[str] = []
    rule = StopRule(target_ci_pct=None, max_time_s=0.05, min_runs=4, warmup_runs=2, warmup_s=0)
    a, b = _sleeper(0.001, calls, "a"), _sleeper(0.001, calls, "b")
    rec_a, rec_b = measure_interleaved([a, b], rule)  # type: ignore[list-item]
    assert calls[:4] == ["a", "a", "b", "b"]  # warm-up, not timed
    turns = [name for i, name in enumerate(calls[4:], 4) if name != calls[i - 1]]
    assert turns[:4] == ["a", "b", "a", "b"]  # whole turns, in order
    # Each turn: SETTLE_S of untimed runs, then timed ones; the time cap ends the blocks early.
    assert len(calls) - 4 > len(rec_a.wall_s) + len(rec_b.wall_s) + 2 * 0.1 / 0.002
    assert rec_a.warmup_runs == rec_b.warmup_runs == 2
    assert len(rec_a.wall_s) >= 4 and len(rec_b.wall_s) >= 4
    assert rec_a.stop_reason == "time-cap"
    assert all(0.0009 < t < 0.05 for t in rec_a.wall_s)


def test_compared_sessions_are_timed_at_their_settled_speed() -> None:
    """Timed run by run in alternation, each run would follow the other session's and read
    2 ms; settled turns read each at its own 1 ms, and equal to each other."""
    machine: dict[str, object] = {}
    rule = StopRule(target_ci_pct=None, max_time_s=1.0, min_runs=10, warmup_s=0)
    records = measure_interleaved([Switching(machine), Switching(machine)], rule)
    medians = [float(np.median(r.wall_s)) for r in records]
    assert all(m < 0.0015 for m in medians), medians
    assert 0.9 < medians[0] / medians[1] < 1.1


def test_one_runner_is_timed_run_after_run_with_no_settling() -> None:
    calls: list[str] = []
    rule = StopRule(target_ci_pct=None, max_time_s=60.0, min_runs=5, max_runs=20, warmup_runs=3,
                    warmup_s=0)  # fmt: skip
    (record,) = measure_interleaved([_sleeper(0.001, calls, "a")], rule)  # type: ignore[list-item]
    assert len(calls) == 3 + len(record.wall_s) == 23


def test_a_steady_runner_stops_at_the_ci_target() -> None:
    calls: list[str] = []
    rule = StopRule(target_ci_pct=20.0, max_time_s=5.0, min_runs=10, warmup_runs=1, warmup_s=0)
    (record,) = measure_interleaved([_sleeper(0.002, calls, "a")], rule)  # type: ignore[list-item]
    assert record.stop_reason == "ci-target"
    assert 10 <= len(record.wall_s) < 200
    assert record.measured_s < 2.0


def test_a_noisy_runner_stops_at_the_time_cap() -> None:
    calls: list[str] = []
    rule = StopRule(target_ci_pct=0.01, max_time_s=0.2, min_runs=3, warmup_s=0)
    noisy = _sleeper(0.001, calls, "n", jitter=3.0)
    (record,) = measure_interleaved([noisy], rule)  # type: ignore[list-item]
    assert record.stop_reason == "time-cap"
    assert 0.2 <= record.measured_s < 1.0


def test_min_time_keeps_measuring_after_the_target_is_met() -> None:
    calls: list[str] = []
    rule = StopRule(target_ci_pct=90.0, max_time_s=2.0, min_time_s=0.15, min_runs=3, warmup_s=0)
    (record,) = measure_interleaved([_sleeper(0.001, calls, "a")], rule)  # type: ignore[list-item]
    assert record.stop_reason == "ci-target"
    assert record.measured_s >= 0.15


def test_max_runs_bounds_the_loop() -> None:
    rule = StopRule(target_ci_pct=None, max_time_s=60.0, min_runs=5, max_runs=30, warmup_s=0)
    (record,) = measure_interleaved([lambda: None], rule)
    assert record.stop_reason == "max-runs" and len(record.wall_s) == 30
    assert len(record.cpu_s) == 30 and record.energy_j is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_ci_pct": 0.0, "max_time_s": 1.0},
        {"target_ci_pct": None, "max_time_s": 0.0},
        {"target_ci_pct": None, "max_time_s": 1.0, "min_runs": 0},
        {"target_ci_pct": None, "max_time_s": 1.0, "min_runs": 10, "max_runs": 5},
        {"target_ci_pct": None, "max_time_s": 1.0, "min_time_s": 2.0},
        {"target_ci_pct": None, "max_time_s": 1.0, "warmup_runs": -1},
    ],
)
def test_bad_stop_rules_are_refused(kwargs: dict[str, float | None]) -> None:
    with pytest.raises(ValueError):
        StopRule(**kwargs)  # type: ignore[arg-type]


def test_a_rejected_input_becomes_an_input_error_naming_the_shape(mlp: Model) -> None:
    feeds = {"x": np.zeros((2, 5), np.float32)}  # the model takes 16 features
    run = make_runner(mlp.session(), feeds, "--batch-sizes 2 (mlp at batch 2)")
    with pytest.raises(
        InputError, match=r"^--batch-sizes 2 \(mlp at batch 2\): the model rejected"
    ):
        run()


def test_quick_latency_still_reports_median_and_p90(mlp: Model) -> None:
    q = quick_latency(mlp, batch=2, budget_s=0.1)
    assert q.batch == 2 and q.seq is None and q.runs >= 5
    assert 0 < q.median_ms <= q.p90_ms
