"""Continuous batching: requests joining mid-generation give the text each gives alone;
cancelled and expired requests free their slots; a full pool refuses at once with a wait."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from inferopt.errors import InputError
from inferopt.generative.configs import tiny_folder
from inferopt.generative.export import export_causal_lm
from inferopt.generative.generate import GenerationConfig, Generator
from inferopt.serve.errors import NotReady, Overloaded
from inferopt.serve.scheduler import Finish, Policy, Scheduler

sys.path.insert(0, str(Path(__file__).parent))
from generation_support import slowed_decode

PROMPTS = ["The function returns", "import numpy as np", "a b c d e f g h i j " * 4, "x"]


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory) -> Generator:
    folder = tiny_folder("llama", tmp_path_factory.mktemp("sched-hf"))
    return Generator(export_causal_lm(folder, tmp_path_factory.mktemp("sched")), max_context=256)


class Recorder:
    def __init__(self) -> None:
        self.ttft: list[float] = []
        self.itl: list[float] = []
        self.finishes: list[Finish] = []
        self.refusals: list[str] = []
        self.prefixes: list[tuple[int, int]] = []

    def first_token(self, ttft_s: float) -> None:
        self.ttft.append(ttft_s)

    def token(self, itl_s: float) -> None:
        self.itl.append(itl_s)

    def finished(self, finish: Finish) -> None:
        self.finishes.append(finish)

    def rejected(self, reason: str) -> None:
        self.refusals.append(reason)

    def prefix(self, prompt_tokens: int, cached_tokens: int) -> None:
        self.prefixes.append((prompt_tokens, cached_tokens))


def test_requests_joining_mid_generation_give_their_text_alone(generator: Generator) -> None:
    config = GenerationConfig(max_new_tokens=24)
    alone = [generator.generate(p, config) for p in PROMPTS]

    async def run() -> list[tuple[str, Finish | None]]:
        scheduler = Scheduler(generator, slots=3, chunk_tokens=4)
        try:
            streams = []
            for prompt in PROMPTS:  # 4 requests, 3 slots; each arrives while others run
                streams.append(scheduler.submit(generator.prompt_ids(prompt), config))
                await asyncio.sleep(0.02)
            texts = await asyncio.gather(*(s.text() for s in streams))
            return [(t, s.finish) for t, s in zip(texts, streams, strict=True)]
        finally:
            scheduler.close()

    for (text, finish), expected, prompt in zip(asyncio.run(run()), alone, PROMPTS, strict=True):
        assert text == expected, prompt
        assert finish is not None and finish.reason in ("stop", "length")
        assert finish.prompt_tokens == len(generator.prompt_ids(prompt))
        assert finish.completion_tokens <= 24


def test_prompts_sharing_a_prefix_reuse_it_and_give_their_text_alone(
    generator: Generator,
) -> None:
    shared = "a b c d e f g h i j " * 3
    prompts = [shared + "k l m", shared + "x y", shared + "k l m"]
    config = GenerationConfig(max_new_tokens=16)
    alone = [generator.generate(p, config) for p in prompts]
    recorder = Recorder()

    async def run() -> list[tuple[str, Finish | None]]:
        scheduler = Scheduler(generator, slots=2, chunk_tokens=4, events=recorder)
        try:
            found = []
            for prompt in prompts:  # one after another: each finds the ones before cached
                stream = scheduler.submit(generator.prompt_ids(prompt), config)
                found.append((await stream.text(), stream.finish))
            return found
        finally:
            scheduler.close()

    found = asyncio.run(run())
    assert [text for text, _ in found] == alone
    cached = [finish.cached_tokens for _, finish in found if finish is not None]
    length = len(generator.prompt_ids(shared))
    assert cached[0] == 0 and length - 4 < cached[1] <= length and cached[1] % 4 == 0
    again = len(generator.prompt_ids(prompts[2]))
    assert cached[2] == (again - 1) // 4 * 4  # the same prompt again: all whole chunks but
    # the one holding its last token, which must run for its logits
    assert recorder.prefixes == [(f.prompt_tokens, f.cached_tokens) for _, f in found if f]


def test_a_cancelled_stream_frees_its_slot_at_once(generator: Generator) -> None:
    async def run() -> tuple[Finish | None, dict[str, int], float]:
        scheduler = Scheduler(generator, slots=1)
        try:
            stream = scheduler.submit(
                generator.prompt_ids("x"), GenerationConfig(max_new_tokens=200)
            )
            async for _ in stream:
                stream.cancel()  # the client went away after its first piece
            start = time.monotonic()
            while scheduler.stats()["running"]:
                await asyncio.sleep(0.005)
            return stream.finish, scheduler.stats(), time.monotonic() - start
        finally:
            scheduler.close()

    finish, stats, seconds = asyncio.run(run())
    assert finish is not None and finish.reason == "cancelled"
    assert finish.completion_tokens < 200
    assert stats == {"waiting": 0, "running": 0, "slots": 1} and seconds < 1.0


def test_a_full_pool_refuses_at_once_with_a_wait(generator: Generator) -> None:
    events = Recorder()
    long = GenerationConfig(max_new_tokens=150)

    async def run() -> tuple[Overloaded, float, Overloaded]:
        scheduler = Scheduler(generator, slots=1, max_waiting=1, events=events)
        try:
            ids = generator.prompt_ids("x")
            running = scheduler.submit(ids, long)
            async for _ in running:
                break  # it holds the slot now
            waiting = scheduler.submit(ids, long)
            start = time.monotonic()
            with pytest.raises(Overloaded) as full:
                scheduler.submit(ids, long)
            refused_in = time.monotonic() - start
            with pytest.raises(Overloaded) as late:  # a deadline the wait would pass
                scheduler.submit(ids, long, deadline=time.monotonic() + 1e-3)
            scheduler.max_wait_s = 1e-3  # a wait the running generation's budget passes
            running_wait = scheduler.predicted_wait_s()
            assert running_wait > 1e-3
            waiting.cancel()
            while scheduler.stats()["waiting"]:
                await asyncio.sleep(0.005)
            with pytest.raises(Overloaded, match="allowed"):
                scheduler.submit(ids, long)
            running.cancel()
            return full.value, refused_in, late.value
        finally:
            scheduler.close(timeout_s=0.5)

    with slowed_decode(0.002):  # the running one lasts 0.3 s: it holds its slot throughout
        full, refused_in, late = asyncio.run(run())
    assert full.status == 429 and full.retry_after_header() is not None
    assert "busy" in full.message and refused_in < 0.05
    assert late.status == 429 and events.refusals == ["queue_full", "queue_full", "queue_wait"]


def test_a_fresh_scheduler_predicts_waits_from_a_measured_step(generator: Generator) -> None:
    config = GenerationConfig(max_new_tokens=100, ignore_eos=True)

    async def run() -> tuple[str, float, float]:
        scheduler = Scheduler(generator, slots=1, max_waiting=4)
        first_step = scheduler.step_s
        try:
            ids = generator.prompt_ids("x")
            running = scheduler.submit(ids, config)
            started = time.monotonic()
            # Its wait is the running one's 100 steps: well inside 2 s, so it is taken.
            waiting = scheduler.submit(ids, config, deadline=started + 2.0)
            await running.text()
            text = await waiting.text()
            return text, first_step, time.monotonic() - started
        finally:
            scheduler.close()

    text, first_step, took = asyncio.run(run())
    assert text and 0 < first_step < 0.05 and took < 2.0


def test_deadline_stop_strings_and_budget_end_generations(generator: Generator) -> None:
    async def run() -> list[Finish | None]:
        scheduler = Scheduler(generator, slots=2)
        try:
            ids = generator.prompt_ids(PROMPTS[0])
            expired = scheduler.submit(
                ids, GenerationConfig(max_new_tokens=200), deadline=time.monotonic() - 0.001
            )
            budget = scheduler.submit(ids, GenerationConfig(max_new_tokens=3))
            await asyncio.gather(expired.text(), budget.text())
            return [expired.finish, budget.finish]
        finally:
            scheduler.close()

    expired, budget = asyncio.run(run())
    assert expired is not None and expired.reason == "deadline"
    assert expired.completion_tokens == 0
    assert budget is not None and budget.reason in ("length", "stop")
    assert budget.completion_tokens <= 3


def test_static_batching_waits_for_the_whole_batch(generator: Generator) -> None:
    async def run(policy: Policy) -> dict[str, int]:
        scheduler = Scheduler(generator, slots=2, policy=policy)
        try:
            ids = generator.prompt_ids("x")
            first = scheduler.submit(ids, GenerationConfig(max_new_tokens=250, ignore_eos=True))
            async for _ in first:
                break
            scheduler.submit(ids, GenerationConfig(max_new_tokens=2))
            # A slot is free; only continuous batching uses it, at its next step (polled, so
            # that a slow machine's late step does not count as waiting). The first one still
            # has over 200 steps to go when static batching is looked at.
            if policy == "static":
                await asyncio.sleep(0.006)
            until = time.monotonic() + 0.02
            while policy == "continuous" and time.monotonic() < until:
                if not scheduler.stats()["waiting"]:
                    break
                await asyncio.sleep(0.001)
            during = scheduler.stats()
            first.cancel()
            return during
        finally:
            scheduler.close()

    assert asyncio.run(run("static"))["waiting"] == 1
    assert asyncio.run(run("continuous"))["waiting"] == 0


def test_bad_requests_and_closing(generator: Generator) -> None:
    async def run() -> None:
        scheduler = Scheduler(generator, slots=1)
        with pytest.raises(InputError, match="empty"):
            scheduler.submit([], GenerationConfig())
        with pytest.raises(InputError, match="context cap"):
            scheduler.submit([1] * 250, GenerationConfig(max_new_tokens=10))
        stream = scheduler.submit(generator.prompt_ids("x"), GenerationConfig(max_new_tokens=5))
        scheduler.close()  # drains: the running generation ends normally
        await stream.text()
        assert stream.finish is not None and stream.finish.reason in ("stop", "length")
        with pytest.raises(NotReady):
            scheduler.submit(generator.prompt_ids("x"), GenerationConfig())

    asyncio.run(run())
    with pytest.raises(ValueError):
        Scheduler(generator, slots=1, chunk_tokens=0)
