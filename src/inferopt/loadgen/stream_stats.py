"""What a streaming run's Timings add up to: percentiles of TTFT, ITL, TPOT and end-to-end
latency, output tokens and requests per second, goodput against TTFT and TPOT objectives, and
failures by HTTP status and by kind.

Definitions (docs/bench.md, "Streams"): TTFT, from the request's send (its scheduled send in
an open loop) to its first chunk with text; ITL, every gap between successive text chunks,
pooled over requests; TPOT, per request (e2e - TTFT) / (output tokens - 1); e2e, from the send
to the end of the stream. Latencies are in seconds in Timings, milliseconds here.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inferopt.loadgen.stats import PERCENTILES, percentile_label
from inferopt.loadgen.streaming import KINDS, Timing


@dataclass(frozen=True)
class Objectives:
    """Service-level objectives, in ms; None: not judged on it.

    Raises:
        ValueError: an objective that is not > 0.
    """

    ttft_ms: float | None = None
    tpot_ms: float | None = None

    def __post_init__(self) -> None:
        for name in ("ttft_ms", "tpot_ms"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"the {name[:4].upper()} SLO must be > 0 ms, got {value:g}")

    def met(self, t: Timing) -> bool:
        """An OK request within both objectives. A request of one output token has no TPOT
        and is judged on TTFT alone."""
        if t.outcome != "ok":
            return False
        if self.ttft_ms is not None and not t.ttft * 1000.0 <= self.ttft_ms:
            return False
        return self.tpot_ms is None or math.isnan(t.tpot) or t.tpot * 1000.0 <= self.tpot_ms


@dataclass(frozen=True)
class StreamSummary:
    seconds: float  # from the run's start to the last request's end
    requests: int  # every request the run made, dropped ones included
    ok: int
    output_tokens: int  # of OK requests
    requests_per_s: float  # OK requests per second
    output_tokens_per_s: float
    good: int  # OK requests within the objectives (= ok without objectives)
    ttft_ms: dict[str, float]  # "p50", "p90", "p99", "p99.9", "mean"; NaN when none
    itl_ms: dict[str, float]
    tpot_ms: dict[str, float]
    e2e_ms: dict[str, float]
    by_status: dict[str, int]  # HTTP statuses of refused requests ("429", "503", ...)
    by_kind: dict[str, int]  # every kind of KINDS, zeros included

    @property
    def goodput_share(self) -> float:
        """Good requests over every request made; NaN when none was."""
        return self.good / self.requests if self.requests else math.nan

    @property
    def goodput_per_s(self) -> float:
        return self.good / self.seconds

    @property
    def failed(self) -> int:
        return self.requests - self.ok

    def to_json(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "requests": {"total": self.requests, "ok": self.ok, "failed": self.failed},
            "throughput": {
                "requests_per_s": self.requests_per_s,
                "output_tokens_per_s": self.output_tokens_per_s,
                "output_tokens": self.output_tokens,
            },
            "goodput": {
                "requests": self.good,
                "share": self.goodput_share,
                "per_s": self.goodput_per_s,
            },
            "ttft_ms": self.ttft_ms,
            "itl_ms": self.itl_ms,
            "tpot_ms": self.tpot_ms,
            "e2e_ms": self.e2e_ms,
            "errors": {
                "by_status": self.by_status,
                "rejected_429": self.by_status.get("429", 0),
                "by_kind": self.by_kind,
            },
        }


def distribution_ms(seconds: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Percentiles and mean in ms of the finite values; NaN for each when there are none."""
    values = np.asarray(seconds, dtype=np.float64)
    values = values[np.isfinite(values)] * 1000.0
    labels = [percentile_label(q) for q in PERCENTILES]
    if not values.size:
        return dict.fromkeys([*labels, "mean"], math.nan)
    found = np.percentile(values, PERCENTILES)
    return {**dict(zip(labels, map(float, found), strict=True)), "mean": float(values.mean())}


def summarize(timings: Sequence[Timing], seconds: float, objectives: Objectives) -> StreamSummary:
    """Raises ValueError when `seconds` is not > 0."""
    if not seconds > 0:
        raise ValueError(f"a summary needs a positive duration, got {seconds}")
    ok = [t for t in timings if t.outcome == "ok"]
    tokens = sum(t.output_tokens for t in ok)
    outcomes = Counter(t.outcome for t in timings)
    return StreamSummary(
        seconds=seconds,
        requests=len(timings),
        ok=len(ok),
        output_tokens=tokens,
        requests_per_s=len(ok) / seconds,
        output_tokens_per_s=tokens / seconds,
        good=sum(objectives.met(t) for t in ok),
        ttft_ms=distribution_ms([t.ttft for t in ok]),
        itl_ms=distribution_ms([gap for t in ok for gap in t.itl]),
        tpot_ms=distribution_ms([t.tpot for t in ok]),
        e2e_ms=distribution_ms([t.e2e for t in ok]),
        by_status={k: n for k, n in sorted(outcomes.items()) if k.isdigit()},
        by_kind={kind: outcomes.get(kind, 0) for kind in KINDS},
    )
