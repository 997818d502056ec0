"""The server's side of a run, where it exposes inferopt's Prometheus metrics on /metrics:
scrape before and after, and take the difference (counters and histogram sums only grow).

    before = await scrape(http, model); ...run...; after = await scrape(http, model)
    times = diff(before, after)   # None when the server has no such metrics
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

# Sample names as exposed (a histogram's _sum/_count, a counter's _total), see serve/metrics.py.
_WANTED = (
    "inferopt_queue_seconds_sum",
    "inferopt_queue_seconds_count",
    "inferopt_compute_seconds_sum",
    "inferopt_compute_seconds_count",
    "inferopt_inferences_total",
    "inferopt_executions_total",
)

Snapshot = dict[str, float]


@dataclass(frozen=True)
class ServerTimes:
    """Averages over the scraped interval: per request queued, per batch run."""

    requests_queued: int
    queue_ms: float  # mean wait of a request before its batch ran
    executions: int
    compute_ms: float  # mean time of one batch
    batch_size: float  # rows per execution


def parse(text: str, model: str) -> Snapshot:
    """The wanted samples of `model` (summed over its versions); absent ones are left out."""
    totals: Snapshot = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in _WANTED and sample.labels.get("model") == model:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


async def scrape(http: httpx.AsyncClient, url: str, model: str) -> Snapshot | None:
    """None when there is no /metrics to read (not every server has one; that is fine)."""
    try:
        response = await http.get(url, timeout=5.0)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    try:
        return parse(response.text, model)
    except ValueError:  # not Prometheus text
        return None


def diff(before: Snapshot | None, after: Snapshot | None) -> ServerTimes | None:
    if before is None or after is None or any(name not in after for name in _WANTED):
        return None

    def delta(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    queued = delta("inferopt_queue_seconds_count")
    runs = delta("inferopt_compute_seconds_count")
    executions = delta("inferopt_executions_total")
    return ServerTimes(
        requests_queued=int(queued),
        queue_ms=_ratio(delta("inferopt_queue_seconds_sum"), queued) * 1000.0,
        executions=int(executions),
        compute_ms=_ratio(delta("inferopt_compute_seconds_sum"), runs) * 1000.0,
        batch_size=_ratio(delta("inferopt_inferences_total"), executions),
    )


def _ratio(total: float, count: float) -> float:
    return total / count if count > 0 else float("nan")
