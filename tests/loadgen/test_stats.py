import math
from collections.abc import Callable

import numpy as np
import pytest

from inferopt.loadgen.stats import Sample, Tally, summarize, windows_agree, within


def ms_samples(latencies_ms: list[float], outcome: str = "ok") -> list[Sample]:
    return [Sample(i * 0.01, ms / 1000.0, outcome) for i, ms in enumerate(latencies_ms)]


def test_percentiles_throughput_and_counts_on_known_samples() -> None:
    samples = ms_samples([float(x) for x in range(1, 101)])  # 1..100 ms
    samples += ms_samples([0.5] * 5, "429") + ms_samples([1.0] * 2, "503")
    samples += ms_samples([30000.0], "timeout") + ms_samples([0.0] * 3, "dropped")
    s = summarize(samples, seconds=4.0, slo_ms=None)
    assert s.requests == 111 and s.errors == 11
    assert s.outcomes == {
        "ok": 100, "429": 5, "503": 2, "504": 0, "other": 0, "timeout": 1, "dropped": 3,
    }  # fmt: skip
    assert s.throughput == pytest.approx(25.0)
    assert s.goodput == s.throughput  # no SLO: every OK answer is good
    assert s.percentiles_ms["p50"] == pytest.approx(50.5)
    assert s.percentiles_ms["p90"] == pytest.approx(90.1)
    assert s.percentiles_ms["p99"] == pytest.approx(99.01)
    assert s.percentiles_ms["p99.9"] == pytest.approx(99.901)
    assert s.mean_ms == pytest.approx(50.5)


def test_goodput_counts_only_ok_answers_within_the_slo() -> None:
    samples = ms_samples([float(x) for x in range(1, 101)]) + ms_samples([1.0] * 10, "429")
    s = summarize(samples, seconds=2.0, slo_ms=40.0)
    assert s.goodput == pytest.approx(40 / 2.0)  # 1..40 ms; refusals are never good
    assert s.throughput == pytest.approx(50.0)


def test_without_any_answer_latency_is_undefined_not_zero() -> None:
    s = summarize(ms_samples([1.0] * 4, "503"), seconds=1.0, slo_ms=10.0)
    assert s.throughput == 0 and s.goodput == 0
    assert all(math.isnan(v) for v in s.percentiles_ms.values())


def test_a_summary_needs_a_positive_duration() -> None:
    with pytest.raises(ValueError):
        summarize([], seconds=0.0, slo_ms=None)


def test_within_and_window_agreement() -> None:
    assert within([100.0, 105.0, 95.0], 0.10)
    assert not within([100.0, 130.0, 95.0], 0.10)
    assert not within([100.0, float("nan")], 0.5)
    steady = [summarize(ms_samples([10.0] * 100), 1.0, None) for _ in range(3)]
    slower = summarize(ms_samples([30.0] * 100), 1.0, None)
    assert windows_agree(steady, 3, 0.1)
    assert not windows_agree(steady[:2], 3, 0.1)  # too few windows yet
    assert not windows_agree([*steady[:2], slower], 3, 0.1)  # p99 moved
    fewer = summarize(ms_samples([10.0] * 50), 1.0, None)
    assert not windows_agree([*steady[:2], fewer], 3, 0.1)  # throughput moved
    assert np.isfinite(steady[0].p99_ms)


def test_the_tally_counts_answers_and_keeps_each_statuss_first_message() -> None:
    tally = Tally()
    for status, message in [("ok", None), ("400", "bad ids"), ("400", "other"), ("503", "")]:
        tally.add(status, message)
    described: list[str] = []

    def describe(status: str) -> Callable[[], str]:
        def message() -> str:
            described.append(status)
            return f"message of {status}"

        return message

    tally.add_failure("400", describe("400"))
    tally.add_failure("504", describe("504"))
    assert described == ["504"]  # a status's message is made once, for its first failure
    assert (tally.total, tally.ok, tally.failed) == (6, 1, 5)
    assert tally.messages == {"400": "bad ids", "503": "", "504": "message of 504"}
    assert tally.top_failure() == ("400", 3, "bad ids")
    assert Tally().top_failure() is None
