"""What the server counts: Prometheus metrics on /metrics, and the Triton-style statistics of
the statistics extension (/v2/models/{m}/stats and gRPC ModelStatistics). Both are fed from
the same calls, made by the batcher and the request handlers.

Label values are only names of models that exist in the repository (and fixed reasons), never
text from a request, so a client cannot blow up the number of series.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from inferopt.serve.scheduler import Finish

# Why a request ended; every request is counted exactly once under one of these.
OUTCOMES = (
    "success",
    "bad_request",
    "not_found",
    "not_ready",
    "rejected",
    "timeout",
    "cancelled",
    "model_error",
)
REJECTIONS = ("queue_full", "deadline", "queue_wait", "draining")
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# The `le` labels of _SECONDS's buckets, as prometheus_client writes them.
_LE = [floatToGoString(b) for b in (*_SECONDS, math.inf)]  # type: ignore[no-untyped-call]


class Metrics:
    """Every metric of one server, in its own registry (two servers in one process do not
    collide, and /metrics shows only what this server counts)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("model", "version")
        r = self.registry
        # By (model, version); kept when a version is replaced, as Prometheus series are.
        self.requests: dict[tuple[str, str], RequestCounts] = {}
        self.unknown = RequestCounts()  # requests for models not in the repository
        r.register(_RequestCollector(self))
        self.inferences = Counter(
            "inferopt_inferences",
            "Rows inferred (a request may carry several)",
            labels,
            registry=r,
        )
        self.executions = Counter(
            "inferopt_executions", "Model executions (batches run)", labels, registry=r
        )
        self.pending = Gauge(
            "inferopt_pending_requests", "Requests queued or running", labels, registry=r
        )
        self.queue_seconds = Histogram(
            "inferopt_queue_seconds",
            "Time a request waited before its batch ran",
            labels,
            buckets=_SECONDS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "inferopt_compute_seconds",
            "Time one batch took to run",
            labels,
            buckets=_SECONDS,
            registry=r,
        )
        self.batch_size = Histogram(
            "inferopt_batch_size",
            "Rows per model execution",
            labels,
            buckets=_BATCH_SIZES,
            registry=r,
        )

        self.generation = GenerationFamilies(r, labels)

    def for_version(self, model: str, version: str) -> VersionMetrics:
        return VersionMetrics(self, model, version)

    def unknown_model(self, outcome: str) -> None:
        """A request for a model the repository does not have: counted without its name."""
        self.unknown.outcomes[outcome] += 1


class RequestCounts:
    """Requests of one model version by outcome, its rejections by reason, and the time to
    answer each: plain numbers, exposed by `_RequestCollector` as Prometheus series.

    Why not prometheus_client's Counter and Histogram: each update takes a lock and several
    calls, about 4 µs for the three updates of a refusal, more than everything else the HTTP
    gate does to refuse a request (see gate.py). These are updated on the event-loop thread
    only (the handlers, the gate and the batcher's admission all run there), and read there
    (/metrics, statistics), so they need no lock.
    """

    def __init__(self) -> None:
        self.created = time.time()
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.rejections = dict.fromkeys(REJECTIONS, 0)
        self.buckets = [0] * (len(_SECONDS) + 1)  # by upper bound, as _SECONDS, then +Inf
        self.seconds = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(_SECONDS, seconds)] += 1  # the first bound >= it
        self.seconds += seconds


class _RequestCollector:
    """inferopt_requests, inferopt_rejections and inferopt_request_seconds, from the
    `RequestCounts` of every version and the count of unknown models, in the form
    prometheus_client gives its own counters and histograms (with `_created`)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Metric]:  # the names, so the registry catches a clash
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        requests, rejections, seconds = self._families()
        for (model, version), c in self._metrics.requests.items():
            for outcome, n in c.outcomes.items():
                requests.add_metric((model, version, outcome), n, created=c.created)
            for reason, n in c.rejections.items():
                rejections.add_metric((model, version, reason), n, created=c.created)
            cumulative = itertools.accumulate(c.buckets)
            seconds.add_metric((model, version), list(zip(_LE, cumulative, strict=True)), c.seconds)
            labels = {"model": model, "version": version}
            seconds.samples.append(Sample(f"{seconds.name}_created", labels, c.created))
        unknown = self._metrics.unknown
        for outcome, n in unknown.outcomes.items():
            if n:  # only the outcomes that occurred, as the model name is not known
                requests.add_metric(("", "", outcome), n, created=unknown.created)
        yield from (requests, rejections, seconds)

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, CounterMetricFamily, HistogramMetricFamily]:
        labels = ["model", "version"]
        return (
            CounterMetricFamily(
                "inferopt_requests", "Inference requests by outcome", labels=[*labels, "outcome"]
            ),
            CounterMetricFamily(
                "inferopt_rejections",
                "Requests refused by admission control",
                labels=[*labels, "reason"],
            ),
            HistogramMetricFamily(
                "inferopt_request_seconds",
                "Time from a request's arrival to its answer",
                labels=labels,
            ),
        )


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)

    def to_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class Statistics:
    """The statistics extension's counters for one model version."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, BatchStats] = field(default_factory=dict)


class VersionMetrics:
    """The metrics and statistics of one model version, with one method per event."""

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self.model = model
        self.version = version
        self.stats = Statistics()
        self._lock = threading.Lock()  # executions are recorded from worker threads
        # The labelled series, looked up once: `labels()` costs a lock and a dictionary
        # lookup per call, and these are updated several times per request.
        m, labels = metrics, (model, version)
        self._requests = m.requests.setdefault(labels, RequestCounts())
        self._pending = m.pending.labels(*labels)
        self._queue_seconds = m.queue_seconds.labels(*labels)
        self._inferences = m.inferences.labels(*labels)
        self._executions = m.executions.labels(*labels)
        self._compute_seconds = m.compute_seconds.labels(*labels)
        self._batch_size = m.batch_size.labels(*labels)

    def finished(self, outcome: str, seconds: float) -> None:
        """On the event-loop thread only (see RequestCounts), as are the statistics' readers:
        the success and fail totals need no lock either."""
        requests = self._requests
        requests.outcomes[outcome] += 1
        requests.observe(seconds)
        (self.stats.success if outcome == "success" else self.stats.fail).add(seconds)

    def rejected(self, reason: str) -> None:
        self._requests.rejections[reason] += 1

    def pending(self, delta: int) -> None:
        self._pending.inc(delta)

    def queued(self, seconds: float) -> None:
        self._queue_seconds.observe(seconds)
        with self._lock:
            self.stats.queue.add(seconds)

    def executed(self, rows: int, merge_s: float, run_s: float, split_s: float) -> None:
        self._inferences.inc(rows)
        self._executions.inc()
        self._compute_seconds.observe(run_s)
        self._batch_size.observe(rows)
        with self._lock:
            s = self.stats
            s.inference_count += rows
            s.execution_count += 1
            s.last_inference_ms = int(time.time() * 1000)
            for total, seconds in (
                (s.compute_input, merge_s),
                (s.compute_infer, run_s),
                (s.compute_output, split_s),
            ):
                total.add(seconds)
            batch = s.batches.setdefault(rows, BatchStats())
            batch.compute_input.add(merge_s)
            batch.compute_infer.add(run_s)
            batch.compute_output.add(split_s)

    def to_json(self) -> dict[str, Any]:
        """This version's entry of the statistics extension's `model_stats` list."""
        with self._lock:
            s = self.stats
            stats = {
                name: getattr(s, name).to_json()
                for name in (
                    "success",
                    "fail",
                    "queue",
                    "compute_input",
                    "compute_infer",
                    "compute_output",
                )
            }
            stats["cache_hit"] = Duration().to_json()
            stats["cache_miss"] = Duration().to_json()
            return {
                "name": self.model,
                "version": self.version,
                "last_inference": s.last_inference_ms,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": stats,
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": b.compute_input.to_json(),
                        "compute_infer": b.compute_infer.to_json(),
                        "compute_output": b.compute_output.to_json(),
                    }
                    for size, b in sorted(s.batches.items())
                ],
            }


class GenerationFamilies:
    """The metrics of generators (continuous batching, serve/scheduler.py), named as vLLM
    names the same figures, with this server's `inferopt_` prefix and labels."""

    def __init__(self, r: CollectorRegistry, labels: tuple[str, ...]) -> None:
        self.running = Gauge(
            "inferopt_num_requests_running", "Generations holding a KV-cache slot", labels,
            registry=r,
        )  # fmt: skip
        self.waiting = Gauge(
            "inferopt_num_requests_waiting", "Generations queued for a KV-cache slot", labels,
            registry=r,
        )  # fmt: skip
        self.kv_usage = Gauge(
            "inferopt_kv_cache_usage_perc",
            "Fraction of the KV-cache slots held (0 to 1; the slots are allocated up front)",
            labels,
            registry=r,
        )
        self.ttft = Histogram(
            "inferopt_time_to_first_token_seconds",
            "Time from a generation's arrival to its first token",
            labels,
            buckets=_SECONDS,
            registry=r,
        )
        self.itl = Histogram(
            "inferopt_inter_token_latency_seconds",
            "Time between two tokens of one generation",
            labels,
            buckets=_SECONDS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "inferopt_prompt_tokens", "Prompt tokens of finished generations", labels, registry=r
        )
        self.generation_tokens = Counter(
            "inferopt_generation_tokens",
            "Tokens generated (counted as each generation ends)",
            labels,
            registry=r,
        )
        # vLLM's prefix_cache_queries / prefix_cache_hits: their ratio is the hit rate.
        self.prefix_queries = Counter(
            "inferopt_prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache (admitted prompts, with the cache on)",
            labels,
            registry=r,
        )
        self.prefix_hits = Counter(
            "inferopt_prefix_cache_hits",
            "Prompt tokens whose KV cache came from the prefix cache instead of a prefill",
            labels,
            registry=r,
        )
        self.finished = Counter(
            "inferopt_request_success",
            "Generations ended, by finished_reason: stop, length, deadline, cancelled, error",
            (*labels, "finished_reason"),
            registry=r,
        )


class GenerationEvents:
    """The scheduler's events (serve/scheduler.Events) for one generator version, and its
    gauges, read from `stats` (the scheduler's `stats()`) when /metrics is scraped.

    Called from the scheduler's worker thread, except `rejected` (at submission, on the event
    loop thread, as RequestCounts needs): prometheus_client's metrics take their own locks."""

    def __init__(
        self, version: VersionMetrics, families: GenerationFamilies, stats: Callable[[], Any]
    ) -> None:
        labels = (version.model, version.version)
        self._version = version
        self._ttft = families.ttft.labels(*labels)
        self._itl = families.itl.labels(*labels)
        self._prompt = families.prompt_tokens.labels(*labels)
        self._generated = families.generation_tokens.labels(*labels)
        self._prefix_queries = families.prefix_queries.labels(*labels)
        self._prefix_hits = families.prefix_hits.labels(*labels)
        self._finished = families.finished
        self._labels = labels
        families.running.labels(*labels).set_function(lambda: stats()["running"])
        families.waiting.labels(*labels).set_function(lambda: stats()["waiting"])
        families.kv_usage.labels(*labels).set_function(
            lambda: (s := stats())["running"] / max(1, s["slots"])
        )

    def first_token(self, ttft_s: float) -> None:
        self._ttft.observe(ttft_s)

    def token(self, itl_s: float) -> None:
        self._itl.observe(itl_s)

    def finished(self, finish: Finish) -> None:
        self._prompt.inc(finish.prompt_tokens)
        self._generated.inc(finish.completion_tokens)
        self._finished.labels(*self._labels, finish.reason).inc()

    def rejected(self, reason: str) -> None:
        self._version.rejected(reason)

    def prefix(self, prompt_tokens: int, cached_tokens: int) -> None:
        self._prefix_queries.inc(prompt_tokens)
        self._prefix_hits.inc(cached_tokens)
