"""Building one candidate and measuring it, in two depths: `screen` (fidelity on all held-out
data, a short interleaved latency probe) for every candidate, and `confirm` (the full
interleaved comparison, memory when it is the objective) for the shortlist only."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from inferopt.errors import InferoptError
from inferopt.measure.memory import ChildJob, MemoryMeasurementError, run_child
from inferopt.model import Model
from inferopt.passes.base import PassContext
from inferopt.recipes import Data, apply
from inferopt.search.evaluate import compare_latency
from inferopt.search.fidelity import Judge, Outputs, run_outputs, subset
from inferopt.search.metric import Metric
from inferopt.search.select import Objective
from inferopt.search.space import Candidate
from inferopt.search.store import Outcome

PROBE_ROUNDS = 3
PROBE_FEEDS = 16
FULL_ROUNDS = 7
FULL_FEEDS = 48
PROXY_SAMPLES = 64  # fidelity is first measured on this many held-out samples
THROUGHPUT_BATCH = 32
MEMORY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Bench:
    """What every candidate is built from and measured against, prepared once."""

    source: Any  # what the user gave (training passes start from it)
    baseline: Model
    data: Data
    metric: Metric
    reference: Outputs  # the baseline's outputs on the evaluation data, alone and batched
    judge: Judge  # how a candidate's outputs are compared with the reference
    context: PassContext
    objective: Objective
    per_sample_s: float  # the baseline's time for one evaluation sample (for time estimates)
    proxy_limit: float = float("inf")  # an absolute drop on the proxy sample that rejects

    def feeds(self, count: int) -> list[dict[str, np.ndarray]]:
        """Real inputs for timing: batch 1 for latency, full batches for throughput."""
        evaluation = self.data.evaluation
        if self.objective != "throughput":
            return evaluation.spread(count)
        starts = range(0, max(1, len(evaluation) - THROUGHPUT_BATCH + 1), THROUGHPUT_BATCH)
        return [
            evaluation.batch(range(s, min(s + THROUGHPUT_BATCH, len(evaluation))))
            for s in list(starts)[: max(1, count // 8)]
        ]


def build(candidate: Candidate, bench: Bench) -> tuple[Model, list[str]]:
    """The candidate's model and the notes its passes left for the user."""
    if candidate.recipe.torch_steps:
        from inferopt.recipes import build_candidate  # training needs torch: import late

        notes: list[str] = []
        model = build_candidate(
            bench.source, candidate.recipe, bench.data, baseline=bench.baseline, notes=notes
        )
        return model, notes
    context = dataclasses.replace(bench.context, notes=[])
    return apply(candidate.recipe, bench.baseline, context), context.notes


def screen(candidate: Candidate, bench: Bench) -> tuple[Outcome, Model | None]:
    """Build, then fidelity on a proxy sample of the held-out data; on all of it only when
    the proxy is not far over budget. Then a short interleaved latency probe."""
    start = time.perf_counter()
    base = Outcome(candidate.recipe.to_json(), candidate.text, candidate.family, 0.0)
    evaluation = bench.data.evaluation
    try:
        model, notes = build(candidate, bench)
        proxy = _proxy_indices(len(evaluation))
        sample = evaluation.subset(proxy)
        judge = bench.judge if sample.labels is None else replace(bench.judge, labels=sample.labels)
        fid = judge.measure(run_outputs(model, sample), subset(bench.reference, proxy))
        rejected = None
        if fid.drop > bench.proxy_limit:
            rejected = (
                f"screened out: drop {fid.drop:.4f} on {len(proxy)} held-out samples "
                f"({fid.decided_by()})"
            )
        else:
            fid = bench.judge.measure(run_outputs(model, evaluation), bench.reference)
        # Probed even when screened out: the probe is cheap, and the Pareto set needs speed.
        probe = compare_latency(
            bench.baseline, model, bench.feeds(PROBE_FEEDS), rounds=PROBE_ROUNDS, warmup=2
        )
    except InferoptError as exc:
        failed = dataclasses.replace(base, failed=str(exc), seconds=_since(start))
        return failed, None
    outcome = dataclasses.replace(
        base,
        fidelity=fid,
        probe=probe,
        size_bytes=model.size_bytes,
        rejected=rejected,
        notes=tuple(notes),
        seconds=_since(start),
    )
    return outcome, model


def _proxy_indices(count: int) -> list[int]:
    """Spread over the set: the first samples of a file are often alike."""
    return sorted({int(i) for i in np.linspace(0, count - 1, num=min(PROXY_SAMPLES, count))})


def confirm(outcome: Outcome, model: Model, bench: Bench) -> Outcome:
    """The full interleaved comparison against the baseline (and memory, when it counts)."""
    full = compare_latency(bench.baseline, model, bench.feeds(FULL_FEEDS), rounds=FULL_ROUNDS)
    memory = memory_bytes(model, bench) if bench.objective == "memory" else outcome.memory_bytes
    return dataclasses.replace(outcome, full=full, memory_bytes=memory)


def memory_bytes(model: Model, bench: Bench) -> int | None:
    """Resident memory added by loading the model and running it on a typical input, in a
    fresh process (so nothing else this process holds is counted)."""
    sample = bench.data.evaluation.samples[len(bench.data.evaluation) // 2]
    seq_axis = bench.data.evaluation.seq_axis
    seq = None if seq_axis is None else int(next(iter(sample.values())).shape[seq_axis])
    with tempfile.TemporaryDirectory(prefix="inferopt-search-") as folder:
        path = str(model.save(Path(folder) / "model.onnx"))
        job = ChildJob(path, model.io, ((1, seq),), threads=0, arena=True, runs=3, seed=0)
        try:
            result = run_child(job, MEMORY_TIMEOUT_S)
        except MemoryMeasurementError:
            return None
    return result.load_retained_bytes + max(result.peak_added_bytes)


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 3)
