"""Thread settings for the chosen model: ONNX Runtime uses one thread per core by default,
which small models (and batch-1 latency on small inputs) often pay for in synchronisation.
The chosen model is timed at its default and at fewer threads, interleaved; a setting is
recommended only when it wins by more than the noise margin."""

from __future__ import annotations

import os
from dataclasses import dataclass

from inferopt import hardware
from inferopt.model import Model
from inferopt.runtime import SessionConfig
from inferopt.search.evaluate import LatencyComparison, compare_latency
from inferopt.search.screen import FULL_FEEDS, FULL_ROUNDS, Bench

MARGIN = 1.05  # a thread setting must beat the default by 5% to be recommended


@dataclass(frozen=True)
class ThreadChoice:
    intra_op_threads: int  # 0: ONNX Runtime's default (one per physical core)
    speedups: dict[int, float]  # threads tried -> speed-up over the default, same model
    against_baseline: LatencyComparison | None  # re-measured with the chosen setting, if not 0


def settings_to_try() -> list[int]:
    cores = hardware.probe().physical_cores or os.cpu_count() or 1
    return sorted({n for n in (1, cores // 2) if 0 < n < cores})


def tune_threads(bench: Bench, model: Model) -> ThreadChoice:
    feeds = bench.feeds(FULL_FEEDS // 2)
    speedups: dict[int, float] = {}
    for threads in settings_to_try():
        config = SessionConfig(intra_op_threads=threads)
        comparison = compare_latency(model, model, feeds, rounds=5, configs=(None, config))
        speedups[threads] = round(comparison.speedup, 4)
    best = max(speedups, key=lambda t: speedups[t], default=0)
    if not speedups or speedups[best] < MARGIN:
        return ThreadChoice(0, speedups, None)
    again = compare_latency(
        bench.baseline,
        model,
        bench.feeds(FULL_FEEDS),
        rounds=FULL_ROUNDS,
        configs=(None, SessionConfig(intra_op_threads=best)),
    )
    return ThreadChoice(best, speedups, again)
