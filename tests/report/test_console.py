"""The terminal tables say what was measured."""

from __future__ import annotations

from rich.console import Console

from inferopt.report import console
from inferopt.report.schema import Comparison, Measurement


def _text(record: Measurement | Comparison) -> str:
    out = Console(record=True, width=160)
    out.print(console.render(record))
    return out.export_text()


def test_measurement_tables(measurement: Measurement) -> None:
    text = _text(measurement)
    for title in ("small: what it costs to run", "latency of one run", "where the time goes",
                  "intra-op threads", "throughput, compute, memory, energy and cost"):  # fmt: skip
        assert title in text
    assert "16 x" not in text and "      16 " in text  # batch 16, no sequence axis
    assert f"{measurement.points[0].latency.runs}" in text
    assert "best" in text and ("estimate" in text or "RAPL" in text)


def test_comparison_has_the_ratio_table(comparison: Comparison) -> None:
    text = _text(comparison)
    assert "wide / small (runs interleaved" in text
    assert f"{comparison.ratios[0].p50_ratio:.3f}" in text


def test_formatting_helpers() -> None:
    assert console.fmt_ms(0.0123) == "12.3 µs"
    assert console.fmt_ms(12.34) == "12.3 ms"
    assert console.fmt_bytes(3 * 2**20) == "3.0 MiB"
    assert console.fmt_count(2.5e9, "FLOP") == "2.5 GFLOP"
