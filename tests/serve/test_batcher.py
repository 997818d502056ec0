"""The batcher with a test-double runner (y = 2x) that records each batch it runs and can be
held at a gate, so the order of events is fixed and no test depends on timing."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferopt.iospec import IOSpec, TensorSpec
from inferopt.model import load_onnx
from inferopt.serve import ModelConfig
from inferopt.serve.batcher import Batcher, Draining
from inferopt.serve.errors import BadRequest, DeadlineExceeded, Overloaded
from inferopt.serve.estimates import ArrivalGap, LatencyModel, PendingLimit
from inferopt.serve.metrics import Metrics
from inferopt.serve.runner import OnnxRunner, RunControl

IO = IOSpec(
    (TensorSpec("x", "float32", ("batch", 4)),), (TensorSpec("y", "float32", ("batch", 4)),)
)
POISON = -1.0  # rows holding it make the double fail, as out-of-range token ids would


class Doubler:
    def __init__(self, gated: bool = False) -> None:
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.started = threading.Event()
        self.batches: list[list[float]] = []  # the first value of each row, per batch
        self.controls: list[RunControl] = []

    @property
    def io(self) -> IOSpec:
        return IO

    def run(self, inputs: dict[str, np.ndarray], control: RunControl) -> dict[str, np.ndarray]:
        self.controls.append(control)
        self.started.set()
        assert self.gate.wait(10)
        x = inputs["x"]
        self.batches.append(x[:, 0].tolist())
        if (x == POISON).any():
            raise BadRequest("poisoned row")
        return {"y": x * 2}


def rows(*firsts: float) -> dict[str, np.ndarray]:
    return {"x": np.repeat(np.array(firsts, np.float32)[:, None], 4, axis=1)}


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(scenario(), 30))


def make(runner: Doubler, latency: float = 0.001, **settings: Any) -> Batcher:
    config = ModelConfig(**settings)
    return Batcher(runner, config, Metrics().for_version("m", "1"), {1: latency})


async def started(runner: Doubler) -> None:
    assert await asyncio.to_thread(runner.started.wait, 10)


def test_requests_queued_while_busy_merge_and_each_gets_its_rows() -> None:
    async def scenario() -> None:
        runner = Doubler(gated=True)
        batcher = make(runner)
        first = asyncio.create_task(batcher.submit(rows(1), None))
        await started(runner)
        others = [asyncio.create_task(batcher.submit(rows(10 + i, 20 + i), None)) for i in range(4)]
        await asyncio.sleep(0.05)  # let them queue; the runner is still held
        runner.gate.set()
        assert np.array_equal((await first)["y"], rows(1)["x"] * 2)
        for i, task in enumerate(others):
            assert np.array_equal((await task)["y"], rows(10 + i, 20 + i)["x"] * 2)
        assert runner.batches == [[1], [10, 20, 11, 21, 12, 22, 13, 23]]
        await batcher.close()

    run(scenario)


def test_a_request_larger_than_the_max_is_split_and_reassembled() -> None:
    async def scenario() -> None:
        runner = Doubler()
        batcher = make(runner, max_batch_size=4)
        inputs = rows(*range(10))
        out = await batcher.submit(inputs, None)
        assert np.array_equal(out["y"], inputs["x"] * 2)
        assert sorted(len(b) for b in runner.batches) == [2, 4, 4]
        await batcher.close()

    run(scenario)


def test_deadline_passing_in_the_queue_is_504_and_the_work_never_runs() -> None:
    async def scenario() -> None:
        runner = Doubler(gated=True)
        batcher = make(runner)
        first = asyncio.create_task(batcher.submit(rows(1), None))
        await started(runner)
        deadline = asyncio.get_running_loop().time() + 0.05
        with pytest.raises(DeadlineExceeded, match="in the queue"):
            await batcher.submit(rows(2), deadline)
        runner.gate.set()
        await first
        await batcher.close()
        assert runner.batches == [[1]]

    run(scenario)


def test_admission_refuses_when_the_predicted_wait_overruns_the_deadline() -> None:
    async def scenario() -> None:
        batcher = make(Doubler(), latency=1.0)  # one batch takes a second
        now = asyncio.get_running_loop().time()
        with pytest.raises(Overloaded, match="predicted wait") as refused:
            await batcher.submit(rows(1), now + 0.1)
        assert refused.value.retry_after_header() == "1"
        assert (await batcher.submit(rows(1), now + 5))["y"].shape == (1, 4)
        await batcher.close()

    run(scenario)


def test_a_full_queue_refuses_at_once() -> None:
    async def scenario() -> None:
        runner = Doubler(gated=True)
        batcher = make(runner, max_queue_size=2)
        running = asyncio.create_task(batcher.submit(rows(1), None))
        await started(runner)
        queued = asyncio.create_task(batcher.submit(rows(2), None))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded, match="queue full"):
            await batcher.submit(rows(3), None)
        runner.gate.set()
        await asyncio.gather(running, queued)
        await batcher.close()

    run(scenario)


def test_the_pending_limit_shrinks_on_late_answers_and_grows_on_timely_ones() -> None:
    limit = PendingLimit(target_s=0.05, ceiling=100, start=10)
    assert limit.limit == 10
    for _ in range(5):
        limit.answered(0.01, now=1.0)  # slow start: +1 per timely answer
    assert limit.limit == 15
    limit.answered(0.2, now=10.0)
    assert limit.limit == 12
    limit.answered(0.2, now=10.01)  # the same burst of late answers: one cut per target
    assert limit.limit == 12
    limit.answered(0.2, now=10.06)
    assert limit.limit == 9  # 9.6
    for _ in range(48):
        limit.answered(0.01, now=11.0)  # after slow start: about +1 per `limit` answers
    assert 12 <= limit.limit <= 14
    for step in range(100):
        limit.answered(1.0, now=20.0 + step)
    assert limit.limit == 1  # never below one: the server always takes some work
    assert PendingLimit(target_s=0.05, ceiling=100, start=500).limit == 100


def test_max_queue_wait_refuses_beyond_the_limit_that_late_answers_taught() -> None:
    async def scenario() -> None:
        runner = Doubler(gated=True)
        batcher = make(runner, max_batch_size=1, max_queue_size=4, max_queue_wait_ms=1.0)
        for _ in range(7):  # each answered ~20 ms after admission, well past the 1 ms target
            answer = asyncio.create_task(batcher.submit(rows(1), None))
            await asyncio.sleep(0.02)
            runner.gate.set()
            await answer
            runner.gate.clear()
        held = asyncio.create_task(batcher.submit(rows(2), None))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded, match="max_queue_wait_ms") as refused:
            await batcher.submit(rows(3), None)
        assert refused.value.status == 429
        runner.gate.set()
        await held
        await batcher.close()

    run(scenario)


def test_a_cancelled_request_is_dropped_from_the_queue() -> None:
    async def scenario() -> None:
        runner = Doubler(gated=True)
        batcher = make(runner)
        running = asyncio.create_task(batcher.submit(rows(1), None))
        await started(runner)
        gone = asyncio.create_task(batcher.submit(rows(2), None))
        await asyncio.sleep(0.01)
        gone.cancel()  # what a client disconnect does
        await asyncio.sleep(0.01)
        runner.gate.set()
        await running
        await batcher.close()
        assert runner.batches == [[1]]

    run(scenario)


def test_a_run_nobody_waits_for_is_terminated() -> None:
    async def scenario() -> None:
        runner = Doubler(gated=True)
        batcher = make(runner)
        task = asyncio.create_task(batcher.submit(rows(1), None))
        await started(runner)
        task.cancel()
        await asyncio.sleep(0.01)
        assert runner.controls[0].terminated
        runner.gate.set()
        await batcher.close()

    run(scenario)


def test_a_deadline_passing_mid_run_is_504_at_the_deadline_and_stops_the_run() -> None:
    async def scenario() -> None:
        runner = Doubler(gated=True)
        batcher = make(runner)
        deadline = asyncio.get_running_loop().time() + 0.2
        with pytest.raises(DeadlineExceeded, match="while its batch ran"):
            await batcher.submit(rows(1), deadline)
        assert runner.controls[0].terminated
        runner.gate.set()
        await batcher.close()

    run(scenario)


def test_a_lone_request_is_not_held_for_the_full_delay() -> None:
    async def scenario() -> float:
        batcher = make(Doubler(), max_queue_delay_ms=5000)
        start = time.perf_counter()
        for i in range(5):  # one at a time: low load
            await batcher.submit(rows(i), None)
        await batcher.close()
        return time.perf_counter() - start

    assert run(scenario) < 4.0  # generous: holding even one would take 5 s


def test_one_bad_request_does_not_fail_its_batch_mates() -> None:
    async def scenario() -> None:
        runner = Doubler(gated=True)
        batcher = make(runner)
        first = asyncio.create_task(batcher.submit(rows(1), None))
        await started(runner)
        good = [asyncio.create_task(batcher.submit(rows(v), None)) for v in (2, 3)]
        bad = asyncio.create_task(batcher.submit(rows(POISON), None))
        await asyncio.sleep(0.02)
        runner.gate.set()
        await first
        assert [float((await t)["y"][0, 0]) for t in good] == [4.0, 6.0]
        with pytest.raises(BadRequest, match="poisoned"):
            await bad
        assert runner.batches[1] == [2, 3, POISON]  # merged, failed, then run one by one
        await batcher.close()

    run(scenario)


def test_priority_one_is_served_before_default() -> None:
    async def scenario() -> None:
        runner = Doubler(gated=True)
        batcher = make(runner, max_batch_size=1)
        first = asyncio.create_task(batcher.submit(rows(1), None))
        await started(runner)
        default = asyncio.create_task(batcher.submit(rows(2), None))
        await asyncio.sleep(0.01)
        urgent = asyncio.create_task(batcher.submit(rows(3), None, priority=1))
        await asyncio.sleep(0.01)
        runner.gate.set()
        await asyncio.gather(first, default, urgent)
        assert runner.batches == [[1], [3], [2]]
        await batcher.close()

    run(scenario)


def test_close_refuses_new_work_and_finishes_queued_work() -> None:
    async def scenario() -> None:
        runner = Doubler(gated=True)
        batcher = make(runner, max_batch_size=1)
        running = asyncio.create_task(batcher.submit(rows(1), None))
        await started(runner)
        queued = asyncio.create_task(batcher.submit(rows(2), None))
        await asyncio.sleep(0.01)
        closing = asyncio.create_task(batcher.close())
        await asyncio.sleep(0.01)
        with pytest.raises(Draining):
            await batcher.submit(rows(3), None)
        runner.gate.set()
        await closing
        assert [float(t.result()["y"][0, 0]) for t in (running, queued)] == [2.0, 4.0]

    run(scenario)


def test_latency_estimates_interpolate_and_follow_new_runs() -> None:
    model = LatencyModel({1: 0.010, 4: 0.040})
    assert model.estimate(2) == pytest.approx(0.020)
    assert model.estimate(8) == pytest.approx(0.080)  # beyond the largest: per-row rate
    model.observe(1, 0.110)
    assert model.estimate(1) == pytest.approx(0.030)  # moved a fifth of the way
    gaps = ArrivalGap()
    assert gaps.expected(0.0) is None
    for now in (0.0, 0.01, 0.02):
        gaps.arrived(now)
    assert gaps.expected(0.02) == pytest.approx(0.01)
    assert gaps.expected(1.0) == pytest.approx(0.98)  # a long silence counts


class Gated:
    """A real model behind a gate, recording the input shape of every batch it runs."""

    def __init__(self, inner: OnnxRunner) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.started = threading.Event()
        self.shapes: list[tuple[int, ...]] = []

    @property
    def io(self) -> IOSpec:
        return self.inner.io

    def run(self, inputs: dict[str, np.ndarray], control: RunControl) -> dict[str, np.ndarray]:
        self.started.set()
        assert self.gate.wait(30)
        self.shapes.append(inputs["input_ids"].shape)
        return self.inner.run(inputs, control)


def text(rows: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(seed).integers(1000, 2000, size=(rows, length), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": 0 * ids}


def batches_of(
    model_path: Path, config: ModelConfig, requests: list[dict[str, np.ndarray]]
) -> tuple[list[tuple[int, ...]], list[dict[str, np.ndarray]]]:
    """The shapes of the batches `requests` ran in, queued behind a running (1, 4) request."""

    async def scenario() -> tuple[list[tuple[int, ...]], list[dict[str, np.ndarray]]]:
        runner = Gated(OnnxRunner(load_onnx(model_path), threads=1, label="minilm"))
        batcher = Batcher(runner, config, Metrics().for_version("minilm", "1"), {1: 0.01})
        first = asyncio.create_task(batcher.submit(text(1, 4), None))
        assert await asyncio.to_thread(runner.started.wait, 30)
        rest = [asyncio.create_task(batcher.submit(r, None)) for r in requests]
        await asyncio.sleep(0.05)
        runner.gate.set()
        await first
        outputs = [await task for task in rest]
        await batcher.close()
        return runner.shapes, outputs

    return run(scenario)


def test_requests_join_a_batch_by_nearness_of_length_within_the_padding_bound(
    zoo_repo: Path,
) -> None:
    requests = [text(1, 20), text(1, 40), text(1, 19), text(1, 6), text(1, 20)]
    shapes, _ = batches_of(zoo_repo / "minilm" / "1" / "model.onnx", ModelConfig(), requests)
    assert shapes == [(1, 4), (3, 20), (1, 40), (1, 6)]  # oldest first, then the nearest


def test_minilm_requests_of_different_lengths_are_padded_together_correctly(
    zoo_repo: Path,
) -> None:
    path = zoo_repo / "minilm" / "1" / "model.onnx"
    requests = [text(1, 6, 1), text(2, 5, 2), text(1, 8, 3), text(1, 7, 4)]  # 9 pads of 40
    shapes, outputs = batches_of(path, ModelConfig(max_padding=0.3), requests)
    assert shapes == [(1, 4), (5, 8)]  # the four merged, padded to 8
    model = load_onnx(path)
    for inputs, got in zip(requests, outputs, strict=True):
        want = model.run(inputs)["sentence_embedding"]
        np.testing.assert_allclose(got["sentence_embedding"], want, rtol=1e-4, atol=1e-4)
