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

from inferopt.data import Dataset
from inferopt.errors import InferoptError, InputError
from inferopt.measure.memory import ChildJob, MemoryMeasurementError, run_child
from inferopt.model import Model
from inferopt.passes.base import PassContext
from inferopt.recipes import Data, apply
from inferopt.runtime import SessionConfig
from inferopt.search.evaluate import LatencyComparison, compare_latency, comparison_seconds
from inferopt.search.fidelity import Judge, Outputs, run_outputs, subset
from inferopt.search.metric import Metric
from inferopt.search.select import Objective, Scored
from inferopt.search.space import Candidate
from inferopt.search.store import Outcome

PROBE_ROUNDS = 3
PROBE_FEEDS = 16
FULL_ROUNDS = 7
FULL_FEEDS = 48
PROXY_SAMPLES = 64  # fidelity is first measured on this many held-out samples
MEMORY_TIMEOUT_S = 120.0
THROUGHPUT_FEEDS_PER_BATCH = 8  # a throughput batch counts as this many batch-1 feeds
# The objective not searched for is timed once, for the chosen model, over fewer rounds; and
# throughput on one batch a round (one 32 x 128 batch of minilm takes about 0.5 s on 2 cores).
OTHER_FEEDS, OTHER_ROUNDS = THROUGHPUT_FEEDS_PER_BATCH, 5


@dataclass(frozen=True)
class ThroughputShape:
    """What the throughput objective is timed at: batches of `batch` held-out samples, each
    cut or padded to exactly `tokens` positions along the sequence axis with the model's own
    padding (a mask's 0), as bulk embedding with `padding="max_length"` feeds a model. Models
    without a sequence axis use `batch` alone."""

    batch: int = 32
    tokens: int = 128

    @staticmethod
    def parse(text: str) -> ThroughputShape:
        """`32x128` (batch x tokens) or `32` (batch; tokens stay 128). Raises InputError."""
        parts = text.lower().replace("×", "x").split("x")
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            numbers = []
        if len(numbers) not in (1, 2) or min(numbers) < 1:
            raise InputError(
                f"--throughput-shape {text!r}: expected BATCHxTOKENS such as 32x128, or BATCH"
            )
        return ThroughputShape(*numbers)

    def text(self, sequence: bool) -> str:
        return f"batch {self.batch} x {self.tokens} tokens" if sequence else f"batch {self.batch}"


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
    # The baseline's seconds per timing feed, for time estimates: one sample at batch 1, or
    # for throughput a batch's time over THROUGHPUT_FEEDS_PER_BATCH.
    per_sample_s: float
    proxy_limit: float = float("inf")  # an absolute drop on the proxy sample that rejects
    throughput: ThroughputShape = ThroughputShape()

    def feeds(self, count: int, objective: str | None = None) -> list[dict[str, np.ndarray]]:
        """Real inputs for timing `objective` (default: the search's): `count` batch-1 feeds,
        or for throughput one batch at the stated shape per THROUGHPUT_FEEDS_PER_BATCH."""
        if (objective or self.objective) != "throughput":
            return self.data.evaluation.spread(count)
        return self.throughput_feeds(max(1, count // THROUGHPUT_FEEDS_PER_BATCH))

    def throughput_feeds(self, count: int) -> list[dict[str, np.ndarray]]:
        """`count` batches of `throughput.batch` consecutive held-out samples (wrapping round
        a set smaller than that), each cut or padded to `throughput.tokens` positions."""
        if not self.batchable:
            raise InputError(
                f"--objective throughput: the model's inputs take no batch of "
                f"{self.throughput.batch} (no batch axis, or a fixed batch size)"
            )
        evaluation, size = self.data.evaluation, self.throughput.batch
        length = self.throughput.tokens if self.sequence else None
        rows = [
            [evaluation.samples[(k * size + i) % len(evaluation)] for i in range(size)]
            for k in range(count)
        ]
        return [evaluation.stacking.stack(group, length) for group in rows]

    @property
    def batchable(self) -> bool:
        """Whether every batched input takes a batch of any size (a free batch dimension)."""
        io = self.baseline.io
        if io.batch_axis is None:
            return False
        axes = [(t, io.batch_axis_of(t.name)) for t in io.inputs]
        return all(a is None or not isinstance(t.shape[a], int) for t, a in axes)

    @property
    def sequence(self) -> bool:
        """Whether the inputs have a sequence axis (tokens, frames) that the shape states."""
        evaluation = self.data.evaluation
        return evaluation.seq_axis is not None or bool(evaluation.stacking.seq)

    def timed_at(self, objective: str | None = None) -> str:
        """The inputs `objective` is timed on, in words."""
        if (objective or self.objective) != "throughput":
            return "batch 1"
        return self.throughput.text(self.sequence)


def build(
    candidate: Candidate, bench: Bench, train_s: float | None = None
) -> tuple[Model, list[str]]:
    """The candidate's model and the notes its passes left for the user; `train_s` caps the
    seconds its PyTorch steps may train."""
    if candidate.recipe.torch_steps:
        from inferopt.recipes import build_candidate  # training needs torch: import late

        notes: list[str] = []
        model = build_candidate(
            bench.source,
            candidate.recipe,
            bench.data,
            baseline=bench.baseline,
            notes=notes,
            max_train_seconds=train_s,
        )
        return model, notes
    context = dataclasses.replace(bench.context, notes=[])
    return apply(candidate.recipe, bench.baseline, context), context.notes


def screen(
    candidate: Candidate, bench: Bench, train_s: float | None = None
) -> tuple[Outcome, Model | None]:
    """Build (training for at most `train_s` seconds), then fidelity on a proxy sample of the
    held-out data; on all of it only when the proxy is not far over budget. Then a short
    interleaved latency probe."""
    start = time.perf_counter()
    base = Outcome(candidate.recipe.to_json(), candidate.text, candidate.family, 0.0)
    evaluation = bench.data.evaluation
    try:
        model, notes = build(candidate, bench, train_s)
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


def batch1_seconds(model: Model, data: Dataset) -> float:
    """Seconds per held-out sample at batch 1 (PROBE_FEEDS spread over the set, after a
    warm-up): what the search's time estimates scale with."""
    feeds = data.spread(PROBE_FEEDS)
    session = model.session()
    session.run(None, feeds[0])  # the first run allocates: not timed
    start = time.perf_counter()
    for feed in feeds:
        session.run(None, feed)
    return (time.perf_counter() - start) / len(feeds)


def both_objectives(
    bench: Bench,
    model: Model,
    measured: LatencyComparison | None,
    threads: int = 0,
) -> dict[str, LatencyComparison]:
    """The chosen model against the baseline at batch 1 ("latency") and at the throughput
    shape ("throughput"), each interleaved over real held-out inputs, whichever objective
    was searched for. `measured`: the search objective's own full comparison (reused when it
    is one of the two); `threads`: the chosen intra-op setting (0: ONNX Runtime's default)."""
    configs = (None, SessionConfig(intra_op_threads=threads) if threads else None)
    found: dict[str, LatencyComparison] = {}
    for objective in ("latency", "throughput") if bench.batchable else ("latency",):
        if measured is not None and objective == _timed_as(bench.objective):
            found[objective] = measured
            continue
        feeds = bench.feeds(FULL_FEEDS if objective == "latency" else OTHER_FEEDS, objective)
        found[objective] = compare_latency(
            bench.baseline, model, feeds, rounds=OTHER_ROUNDS, warmup=1, configs=configs
        )
    return found


def _timed_as(objective: str) -> str:
    """Which of the two timings an objective's comparisons are (size, memory: batch 1)."""
    return "throughput" if objective == "throughput" else "latency"


def both_objectives_cost(bench: Bench) -> float:
    """Seconds `both_objectives` may take for the timing the search does not make anyway
    (one throughput batch is run to see), with the margin the search's estimates take."""
    if bench.objective == "throughput":
        batch1_s = batch1_seconds(bench.baseline, bench.data.evaluation)
        return _comparison_cost(FULL_FEEDS * batch1_s)
    if not bench.batchable:
        return 0.0
    return _comparison_cost(feed_seconds(bench, "throughput") * OTHER_FEEDS)


def feed_seconds(bench: Bench, objective: str) -> float:
    """Seconds per batch-1 feed's worth of the feeds `objective` is timed on: for throughput,
    one batch at the stated shape (run once to see, after a warm-up) over the feeds it counts
    as, so that estimates made in feeds hold for both. Raises InputError for a model that
    takes no batch."""
    if objective != "throughput":
        return batch1_seconds(bench.baseline, bench.data.evaluation)
    (feed,) = bench.throughput_feeds(1)
    session = bench.baseline.session()
    session.run(None, feed)  # the first run of a new shape allocates: not timed
    start = time.perf_counter()
    session.run(None, feed)
    return (time.perf_counter() - start) / THROUGHPUT_FEEDS_PER_BATCH


def _comparison_cost(round_s: float) -> float:
    """Both models, every round plus a warm-up, with a margin for rounds stretched."""
    return 1.5 * comparison_seconds(OTHER_ROUNDS + 1, round_s)


def finished_line(outcome: Outcome, row: Scored, within: bool, timed_at: str) -> str:
    """One progress line for a finished candidate: its drop in the budget's terms with the
    upper end of its 95% interval, its probed speed-up, and the verdict."""
    on = f" on {outcome.node}" if outcome.node is not None else ""
    where = " (cached)" if outcome.cached else f" ({outcome.seconds:.0f} s{on})"
    if outcome.failed is not None:
        return f"done {outcome.text}{where}: failed: {outcome.failed}"
    speed = f"{outcome.latency.speedup:.2f}x at {timed_at}" if outcome.latency else "not timed"
    verdict = "within budget" if within else "over budget"
    if outcome.rejected:
        verdict = "screened out on the proxy sample"
    return (
        f"done {outcome.text}{where}: drop {row.drop:.4f} [95% up {row.drop_high:.4f}], "
        f"{speed} (probe): {verdict}"
    )


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
