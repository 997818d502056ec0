"""When an open-loop generator sends: arrival offsets in seconds from the start of a run.

Offsets are fixed before the run starts, independent of how fast the server answers; that is
what makes the loop open (a late answer cannot delay the next send).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np

Arrival = Literal["constant", "poisson"]
ARRIVALS: tuple[Arrival, ...] = ("constant", "poisson")


def arrivals(rate: float, kind: Arrival, seed: int = 0) -> Iterator[float]:
    """Endless offsets (seconds) of `rate` requests per second; the caller bounds the run."""
    if not rate > 0:
        raise ValueError(f"the rate must be > 0 requests/s, got {rate}")
    if kind == "constant":
        return _constant(rate)
    if kind == "poisson":
        return _poisson(rate, np.random.default_rng(seed))
    raise ValueError(f"unknown arrival process {kind!r}; choose from {', '.join(ARRIVALS)}")


def _constant(rate: float) -> Iterator[float]:
    # Multiplying (not summing gaps) keeps float error from drifting over long runs.
    i = 0
    while True:
        yield i / rate
        i += 1


def _poisson(rate: float, rng: np.random.Generator) -> Iterator[float]:
    """Exponential gaps of mean 1/rate: independent arrivals, as from many users."""
    t = 0.0
    while True:
        for gap in rng.exponential(1.0 / rate, size=1024):
            yield t
            t += float(gap)
