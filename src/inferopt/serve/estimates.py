"""The batcher's two estimates: how long a batch of n rows takes to run, and how long until
the next request arrives. Both are moving averages, so they follow the load and the machine."""

from __future__ import annotations

_SMOOTHING = 0.2  # weight of the newest sample


class LatencyModel:
    """Seconds per batch by batch size: measured at warm-up, then a moving average of real
    runs; sizes never run are interpolated."""

    def __init__(self, measured: dict[int, float]) -> None:
        self._seconds = dict(measured)

    def observe(self, rows: int, seconds: float) -> None:
        old = self._seconds.get(rows)
        self._seconds[rows] = seconds if old is None else old + _SMOOTHING * (seconds - old)

    def estimate(self, rows: int) -> float:
        if not self._seconds:
            return 0.0
        if rows in self._seconds:
            return self._seconds[rows]
        sizes = sorted(self._seconds)
        below = [s for s in sizes if s < rows]
        above = [s for s in sizes if s > rows]
        if not below:
            return self._seconds[above[0]]
        low = below[-1]
        if not above:
            return self._seconds[low] * rows / low
        high = above[0]
        share = (rows - low) / (high - low)
        return self._seconds[low] + share * (self._seconds[high] - self._seconds[low])


class ArrivalGap:
    """Moving average of the time between requests; a silence longer than it counts too."""

    def __init__(self) -> None:
        self._last: float | None = None
        self._gap: float | None = None

    def arrived(self, now: float) -> None:
        if self._last is not None:
            gap = now - self._last
            self._gap = gap if self._gap is None else self._gap + _SMOOTHING * (gap - self._gap)
        self._last = now

    def expected(self, now: float) -> float | None:
        if self._gap is None or self._last is None:
            return None
        return max(self._gap, now - self._last)
