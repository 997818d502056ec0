import math

import pytest

from inferopt.loadgen.metrics import diff, parse

EXPOSITION = """\
# HELP inferopt_queue_seconds Time a request waited before its batch ran
# TYPE inferopt_queue_seconds histogram
inferopt_queue_seconds_bucket{{le="+Inf",model="m",version="1"}} {queued}
inferopt_queue_seconds_count{{model="m",version="1"}} {queued}
inferopt_queue_seconds_sum{{model="m",version="1"}} {queue_sum}
inferopt_queue_seconds_count{{model="other",version="1"}} 999
inferopt_queue_seconds_sum{{model="other",version="1"}} 999
# HELP inferopt_compute_seconds Time one batch took to run
# TYPE inferopt_compute_seconds histogram
inferopt_compute_seconds_count{{model="m",version="1"}} {runs}
inferopt_compute_seconds_sum{{model="m",version="1"}} {compute_sum}
# HELP inferopt_inferences Rows inferred
# TYPE inferopt_inferences counter
inferopt_inferences_total{{model="m",version="1"}} {rows}
# HELP inferopt_executions Model executions
# TYPE inferopt_executions counter
inferopt_executions_total{{model="m",version="1"}} {runs}
"""


def text(queued: int, queue_sum: float, runs: int, compute_sum: float, rows: int) -> str:
    return EXPOSITION.format(
        queued=queued, queue_sum=queue_sum, runs=runs, compute_sum=compute_sum, rows=rows
    )


def test_the_difference_of_two_scrapes_gives_queue_compute_and_batch_size() -> None:
    before = parse(text(10, 0.5, 5, 0.1, 10), "m")
    after = parse(text(110, 2.5, 30, 0.6, 110), "m")
    times = diff(before, after)
    assert times is not None
    assert times.requests_queued == 100
    assert times.queue_ms == pytest.approx(2.0 / 100 * 1000)  # the other model is not counted
    assert times.executions == 25
    assert times.compute_ms == pytest.approx(0.5 / 25 * 1000)
    assert times.batch_size == pytest.approx(100 / 25)


def test_an_idle_interval_has_no_averages() -> None:
    same = parse(text(10, 0.5, 5, 0.1, 10), "m")
    times = diff(same, same)
    assert times is not None and math.isnan(times.queue_ms) and math.isnan(times.batch_size)


def test_a_server_without_our_metrics_gives_none() -> None:
    assert parse("# TYPE up gauge\nup 1\n", "m") == {}
    assert diff({}, {}) is None
    assert diff(None, parse(text(1, 1, 1, 1, 1), "m")) is None
    assert diff(parse(text(1, 1, 1, 1, 1), "m"), parse(text(1, 1, 1, 1, 1), "absent")) is None
