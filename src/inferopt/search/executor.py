"""Where the search's measurements run. Every timed measurement of a search goes through an
`Executor`: `Inline` runs it in this process, when its result is read (a plain search);
`inferopt.search.distributed.RayExecutor` runs it as a Ray task on a cluster's measurement
node. Nothing here imports Ray.

`Lookahead` lets an executor of several nodes run the next candidates of a queue early while
the search still judges them one by one, in queue order."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from inferopt import hardware

T = TypeVar("T")


class Job(ABC, Generic[T]):
    """A measurement submitted to an executor. `node`: where it ran, once its result is in
    (None: in this process)."""

    node: str | None = None

    @abstractmethod
    def result(self) -> T: ...

    def cancel(self) -> None:
        """Its result will not be read: stop it if it runs elsewhere."""


class Executor(ABC):
    """Runs a search's measurements. `width`: how many may be in flight at once."""

    width = 1

    @abstractmethod
    def submit(self, label: str, fn: Callable[..., T], *args: Any) -> Job[T]:
        """`fn(*args)` as a measurement named `label`; started now or when its result is read."""

    def run(self, label: str, fn: Callable[..., T], *args: Any) -> T:
        return self.submit(label, fn, *args).result()

    @property
    def fingerprint(self) -> str:
        """The hardware the measurements run on (what the store's figures are keyed by)."""
        return hardware.probe().fingerprint()


class _Deferred(Job[T]):
    def __init__(self, fn: Callable[..., T], args: tuple[Any, ...]) -> None:
        self._fn, self._args = fn, args
        self._done: list[T] = []  # its value, once run

    def result(self) -> T:
        if not self._done:
            self._done.append(self._fn(*self._args))
        return self._done[0]


class Inline(Executor):
    """Each measurement in this process, when its result is read: a plain search."""

    def submit(self, label: str, fn: Callable[..., T], *args: Any) -> Job[T]:
        return _Deferred(fn, args)


INLINE = Inline()


class Lookahead(Generic[T]):
    """Runs a queue's jobs up to `width` at a time: the one whose turn it is and the next ones
    that `start(index)` begins early (it returns None for one it would not start now). Results
    are taken in queue order, so the caller applies its sequential rules as if each job ran
    alone; a job started early whose turn is then skipped is cancelled, its result unread."""

    def __init__(self, width: int, count: int, start: Callable[[int], Job[T] | None]) -> None:
        self._width, self._count, self._start = width, count, start
        self._started: dict[int, Job[T]] = {}

    def take(self, index: int, submit: Callable[[], Job[T]]) -> Job[T]:
        """The job of `index`, started early or now by `submit`; the next ones are started."""
        job = self._started.pop(index, None) or submit()
        for later in range(index + 1, self._count):
            if len(self._started) + 1 >= self._width:
                break
            if later not in self._started:
                early = self._start(later)
                if early is not None:
                    self._started[later] = early
        return job

    def skip(self, index: int) -> None:
        job = self._started.pop(index, None)
        if job is not None:
            job.cancel()
