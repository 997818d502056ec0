"""Energy per inference: Intel/AMD RAPL counters where Linux exposes them, else an estimate from
the process's CPU time and a stated watts-per-core figure. And the cost of a million inferences
at a price per machine-hour.

RAPL counts the whole CPU package (every process on it), so on a busy machine it over-counts; the
CPU-time estimate counts only this process but assumes every busy core draws the same power.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from inferopt.hardware import RAPL_ENERGY
from inferopt.report.schema import EnergyFigures, EnergyMethod

SECONDS_PER_HOUR = 3600.0

ESTIMATE_NOTE = (
    "estimate: process CPU time x {watts:g} W per busy core (RAPL counters not readable here)"
)
RAPL_NOTE = "measured: RAPL package counter (counts every process on the CPU package)"


@dataclass
class RaplCounter:
    """Cumulative package energy in joules, unwrapped across the counter's wrap-around."""

    path: Path
    max_range_uj: int
    _last_uj: int = 0
    _wraps: int = 0

    def read_joules(self) -> float:
        now = int(self.path.read_text())
        if now < self._last_uj:  # the counter wrapped past max_energy_range_uj
            self._wraps += 1
        self._last_uj = now
        return (self._wraps * self.max_range_uj + now) / 1e6


def open_rapl(path: Path = RAPL_ENERGY) -> RaplCounter | None:
    """The RAPL package counter, or None where it is absent or not readable (often root-only)."""
    try:
        start = int(path.read_text())
        max_range = int(path.with_name("max_energy_range_uj").read_text())
    except (OSError, ValueError):
        return None
    return RaplCounter(path, max_range, _last_uj=start)


def energy_note(method: EnergyMethod, watts_per_core: float) -> str:
    return RAPL_NOTE if method == "rapl" else ESTIMATE_NOTE.format(watts=watts_per_core)


def energy_figures(
    *,
    items: int,
    cpu_s: float,
    rapl_j: float | None,
    wall_s_per_item: float,
    watts_per_core: float,
    price_per_hour: float,
) -> EnergyFigures:
    """Per-inference figures from totals over `items` inferences (runs x batch size)."""
    if rapl_j is not None:
        method: EnergyMethod = "rapl"
        joules = rapl_j
    else:
        method = "cpu-time-estimate"
        joules = cpu_s * watts_per_core  # a CPU-second is a core busy for one second
    return EnergyFigures(
        method=method,
        joules_per_inference=joules / items,
        cpu_seconds_per_inference=cpu_s / items,
        cost_per_million=cost_per_million(wall_s_per_item, price_per_hour),
    )


def cost_per_million(wall_s_per_item: float, price_per_hour: float) -> float:
    """What a million inferences cost on a machine rented at `price_per_hour` doing only this."""
    return price_per_hour / SECONDS_PER_HOUR * wall_s_per_item * 1e6
