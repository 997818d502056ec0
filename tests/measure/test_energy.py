"""RAPL reading (with wrap-around), the CPU-time estimate, and cost arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferopt.measure.energy import cost_per_million, energy_figures, energy_note, open_rapl


def _rapl(folder: Path, energy_uj: int, max_uj: int = 1_000_000) -> Path:
    (folder / "max_energy_range_uj").write_text(f"{max_uj}\n")
    path = folder / "energy_uj"
    path.write_text(f"{energy_uj}\n")
    return path


def test_rapl_counter_unwraps_past_its_range(tmp_path: Path) -> None:
    path = _rapl(tmp_path, 900_000)
    counter = open_rapl(path)
    assert counter is not None
    start = counter.read_joules()
    path.write_text("100000\n")  # wrapped: 1_000_000 - 900_000 + 100_000 uJ later
    assert counter.read_joules() - start == pytest.approx(0.2)


def test_missing_or_unreadable_rapl_gives_none(tmp_path: Path) -> None:
    assert open_rapl(tmp_path / "absent") is None
    (tmp_path / "energy_uj").write_text("garbage")
    assert open_rapl(tmp_path / "energy_uj") is None


def test_cpu_time_estimate_is_labelled_and_scales_with_watts() -> None:
    # 2 CPU-seconds over 100 inferences at 5 W per busy core: 0.1 J each.
    figures = energy_figures(
        items=100, cpu_s=2.0, rapl_j=None, wall_s_per_item=0.01, watts_per_core=5.0,
        price_per_hour=3.6,
    )  # fmt: skip
    assert figures.method == "cpu-time-estimate"
    assert figures.joules_per_inference == pytest.approx(0.1)
    assert figures.cpu_seconds_per_inference == pytest.approx(0.02)
    assert "estimate" in energy_note("cpu-time-estimate", 5.0) and "5 W" in energy_note(
        "cpu-time-estimate", 5.0
    )


def test_rapl_energy_wins_over_the_estimate() -> None:
    figures = energy_figures(
        items=10, cpu_s=1.0, rapl_j=3.0, wall_s_per_item=0.01, watts_per_core=5.0,
        price_per_hour=1.0,
    )  # fmt: skip
    assert figures.method == "rapl" and figures.joules_per_inference == pytest.approx(0.3)


def test_cost_per_million() -> None:
    # 3.6 per hour = 0.001 per second; 10 ms per inference -> 1e-5 each, 10 per million.
    assert cost_per_million(0.01, 3.6) == pytest.approx(10.0)
