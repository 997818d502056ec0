"""A candidate's fidelity to its baseline as the budget counts it, with 95% intervals.

The truth is the baseline's answer to each held-out sample run alone (batch 1). A candidate is
compared with it under two conditions: run alone, and run in batches (several rows, padded to
the longest where lengths differ), split back into rows. A quantized attention that loses its
mask passes alone and fails batched; batch-1 fidelity alone cannot see it.

Under each condition two things are measured: the metric (top-1, retrieval nDCG@10,
nearest-neighbour agreement, mean cosine, or the user's function) and every output's every
channel and decision (`measure.channels`: each channel on its own scale, NaN/Inf never
agreeing). The drop the budget counts is the worst of them. Each figure's interval is a
percentile bootstrap over the held-out samples; the baseline itself, run batched, gives the
metric's noise floor. For embeddings (the "retrieval" and "embedding" metrics) every
condition also carries the other retrieval figures beside the budgeted one
(`Condition.figures`): nDCG@10, recall@10, Spearman, nearest-neighbour agreement, cosine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from inferopt.data import Dataset, batch_first, batched_rows
from inferopt.iospec import IOSpec
from inferopt.measure.channels import channel_axis, compare_outputs
from inferopt.measure.fidelity import RETRIEVAL_K, retrieval_scores
from inferopt.measure.interval import Interval, bootstrap, resample_indices

BATCH = 8  # rows per batch in the batched condition
USER_RESAMPLES = 200  # a user's metric function is called once per resample: fewer of them
EMBEDDING_METRICS = ("retrieval", "embedding")  # whose conditions carry the retrieval figures
NDCG, RECALL = f"ndcg@{RETRIEVAL_K}", f"recall@{RETRIEVAL_K}"
Rows = list[dict[str, np.ndarray]]


@dataclass(frozen=True)
class Outputs:
    """A model's tensor outputs for every sample of a dataset: run alone (batch 1), and cut
    from batches of BATCH rows (None when the model has no batch axis); each with its batch
    axis first (data.batch_first)."""

    alone: Rows
    batched: Rows | None


def run_outputs(model: Any, data: Dataset, batched: bool = True) -> Outputs:
    """`model` (an inferopt Model) on every sample of `data`, alone and batched."""
    names = [t.name for t in model.io.tensor_outputs]
    layout = data.stacking
    raw = [_only(model.run(data.batch([i])), names) for i in range(len(data))]
    alone = [batch_first(r, layout) for r in raw]
    if not batched or model.io.batch_axis is None or len(data) < 2:
        return Outputs(alone, None)
    feeds = [data.batch([i]) for i in range(len(data))]
    rows = batched_rows(lambda f: _only(model.run(f), names), feeds, raw, layout, BATCH)
    return Outputs(alone, [batch_first(r, layout) for r in rows])


def subset(outputs: Outputs, indices: Sequence[int]) -> Outputs:
    batched = None if outputs.batched is None else [outputs.batched[i] for i in indices]
    return Outputs([outputs.alone[i] for i in indices], batched)


def _only(outputs: dict[str, Any], names: list[str]) -> dict[str, np.ndarray]:
    return {n: outputs[n] for n in names}


def first_matrix(rows: Rows, name: str) -> np.ndarray | None:
    """The output `name` of every sample as one row each, [samples, values]; None when the
    samples' outputs differ in size (token-level outputs of different lengths)."""
    flat = [r[name].reshape(1, -1) for r in rows]
    if len({f.shape[1] for f in flat}) != 1:
        return None
    return np.concatenate(flat).astype(np.float64)


@dataclass(frozen=True)
class Condition:
    """Candidate against the baseline's batch-1 answers under one condition."""

    name: str  # "alone" | "batched"
    metric_drop: float  # in the metric's units
    metric_interval: tuple[float, float]
    channel_drop: float  # the worst channel or decision, in [0, 1]
    channel_interval: tuple[float, float]
    worst: str  # measure.channels' one-line description of the worst channel
    # Embeddings: the figures beside the budgeted one, each a mean over the held-out samples:
    # "ndcg@10", "recall@10", "spearman", "nn_agreement" (top-1 neighbour), "cosine".
    figures: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Fidelity:
    """What the budget sees of a candidate. `drop` is the worst of the metric's drop and
    every channel's, alone and batched; `drop_high` the upper end of its 95% interval."""

    metric: str
    cosine: float  # mean cosine of the first output to the baseline's, alone
    agreement: float  # top-1 / nearest-neighbour agreement, else cosine; alone
    task_score: float | None = None  # the candidate's score on labels or the user's metric
    baseline_task_score: float | None = None
    conditions: tuple[Condition, ...] = ()
    samples: int = 0

    @property
    def figures(self) -> dict[str, float]:
        """The alone condition's retrieval figures (embeddings only; else empty)."""
        return next((c.figures for c in self.conditions if c.name == "alone"), {})

    @property
    def metric_drop(self) -> float:
        return max((c.metric_drop for c in self.conditions), default=0.0)

    @property
    def channel_drop(self) -> float:
        return max((c.channel_drop for c in self.conditions), default=0.0)

    @property
    def drop(self) -> float:
        """The worst drop, in the metric's units (a channel's drop counts as a share of 1)."""
        return max(self.metric_drop, self.channel_drop)

    @property
    def drop_high(self) -> float:
        highs = [c.metric_interval[1] for c in self.conditions]
        highs += [c.channel_interval[1] for c in self.conditions]
        return max(highs, default=0.0)

    def budget_drop(self, baseline_score: float, relative: bool, upper: bool) -> float:
        """The drop a relative or absolute budget is compared with: the metric's drop, and
        each channel's drop counted as that share of the baseline's score (so that a relative
        budget reads both as a share). `upper`: the intervals' upper ends."""
        scale = baseline_score if relative else 1.0
        worst = 0.0
        for c in self.conditions:
            metric = c.metric_interval[1] if upper else c.metric_drop
            channel = c.channel_interval[1] if upper else c.channel_drop
            worst = max(worst, metric, channel * scale)
        return worst

    def decided_by(self) -> str:
        """Which figure is the worst, in words, for the report."""
        if not self.conditions:
            return "nothing measured"
        by_metric = max(self.conditions, key=lambda c: c.metric_drop)
        by_channel = max(self.conditions, key=lambda c: c.channel_drop)
        if by_metric.metric_drop >= by_channel.channel_drop:
            lo, hi = by_metric.metric_interval
            drop = by_metric.metric_drop
            return f"{self.metric} {by_metric.name}: drop {drop:.4f} [{lo:.4f}, {hi:.4f}]"
        return f"{by_channel.name}: {by_channel.worst}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(drop=self.drop, drop_high=self.drop_high, decided_by=self.decided_by())
        return data

    @staticmethod
    def from_json(data: dict[str, Any]) -> Fidelity:
        known = {k: v for k, v in data.items() if k in Fidelity.__dataclass_fields__}
        conditions = tuple(
            Condition(**{**c, "metric_interval": tuple(c["metric_interval"]),
                         "channel_interval": tuple(c["channel_interval"])})
            for c in known.pop("conditions", ())
        )  # fmt: skip
        return Fidelity(**known, conditions=conditions)


@dataclass(frozen=True)
class MetricRows:
    """A metric as per-sample values, so that its drop has a bootstrap interval."""

    agreement: float
    drop: float
    interval: tuple[float, float]
    task_score: float | None = None
    baseline_task_score: float | None = None


UserFunction = Callable[[np.ndarray, np.ndarray | None], float]


@dataclass(frozen=True)
class Judge:
    """The metric and channel settings one search or recipe compares every candidate with."""

    metric: str  # "top1" | "retrieval" | "embedding" | "agreement" | a user's module:function
    builtin: str  # the built-in metric computed beside a user's
    labels: np.ndarray | None = None
    user: UserFunction | None = None
    channel_axes: dict[str, int | None] = field(default_factory=dict)
    decisions: dict[str, Any] = field(default_factory=dict)

    def measure(self, candidate: Outputs, reference: Outputs, seed: int = 0) -> Fidelity:
        first = next(iter(reference.alone[0]))
        ref = first_matrix(reference.alone, first)
        got = first_matrix(candidate.alone, first)
        cosine = _cosine_rows(ref, got).mean() if ref is not None and got is not None else 1.0
        alone_condition, alone = self._condition("alone", candidate.alone, reference.alone, seed)
        conditions = [alone_condition]
        if candidate.batched is not None:
            conditions.append(self.condition("batched", candidate.batched, reference.alone, seed))
        return Fidelity(
            self.metric,
            float(cosine),
            alone.agreement,
            alone.task_score,
            alone.baseline_task_score,
            tuple(conditions),
            len(reference.alone),
        )

    def condition(self, name: str, got: Rows, ref: Rows, seed: int) -> Condition:
        """The candidate's rows `got` against the baseline's `ref` (its batch-1 answers)."""
        return self._condition(name, got, ref, seed)[0]

    def _condition(
        self, name: str, got: Rows, ref: Rows, seed: int
    ) -> tuple[Condition, MetricRows]:
        scores = self._retrieval(got, ref)
        metric = self.metric_rows(got, ref, seed, scores)
        channels = compare_outputs(
            ref, got, channel_axes=self.channel_axes, decisions=self.decisions, seed=seed
        )
        interval = channels.drop_interval
        condition = Condition(
            name,
            metric.drop,
            metric.interval,
            channels.drop,
            (interval.low, interval.high),
            channels.describe(),
            {} if scores is None else _embedding_figures(got, ref, scores),
        )
        return condition, metric

    def _retrieval(self, got_rows: Rows, ref_rows: Rows) -> dict[str, np.ndarray] | None:
        """Per-query retrieval scores of the first output, for the embedding metrics when it
        is one row of a fixed size per sample and there are >= 2 samples; else None."""
        if self.user is not None or self.builtin not in EMBEDDING_METRICS or len(ref_rows) < 2:
            return None
        first = next(iter(ref_rows[0]))
        ref, got = first_matrix(ref_rows, first), first_matrix(got_rows, first)
        return None if ref is None or got is None else retrieval_scores(ref, got, RETRIEVAL_K)

    def metric_rows(
        self,
        got_rows: Rows,
        ref_rows: Rows,
        seed: int,
        scores: dict[str, np.ndarray] | None = None,
    ) -> MetricRows:
        """The metric per sample, its drop and interval. `scores`: the retrieval scores of
        these rows when already computed (`_retrieval`)."""
        first = next(iter(ref_rows[0]))
        ref, got = first_matrix(ref_rows, first), first_matrix(got_rows, first)
        if ref is None or got is None:  # outputs of differing sizes: per-sample cosine
            cos = np.array([_cosine_rows(r[first].reshape(1, -1), g[first].reshape(1, -1))[0]
                            for r, g in zip(ref_rows, got_rows, strict=True)])  # fmt: skip
            return _mean_drop(cos, seed)
        if self.user is not None:
            return self._user_rows(got, ref, seed)
        if self.builtin == "top1":
            return self._top1_rows(got, ref, seed)
        if self.builtin == "retrieval" and len(ref) >= 2:
            ndcg = (scores or retrieval_scores(ref, got, RETRIEVAL_K))[NDCG]
            return _mean_drop(ndcg, seed)  # the baseline's nDCG is 1: the drop is 1 - mean
        if self.builtin == "embedding" and len(ref) >= 2:
            same = _neighbours(ref) == _neighbours(got)
            return _mean_drop(same.astype(np.float64), seed)
        return _mean_drop(_cosine_rows(ref, got), seed)

    def _top1_rows(self, got: np.ndarray, ref: np.ndarray, seed: int) -> MetricRows:
        agree = (got.argmax(1) == ref.argmax(1)).astype(np.float64)
        if self.labels is None:
            return _mean_drop(agree, seed)
        right_ref = (ref.argmax(1) == self.labels).astype(np.float64)
        right_got = (got.argmax(1) == self.labels).astype(np.float64)
        lost = right_ref - right_got
        interval = bootstrap(np.mean, lost, seed=seed)
        return MetricRows(
            float(agree.mean()),
            float(lost.mean()),
            (interval.low, interval.high),
            float(right_got.mean()),
            float(right_ref.mean()),
        )

    def _user_rows(self, got: np.ndarray, ref: np.ndarray, seed: int) -> MetricRows:
        assert self.user is not None
        score_got, score_ref = self.user(got, self.labels), self.user(ref, self.labels)
        replicates = []
        for rows in resample_indices(len(ref), USER_RESAMPLES, seed):
            labels = None if self.labels is None else self.labels[rows]
            replicates.append(self.user(ref[rows], labels) - self.user(got[rows], labels))
        low, high = np.percentile(replicates, [2.5, 97.5])
        agreement = float(_cosine_rows(ref, got).mean())
        drop = score_ref - score_got
        return MetricRows(agreement, drop, (min(low, drop), max(high, drop)), score_got, score_ref)


def _mean_drop(agree: np.ndarray, seed: int) -> MetricRows:
    """Agreement per sample in [0, 1]: the drop is 1 - mean, its interval bootstrapped."""
    interval: Interval = bootstrap(np.mean, agree, seed=seed)
    mean = float(agree.mean())
    return MetricRows(mean, 1.0 - mean, (1.0 - interval.high, 1.0 - interval.low))


def _embedding_figures(
    got_rows: Rows, ref_rows: Rows, scores: dict[str, np.ndarray]
) -> dict[str, float]:
    """The retrieval figures beside the budgeted one, each a mean over the samples."""
    first = next(iter(ref_rows[0]))
    ref, got = first_matrix(ref_rows, first), first_matrix(got_rows, first)
    assert ref is not None and got is not None  # scores exist only for matrices
    figures = {name: float(values.mean()) for name, values in scores.items()}
    figures["nn_agreement"] = float(np.mean(_neighbours(ref) == _neighbours(got)))
    figures["cosine"] = float(_cosine_rows(ref, got).mean())
    return figures


def _cosine_rows(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Cosine of each row pair; non-finite rows score 0 (never agreement); two all-zero rows 1."""
    a, b = ref.astype(np.float64), got.astype(np.float64)
    finite = np.isfinite(a).all(1) & np.isfinite(b).all(1)
    a, b = np.where(np.isfinite(a), a, 0.0), np.where(np.isfinite(b), b, 0.0)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    cos = np.sum(a * b, axis=1) / np.maximum(na * nb, 1e-300)
    cos = np.where(both_zero, 1.0, cos)
    result: np.ndarray = np.where(finite, cos, 0.0)
    return result


def _neighbours(x: np.ndarray) -> np.ndarray:
    if not np.isfinite(x).all():
        return np.full(len(x), -1)  # a non-finite embedding has no trustworthy neighbour
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    nearest: np.ndarray = np.argmax(sims, axis=1)
    return nearest


def noise_floor(judge: Judge, baseline: Outputs) -> Fidelity | None:
    """The baseline batched against itself alone: what the metric reads for a model that is
    unchanged but for the batch it runs in (float summation order, padding). A budget below
    it cannot tell damage from noise."""
    if baseline.batched is None:
        return None
    return judge.measure(Outputs(baseline.batched, None), baseline)


def checks(
    judge: Judge,
    data: Dataset,
    reference: Outputs,
    noise: Fidelity | None,
    io: IOSpec | None = None,
) -> dict[str, Any]:
    """What a fidelity figure was checked on, for the artifact's manifest: samples, batch
    shapes, outputs and their channels and decisions, the interval, the noise floor."""
    first = reference.alone[0]
    outputs = {}
    for name, value in first.items():
        axis = channel_axis(name, value.ndim, judge.channel_axes)
        channels = 1 if axis is None else int(value.shape[axis])
        outputs[name] = {
            "shape": list(value.shape),
            "channel_axis": axis,
            "channels": channels,
            "decision": judge.decisions.get(name),
        }
    conditions = [{"name": "alone", "batch": 1}]
    if reference.batched is not None:
        padded = data.stacking.seq != {} or data.seq_axis is not None
        conditions.append({"name": "batched", "batch": BATCH, "padded_to_longest": padded})
    return {
        "samples": len(reference.alone),
        "metric": judge.metric,
        "conditions": conditions,
        "outputs": outputs,
        "interval": "95% percentile bootstrap over the held-out samples",
        "noise_floor": None if noise is None else noise.to_json(),
        # Sequences and maps (ZipMap) go through every pass untouched but are not compared.
        "not_compared": [f"{t.name} ({t.kind})" for t in io.outputs if not t.is_tensor]
        if io is not None
        else [],
    }


def describe_checks(found: dict[str, Any]) -> str:
    """One line of `checks(...)`: what every fidelity figure above was measured on."""

    def shape(c: dict[str, Any]) -> str:
        if c["name"] == "alone":
            return "alone (batch 1)"
        padded = " padded to the longest" if c.get("padded_to_longest") else ""
        return f"in batches of {c['batch']}{padded}"

    shapes = " and ".join(shape(c) for c in found["conditions"])
    if found.get("not_compared"):
        shapes += f"; not compared (not tensors): {', '.join(found['not_compared'])}"
    outs = ", ".join(
        f"{name} ({o['channels']} channel{'s' if o['channels'] != 1 else ''}"
        + (f", {o['decision']} decisions" if o["decision"] else "") + ")"
        for name, o in found["outputs"].items()
    )  # fmt: skip
    return f"{found['samples']} held-out samples, {shapes}; outputs: {outs}; {found['interval']}"


def condition_lines(f: Fidelity) -> list[str]:
    """One line per condition: the metric's drop and the worst channel, with intervals."""
    lines = []
    for c in f.conditions:
        where = "alone (batch 1)" if c.name == "alone" else f"in batches of {BATCH}"
        lo, hi = c.metric_interval
        figures = f"; {describe_figures(c.figures)}" if c.figures else ""
        lines.append(
            f"{where}: {f.metric} drop {c.metric_drop:.4f} [{lo:.4f}, {hi:.4f}]{figures}; {c.worst}"
        )
    return lines


FIGURE_NAMES = {NDCG: "nDCG@10", RECALL: "recall@10", "spearman": "Spearman",
                "nn_agreement": "top-1 neighbour agreement", "cosine": "mean cosine"}  # fmt: skip


def describe_figures(figures: dict[str, float]) -> str:
    """`Condition.figures` in words, e.g. "nDCG@10 0.9981, recall@10 0.9910, ..."."""
    return ", ".join(f"{FIGURE_NAMES.get(k, k)} {v:.4f}" for k, v in figures.items())
