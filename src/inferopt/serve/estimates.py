"""The batcher's estimates: how long a batch of n rows takes to run, how long until the next
request arrives (moving averages, so they follow the load and the machine), and how many
requests may be pending for answers to come within a target time."""

from __future__ import annotations

import math

_SMOOTHING = 0.2  # weight of the newest sample
_DECREASE = 0.8  # PendingLimit: the factor applied when answers come late


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


class PendingLimit:
    """How many requests may be pending at once so that they are answered within a target
    time: additive increase, multiplicative decrease on each answer's measured time in the
    server, after a slow start, as TCP does with its window. It starts small (`start`), so a
    burst at start-up cannot queue more than the server can answer in time.

    Why not a prediction from queue length x service time: when the event loop is the
    bottleneck, the time per answer depends on everything else the loop does (refusing, for
    one), and a prediction from it feeds on itself. The measured time of real answers does
    not: if answers are late the limit shrinks, if they are early it grows, whichever part
    of the server is the bottleneck."""

    def __init__(self, target_s: float, ceiling: int, start: int) -> None:
        self._target = target_s
        self._ceiling = float(ceiling)
        self._limit = float(min(start, ceiling))
        self._slow_start = True  # until the first late answer: +1 per timely answer
        self._last_cut = -math.inf

    @property
    def limit(self) -> int:
        return max(1, int(self._limit))

    def answered(self, seconds: float, now: float) -> None:
        """A request was answered `seconds` after it was admitted."""
        if seconds <= self._target:
            step = 1.0 if self._slow_start else 1.0 / self._limit
            self._limit = min(self._ceiling, self._limit + step)
            return
        self._slow_start = False
        if now - self._last_cut >= self._target:  # one cut per target interval: the late
            self._limit = max(1.0, self._limit * _DECREASE)  # answers of one burst count once
            self._last_cut = now
