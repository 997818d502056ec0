"""What a candidate costs and saves against its baseline, measured here: fidelity on held-out
data (search.fidelity), latency measured interleaved with the baseline, and size.

Latency is compared, never taken alone: this machine is shared, so the two models run in
alternating rounds over the same real inputs at batch 1, and the ratio of their median round
times is reported with the spread of the per-round ratios. Each round starts with an untimed
settle: a session that runs right after another is slow for its first tens of milliseconds,
and without it the order of the two in a round decided a third of the ratio."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from inferopt.data import Dataset
from inferopt.measure.latency import SETTLE_S, settle
from inferopt.model import Model
from inferopt.runtime import SessionConfig
from inferopt.search.fidelity import Fidelity, Judge, Outputs, run_outputs

# "retrieval": mean nDCG@10 of every text as a query against the others (embeddings);
# "embedding": nearest-neighbour (top-1) agreement; "agreement": mean cosine / argmax agreement.
MetricName = Literal["top1", "retrieval", "embedding", "agreement"]
MIN_ROUND_S = 0.05  # a latency round repeats its feeds at least this long: shorter is timer noise
# Each round starts with SETTLE_S of untimed runs (inferopt.measure.latency says why): without
# it a model timed second in a round looked 1.5x slower than itself timed first.


@dataclass(frozen=True)
class LatencyComparison:
    baseline_ms: float  # median per-sample latency, batch 1
    candidate_ms: float
    speedup: float  # baseline / candidate, from the median round times
    ratio_spread: float  # (p75 - p25) / median of the per-round ratios: how stable
    rounds: int
    samples: int


@dataclass(frozen=True)
class Evaluation:
    fidelity: Fidelity
    latency: LatencyComparison
    size_bytes: int
    baseline_size_bytes: int

    @property
    def size_ratio(self) -> float:
        return self.size_bytes / self.baseline_size_bytes

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["fidelity"] = self.fidelity.to_json()
        data["size_ratio"] = self.size_ratio
        return data


def metric_for(data: Dataset, model: Model, declared: MetricName | None = None) -> MetricName:
    """The zoo's declared metric; else top-1 when there are labels; else retrieval (mean
    nDCG@10 against the baseline's neighbours) for rank-2 float outputs, embeddings; else plain
    agreement."""
    if declared is not None:
        return declared
    if data.labels is not None:
        return "top1"
    output = (model.io.tensor_outputs or model.io.outputs)[0]
    embedding = len(output.shape) == 2 and output.dtype.startswith("float")
    return "retrieval" if embedding else "agreement"


def compare_latency(
    baseline: Model,
    candidate: Model,
    feeds: Sequence[dict[str, np.ndarray]],
    rounds: int = 7,
    warmup: int = 3,
    min_round_s: float = MIN_ROUND_S,
    configs: tuple[SessionConfig | None, SessionConfig | None] = (None, None),
) -> LatencyComparison:
    """Alternate the two models round by round (ABBA order, so drift favours neither). Each
    round repeats the feeds until it lasts `min_round_s`: shorter rounds measure the timer.
    `configs` are the two models' session settings (threads, ...), default ORT's."""
    sessions = [baseline.session(configs[0]), candidate.session(configs[1])]
    for session in sessions:
        for feed in feeds[:warmup]:
            session.run(None, feed)
    repeats = max(1, math.ceil(min_round_s / max(_round(sessions[0], feeds, 1), 1e-9)))
    times: list[list[float]] = [[], []]
    cycle = itertools.cycle(feeds)  # what settles a session: the same feeds, in turn
    settlers = [lambda s=s: s.run(None, next(cycle)) for s in sessions]
    for r in range(rounds):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for index in order:
            settle(settlers[index], SETTLE_S)
            times[index].append(_round(sessions[index], feeds, repeats) / repeats)
    base, cand = np.array(times[0]), np.array(times[1])
    ratios = base / cand
    q25, q50, q75 = np.percentile(ratios, [25, 50, 75])
    per_sample = 1e3 / len(feeds)
    return LatencyComparison(
        baseline_ms=float(np.median(base)) * per_sample,
        candidate_ms=float(np.median(cand)) * per_sample,
        speedup=float(np.median(base) / np.median(cand)),
        ratio_spread=float((q75 - q25) / q50),
        rounds=rounds,
        samples=len(feeds),
    )


def comparison_seconds(rounds: int, round_s: float) -> float:
    """What compare_latency takes at least: both models, every round, each round settled
    (SETTLE_S) then timed for `round_s` seconds (MIN_ROUND_S at least)."""
    return 2 * rounds * (max(round_s, MIN_ROUND_S) + SETTLE_S)


def _round(session: Any, feeds: Sequence[dict[str, np.ndarray]], repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        for feed in feeds:
            session.run(None, feed)
    return time.perf_counter() - start


def latency_feeds(data: Dataset, count: int = 64) -> list[dict[str, np.ndarray]]:
    """Batch-1 feeds spread over the evaluation set (real inputs, real lengths)."""
    return data.spread(count)


def evaluate(
    candidate: Model,
    baseline: Model,
    reference: Outputs,
    data: Dataset,
    judge: Judge,
    *,
    latency_samples: int = 64,
    rounds: int = 7,
) -> Evaluation:
    """Fidelity (alone and batched, every output and channel, with intervals) against the
    baseline's `reference` outputs, then latency interleaved with the baseline."""
    fid = judge.measure(run_outputs(candidate, data), reference)
    latency = compare_latency(baseline, candidate, latency_feeds(data, latency_samples), rounds)
    return Evaluation(fid, latency, candidate.size_bytes, baseline.size_bytes)
