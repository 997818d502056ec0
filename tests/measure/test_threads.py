"""Thread counts to try, the best one, oversubscription flags, and a real sweep."""

from __future__ import annotations

import dataclasses

from inferopt.hardware import HardwareInfo, probe
from inferopt.measure import threads
from inferopt.measure.latency import StopRule
from inferopt.model import Model
from inferopt.report.schema import ThreadTrial


def _hw(usable: int, physical: int) -> HardwareInfo:
    return dataclasses.replace(probe(), usable_cores=usable, physical_cores=physical)


def _trial(threads_: int, p50: float, half: float) -> ThreadTrial:
    return ThreadTrial(threads_, p50, p50 - half, p50 + half, 50, False)


def test_candidates_cover_every_core_count_on_small_machines() -> None:
    assert threads.candidates(None, 2) == (1, 2)
    assert threads.candidates(None, 8) == tuple(range(1, 9))
    assert threads.candidates(None, 48) == (1, 2, 4, 8, 16, 32, 48)
    assert threads.candidates([4, 1, 4], 2) == (1, 4)


def test_best_is_the_fewest_threads_within_the_fastest_ci() -> None:
    trials = [_trial(1, 10.0, 0.2), _trial(2, 6.5, 0.5), _trial(4, 5.8, 0.3)]
    assert threads.best_of(trials) == 4  # 6.5 ms is above the fastest's CI (5.5 - 6.1)
    trials = [_trial(1, 10.0, 0.2), _trial(2, 6.0, 0.5), _trial(4, 5.8, 0.3)]
    assert threads.best_of(trials) == 2  # 6.0 ms is inside it: not measurably slower


def test_oversubscription_is_flagged_for_threads_times_sessions() -> None:
    hw = _hw(usable=4, physical=4)
    assert threads.warnings([1, 2, 4], 1, hw, ort_default=4) == ()
    found = threads.warnings([1, 2, 4], 2, hw, ort_default=4)
    assert len(found) == 2 and "4 intra-op threads x 2 concurrent session(s) = 8" in found[0]
    assert "ONNX Runtime's default" in found[1]


def test_a_container_pinned_to_fewer_cores_than_ort_assumes_is_flagged() -> None:
    found = threads.warnings([1, 2], 1, _hw(usable=2, physical=16), ort_default=16)
    assert len(found) == 1 and "starts 16 threads per session" in found[0]


def test_sweep_measures_every_count_for_every_model(mlp: Model) -> None:
    rule = StopRule(target_ci_pct=10.0, max_time_s=0.3, min_runs=5, warmup_s=0.01)
    hw = _hw(usable=2, physical=2)
    (sweep,) = threads.sweep([mlp], (4, None), [1, 2, 3], rule, hw=hw, sessions=1)
    assert [t.threads for t in sweep.trials] == [1, 2, 3]
    assert [t.oversubscribed for t in sweep.trials] == [False, False, True]
    assert sweep.best_threads in (1, 2, 3)
    assert all(t.runs >= 5 and t.ci95_low_ms <= t.p50_ms <= t.ci95_high_ms for t in sweep.trials)
    assert any("3 intra-op threads" in w for w in sweep.warnings)
