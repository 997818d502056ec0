"""Dynamic batching for one model version: a bounded queue in asyncio, batches run in a
thread pool (ONNX Runtime releases the GIL), deadlines, and admission control.

How a batch is formed, when a slot to run it is free:
- take the oldest (highest-priority) request and the queued requests that may share its
  batch (same shapes; when padding, those nearest its length while the padding stays under
  `max_padding`, see batch.by_length), up to the max;
- go at once when the batch is full, or when holding it back would cost more than it gains:
  waiting one more expected inter-arrival gap costs every waiting row that gap, and gains the
  time saved by running the next request in this batch instead of alone (from measured batch
  latencies). At low load the gap is long, so a lone request goes straight away; holding
  never exceeds `max_queue_delay_ms`, or what the earliest deadline in the batch allows.
While every slot is busy, requests simply queue, and merge when a slot frees up.

Admission: a request is refused at once (429) when the queue is full; when, with
`max_queue_wait_ms` set, more requests are pending than the adaptive limit that keeps their
measured time in the server under it (see estimates.PendingLimit); or when the predicted
wait (batches ahead x measured batch latency) already overruns its deadline. `refusal()` is
public so the HTTP front door can refuse before it reads a body. A request whose deadline
passes while queued is dropped before it runs (504), as is one whose client left.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import time
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from inferopt.serve import batch
from inferopt.serve.batch import BatchAxes, Tensors
from inferopt.serve.config import ModelConfig
from inferopt.serve.errors import DeadlineExceeded, NotReady, Overloaded, ServeError
from inferopt.serve.estimates import ArrivalGap, LatencyModel, PendingLimit
from inferopt.serve.metrics import VersionMetrics
from inferopt.serve.runner import RunControl, Runner

log = logging.getLogger("inferopt.serve")


class Draining(NotReady):
    """The batcher is closing (its version is being replaced or the server is stopping)."""


@dataclass(eq=False)
class Job:
    """One request's rows waiting for a batch (a request larger than the max is several)."""

    inputs: Tensors
    rows: int
    key: Hashable
    length: int  # sequence length (0 for models without one): whom to pad with
    rank: tuple[float, int]  # (priority, arrival order): the queue's sort order
    enqueued: float
    deadline: float | None
    future: asyncio.Future[Tensors]
    batch: list[Job] = field(default_factory=list)  # its batch-mates, while running
    control: RunControl | None = None


class Batcher:
    def __init__(
        self,
        runner: Runner,
        config: ModelConfig,
        metrics: VersionMetrics,
        latency: dict[int, float],
    ) -> None:
        self._runner = runner
        self._config = config
        self._axes = BatchAxes.of(runner.io, config.sequence_batching)
        self._max_rows = config.max_batch_size if self._axes.batch is not None else 0
        self._max_padding = config.max_padding
        self._metrics = metrics
        self._latency = LatencyModel(latency)
        self._arrivals = ArrivalGap()
        self._limit = _pending_limit(config, self._max_rows)
        self._queue: list[Job] = []
        self._queued_rows = 0  # sum of the rows in _queue, kept so admission is O(1)
        self._order = 0
        self._pending = 0  # requests admitted and not yet answered
        self._running = 0  # batches running
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()  # set on every change the scheduler may act on
        self._pool = ThreadPoolExecutor(config.instances, thread_name_prefix=metrics.model)
        self._task = asyncio.create_task(self._schedule(), name=f"batcher-{metrics.model}")

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def axes(self) -> BatchAxes:
        return self._axes

    @property
    def max_rows(self) -> int:
        return self._max_rows

    # ---- the request side ----

    async def submit(self, inputs: Tensors, deadline: float | None, priority: int = 0) -> Tensors:
        """The model's outputs for `inputs` (validated), once its batch has run."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        self._arrivals.arrived(now)
        if self._closing:
            self._metrics.rejected("draining")
            raise Draining(f"model {self._metrics.model!r} is unloading")
        refused = self.refusal(batch.rows(inputs, self._axes), deadline, now)
        if refused is not None:
            raise refused
        rank = float(priority) if priority > 0 else math.inf
        jobs = [
            self._enqueue(part, rank, now, deadline, loop)
            for part in batch.chunks(inputs, self._axes, self._max_rows)
        ]
        self._pending += 1
        self._metrics.pending(1)
        try:
            return await self._gather(jobs, deadline)
        finally:
            self._pending -= 1
            self._metrics.pending(-1)
            if self._limit is not None:
                done = time.monotonic()
                self._limit.answered(done - now, done)
            for job in jobs:
                self._abandon(job)

    def refusal(self, rows: int, deadline: float | None, now: float) -> Overloaded | None:
        """The 429 a request of `rows` rows gets if it arrives now (counted in the metrics),
        or None when it would be admitted."""
        reason = self.refused(rows, deadline, now)
        return None if reason is None else self.overloaded(reason, rows, deadline, now)

    def refused(self, rows: int, deadline: float | None, now: float) -> str | None:
        """Why a request of `rows` rows arriving now is refused (counted in the metrics), or
        None when it would be admitted: `refusal` without its message, cheap enough for the
        HTTP gate to ask of every request under overload."""
        reason = self._refusal_reason(rows, deadline, now)
        if reason is not None:
            self._metrics.rejected(reason)
        return reason

    def overloaded(self, reason: str, rows: int, deadline: float | None, now: float) -> Overloaded:
        """The 429 of a refusal by `reason`, with Retry-After from the predicted wait. The
        message of a refusal by the queue names only settings, so its response changes only
        with the reason and Retry-After: the HTTP gate formats it once per pair (gate.refusal)."""
        wait = self.predicted_wait(rows)
        if reason == "queue_full":
            message = f"queue full ({self._config.max_queue_size} requests pending)"
        elif reason == "queue_wait":
            message = (
                "as many requests pending as are answered within max_queue_wait_ms "
                f"({self._config.max_queue_wait_ms:g}) at the moment"
            )
        else:
            left = math.inf if deadline is None else deadline - now
            message = (
                f"predicted wait {wait * 1e3:.1f} ms exceeds the request's deadline "
                f"({left * 1e3:.1f} ms left)"
            )
        return Overloaded(f"model {self._metrics.model!r}: {message}", retry_after_s=wait)

    def _refusal_reason(self, rows: int, deadline: float | None, now: float) -> str | None:
        if self._pending >= self._config.max_queue_size:
            return "queue_full"
        if self._limit is not None and self._pending >= self._limit.limit:
            return "queue_wait"
        if deadline is not None and now + self.predicted_wait(rows) > deadline:
            return "deadline"
        return None

    def predicted_wait(self, rows: int) -> float:
        """Seconds until a request of `rows` rows would be answered, were it queued now:
        the batches ahead of it (a running one counts half) and its own."""
        per_batch = max(self._max_rows, 1)
        queued = self._queued_rows + rows
        batches = math.ceil(queued / per_batch) + 0.5 * self._running
        latency = self._latency.estimate(min(queued, per_batch))
        return batches * latency / self._config.instances

    def _enqueue(
        self,
        inputs: Tensors,
        rank: float,
        now: float,
        deadline: float | None,
        loop: asyncio.AbstractEventLoop,
    ) -> Job:
        self._order += 1
        job = Job(
            inputs=inputs,
            rows=batch.rows(inputs, self._axes),
            key=batch.key(inputs, self._axes),
            length=batch.seq_len(inputs, self._axes) or 0,
            rank=(rank, self._order),
            enqueued=now,
            deadline=deadline,
            future=loop.create_future(),
        )
        bisect.insort(self._queue, job, key=lambda j: j.rank)
        self._queued_rows += job.rows
        self._wake.set()
        return job

    async def _gather(self, jobs: list[Job], deadline: float | None) -> Tensors:
        """The jobs' outputs, joined. Awaits each future directly (no `asyncio.wait`: on a
        small model its cost shows in the server's CPU per request); a failed or abandoned
        job's siblings are cleaned up by `_abandon`."""
        if deadline is None:
            pieces = [await job.future for job in jobs]
        else:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    pieces = [await job.future for job in jobs]
            except TimeoutError:
                where = "while its batch ran" if any(j.control for j in jobs) else "in the queue"
                raise DeadlineExceeded(f"the request's deadline passed {where}") from None
        if len(pieces) == 1:
            return pieces[0]
        axis = self._axes.batch
        return {name: np.concatenate([p[name] for p in pieces], axis=axis) for name in pieces[0]}

    def _abandon(self, job: Job) -> None:
        """Forget a job whose request is over: out of the queue if still there; and if its
        whole batch is abandoned mid-run, stop the run."""
        if job.future.done() and not job.future.cancelled():
            job.future.exception()  # mark it retrieved: the request is answered already
            return
        job.future.cancel()  # (cancelled already if its request was cancelled awaiting it)
        if job in self._queue:
            self._dequeue(job)
        elif job.control is not None and all(j.future.done() for j in job.batch):
            job.control.terminate()
        self._wake.set()

    # ---- the scheduling side ----

    async def _schedule(self) -> None:
        try:
            while not (self._closing and not self._queue and not self._running):
                if self._queue and self._running < self._config.instances:
                    jobs = await self._collect()
                    if jobs:
                        self._start(jobs)
                    continue
                self._wake.clear()
                await self._wake.wait()
        except Exception:  # a bug here would hang every request: fail them loudly instead
            log.exception("batcher of %s crashed", self._metrics.model)
            for job in self._queue:
                if not job.future.done():
                    job.future.set_exception(ServeError("the batcher failed; see server log"))
            raise

    async def _collect(self) -> list[Job]:
        while self._queue:
            jobs = self._compatible(self._queue[0])
            hold = self._hold(jobs, time.monotonic())
            if hold > 0 and await self._woken_within(hold):
                continue  # an arrival or a cancellation: look again
            for job in jobs:
                self._dequeue(job)
            return jobs
        return []

    def _dequeue(self, job: Job) -> None:
        self._queue.remove(job)
        self._queued_rows -= job.rows

    async def _woken_within(self, seconds: float) -> bool:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def _compatible(self, first: Job) -> list[Job]:
        if self._max_rows == 0:
            return [first]
        alike = [job for job in self._queue if job.key == first.key]
        if self._axes.pad:
            sizes = [(job.rows, job.length) for job in alike]
            return [alike[i] for i in batch.by_length(sizes, self._max_rows, self._max_padding)]
        jobs, rows = [], 0
        for job in alike:
            if rows + job.rows <= self._max_rows:
                jobs.append(job)
                rows += job.rows
        return jobs

    def _hold(self, jobs: list[Job], now: float) -> float:
        """Seconds worth waiting for one more request before running `jobs`; 0: go now."""
        rows = sum(job.rows for job in jobs)
        if self._max_rows == 0 or rows >= self._max_rows:
            return 0.0
        budget = min(j.enqueued for j in jobs) + self._config.max_queue_delay_ms / 1e3 - now
        gap = self._arrivals.expected(now)
        if budget <= 0 or gap is None:
            return 0.0
        est = self._latency.estimate
        gain = est(1) + est(rows) - est(rows + 1)
        if gain <= gap * rows:
            return 0.0
        deadlines = [j.deadline for j in jobs if j.deadline is not None]
        slack = min(deadlines) - now - est(rows + 1) if deadlines else math.inf
        return max(0.0, min(budget, 2 * gap, slack))

    def _start(self, jobs: list[Job]) -> None:
        self._running += 1
        task = asyncio.create_task(self._execute(jobs))
        self._tasks.add(task)  # asyncio keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, jobs: list[Job]) -> None:
        try:
            now = time.monotonic()
            live = [job for job in jobs if self._still_wanted(job, now)]
            if not live:
                return
            control = RunControl()
            for job in live:
                job.control, job.batch = control, live
                self._metrics.queued(now - job.enqueued)
            try:
                pieces = await self._run_in_pool(live, control)
            except Exception as exc:
                if len(live) > 1 and not control.terminated:
                    await self._run_alone(live)  # one bad request must not fail its batch-mates
                else:
                    _fail(live, exc)
                return
            for job, piece in zip(live, pieces, strict=True):
                if not job.future.done():
                    job.future.set_result(piece)
        finally:
            self._running -= 1
            self._wake.set()

    def _still_wanted(self, job: Job, now: float) -> bool:
        if job.future.done():
            return False
        if job.deadline is not None and job.deadline <= now:
            job.future.set_exception(DeadlineExceeded("the request's deadline passed in the queue"))
            return False
        return True

    async def _run_in_pool(self, jobs: list[Job], control: RunControl) -> list[Tensors]:
        loop = asyncio.get_running_loop()
        pieces, seconds = await loop.run_in_executor(self._pool, self._run, jobs, control)
        self._latency.observe(sum(job.rows for job in jobs), seconds)  # here: loop thread only
        return pieces

    def _run(self, jobs: list[Job], control: RunControl) -> tuple[list[Tensors], float]:
        """Merge, run, split: in a worker thread, so large tensors never stall the loop."""
        start = time.perf_counter()
        merged = batch.merge([job.inputs for job in jobs], self._axes)
        ran = time.perf_counter()
        outputs = self._runner.run(merged, control)
        done = time.perf_counter()
        pieces = batch.split(outputs, [job.inputs for job in jobs], self._axes)
        rows = sum(job.rows for job in jobs)
        self._metrics.executed(rows, ran - start, done - ran, time.perf_counter() - done)
        return pieces, done - ran

    async def _run_alone(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.future.done():
                continue
            control = RunControl()
            job.control, job.batch = control, [job]
            try:
                [piece] = await self._run_in_pool([job], control)
            except Exception as exc:
                _fail([job], exc)
            else:
                if not job.future.done():
                    job.future.set_result(piece)

    # ---- shutting down ----

    async def close(self) -> None:
        """Refuse new requests, finish every queued and running one, then stop."""
        self._closing = True
        self._wake.set()
        try:
            await self._task
        finally:
            self._pool.shutdown(wait=False)


def _pending_limit(config: ModelConfig, max_rows: int) -> PendingLimit | None:
    """With max_queue_wait_ms: a limit starting at two full batches per instance."""
    if config.max_queue_wait_ms is None:
        return None
    start = 2 * max(max_rows, 1) * config.instances
    return PendingLimit(config.max_queue_wait_ms / 1e3, config.max_queue_size, start)


def _fail(jobs: list[Job], exc: BaseException) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(exc)
