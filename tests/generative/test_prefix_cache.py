"""The prefix cache: a restored prefix holds the very numbers a prefill would write, the last
prompt token always runs, and eviction takes a chain's later blocks first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inferopt.generative.generate import Generator
from inferopt.generative.prefix_cache import PrefixCache
from inferopt.generative.slots import SlotPool

BLOCK = 8


def _prefill(pool: SlotPool, cache: PrefixCache, slot: int, ids: list[int]) -> np.ndarray:
    """As the scheduler does: restore, then the rest in BLOCK-token chunks, storing each."""
    pool.release(slot)
    fed = cache.restore(slot, ids)
    logits = np.empty(0)
    while fed < len(ids):
        chunk = ids[fed : fed + BLOCK]
        logits = pool.prefill(slot, np.asarray(chunk, dtype=np.int64))
        fed += len(chunk)
        cache.store(slot, ids, fed)
    return logits


@pytest.fixture
def pool(tiny_llama_artifact: Path) -> SlotPool:
    return SlotPool(Generator(tiny_llama_artifact, max_context=128), slots=2)


def test_a_restored_prefix_is_what_a_prefill_writes(pool: SlotPool) -> None:
    cache = PrefixCache(pool, BLOCK, capacity_tokens=64)
    shared = list(range(100, 120))  # 2 whole blocks and 4 tokens
    first = _prefill(pool, cache, 0, [*shared, 7, 8, 9])
    assert cache.tokens == 16  # blocks [0, 8) and [8, 16); the rest is not a whole block
    second = _prefill(pool, cache, 1, [*shared, 7, 8, 9])
    assert pool.lengths == [23, 23]
    for buffer in pool.buffers:
        np.testing.assert_array_equal(buffer[1, :, :23], buffer[0, :, :23])
    np.testing.assert_array_equal(second, first)
    pool.release(1)
    assert cache.restore(1, [*shared[:16], 5]) == 16
    assert cache.restore(1, shared[:16]) == 8  # the last token must run for its logits
    assert cache.restore(1, [1, *shared]) == 0  # same tokens, other positions: no hit


def test_eviction_takes_later_blocks_first_and_capacity_zero_keeps_nothing(
    pool: SlotPool,
) -> None:
    cache = PrefixCache(pool, BLOCK, capacity_tokens=24)  # 3 blocks
    a, b = list(range(200, 232)), list(range(300, 310))
    _prefill(pool, cache, 0, a)  # 4 blocks into room for 3: the last one goes
    assert cache.tokens == 24
    assert cache.restore(1, [*a, 1]) == 24  # a's first three blocks are kept, not its last
    _prefill(pool, cache, 1, b)  # b's one block pushes out a's third
    assert cache.restore(1, [*a, 1]) == 16
    off = PrefixCache(pool, BLOCK, capacity_tokens=0)
    _prefill(pool, off, 0, a)
    assert off.tokens == 0 and off.restore(1, [*a, 1]) == 0
    with pytest.raises(ValueError, match="block"):
        PrefixCache(pool, 0, 8)
