"""Samples (one per request) and what is computed from them: percentiles, throughput,
goodput, counts by outcome, and whether measurement windows agree; and the tally of every
answer by status, with the server's message, that says why a run failed.

Latency is in seconds here; the report converts to milliseconds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

# How a request ended. "dropped": never sent, because the generator's cap on outstanding
# requests was reached (an open-loop run asked for more than it could hold).
OUTCOMES = ("ok", "429", "503", "504", "other", "timeout", "dropped")
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


@dataclass(frozen=True)
class Sample:
    sent: float  # seconds from the run's start: scheduled send (open loop) or send (closed)
    latency: float  # seconds from `sent` to the answer (or to the failure)
    outcome: str  # one of OUTCOMES

    @property
    def done(self) -> float:
        return self.sent + self.latency


@dataclass(frozen=True)
class Summary:
    """Statistics of the samples that completed within `seconds` of measurement."""

    seconds: float
    requests: int
    throughput: float  # answered OK per second
    goodput: float  # answered OK within the SLO per second (= throughput without an SLO)
    percentiles_ms: dict[str, float]  # "p50", "p90", "p99", "p99.9" of OK answers
    mean_ms: float
    outcomes: dict[str, int]  # every outcome, zeros included

    @property
    def p99_ms(self) -> float:
        return self.percentiles_ms["p99"]

    @property
    def errors(self) -> int:
        return self.requests - self.outcomes["ok"]


@dataclass
class Tally:
    """Every answer of the run by status, warm-up included ("ok", an HTTP status such as
    "400", a gRPC code name, "timeout" or "connection"), and the first message of each failing
    status: a run that fails should say how, in the server's words."""

    counts: Counter[str] = field(default_factory=Counter)
    messages: dict[str, str] = field(default_factory=dict)

    def add(self, status: str, message: str | None = None) -> None:
        self.counts[status] += 1
        if message is not None and status not in self.messages:
            self.messages[status] = message

    def add_failure(self, status: str, describe: Callable[[], str]) -> None:
        """Count a failure; `describe` (decoding a body costs CPU) only runs for the first
        of its status."""
        self.add(status, describe() if status not in self.messages else None)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def ok(self) -> int:
        return self.counts["ok"]

    @property
    def failed(self) -> int:
        return self.total - self.ok

    def top_failure(self) -> tuple[str, int, str] | None:
        """The most common failing status, its count and its first message; None if none."""
        failures = [(count, status) for status, count in self.counts.items() if status != "ok"]
        if not failures:
            return None
        count, status = max(failures)
        return status, count, self.messages.get(status, "")


def percentile_label(q: float) -> str:
    return f"p{q:g}"


def summarize(samples: Sequence[Sample], seconds: float, slo_ms: float | None) -> Summary:
    if not seconds > 0:
        raise ValueError(f"a summary needs a positive duration, got {seconds}")
    counts = Counter(s.outcome for s in samples)
    ok = np.array([s.latency for s in samples if s.outcome == "ok"], dtype=np.float64)
    if ok.size:
        values = np.percentile(ok, PERCENTILES) * 1000.0
        percentiles = {
            percentile_label(q): float(v) for q, v in zip(PERCENTILES, values, strict=True)
        }
        mean_ms = float(ok.mean() * 1000.0)
    else:  # nothing answered: latency is undefined, not zero
        percentiles = {percentile_label(q): float("nan") for q in PERCENTILES}
        mean_ms = float("nan")
    good = ok.size if slo_ms is None else int(np.count_nonzero(ok * 1000.0 <= slo_ms))
    return Summary(
        seconds=seconds,
        requests=len(samples),
        throughput=ok.size / seconds,
        goodput=good / seconds,
        percentiles_ms=percentiles,
        mean_ms=mean_ms,
        outcomes={name: counts.get(name, 0) for name in OUTCOMES},
    )


def within(values: Sequence[float], tolerance: float) -> bool:
    """Whether every value is within `tolerance` (a fraction) of their mean. NaN never agrees."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0 or not np.all(np.isfinite(array)):
        return False
    mean = float(array.mean())
    if mean == 0.0:
        return bool(np.all(array == 0.0))
    return bool(np.all(np.abs(array - mean) <= tolerance * abs(mean)))


def windows_agree(windows: Sequence[Summary], count: int, tolerance: float) -> bool:
    """perf_analyzer's rule: the last `count` windows agree on throughput and p99."""
    if len(windows) < count:
        return False
    last = windows[-count:]
    return within([w.throughput for w in last], tolerance) and within(
        [w.p99_ms for w in last], tolerance
    )
