"""Prefix caching: the KV cache of prompt prefixes seen before, reused instead of prefilled.

Requests that share a system prompt (or few-shot examples, or a conversation so far) share
the KV cache of those tokens: a token's keys and values depend only on the tokens up to it.
The cache keeps prompt prefixes in whole blocks of `block` tokens, least recently used
first out, up to `capacity_tokens` tokens. A block is keyed by every token up to its end
(the tuple itself: exact, no hash collisions to reason about), so a block is reused only
after the same tokens in the same positions.

Blocks are the scheduler's prefill chunks (serve/scheduler.py feeds prompts in chunks of
`block` tokens from position 0), so a stored block holds exactly the numbers the same chunk
would compute again: a hit gives the same tokens as a miss, bit for bit.

A hit copies the blocks into the slot's rows of the pool's buffers instead of running them:
on smollm2-135m (46 KiB per token) storing or restoring 256 tokens takes 0.5 ms, where
prefilling one 64-token chunk takes 43 ms (docs/serve.md "Prefix caching").
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from inferopt.generative.slots import SlotPool

Block = list[npt.NDArray[np.float32]]  # one [kv_heads, block, head_dim] copy per buffer


class PrefixCache:
    """Whole-block prompt prefixes of `pool`'s slots; not thread-safe (the pool's caller).

    Raises:
        ValueError: block < 1 or capacity_tokens < 0.
    """

    def __init__(self, pool: SlotPool, block: int, capacity_tokens: int) -> None:
        if block < 1 or capacity_tokens < 0:
            raise ValueError(f"block must be >= 1 and capacity >= 0, got {block}, "
                             f"{capacity_tokens}")  # fmt: skip
        self.pool = pool
        self.block = block
        self.capacity_blocks = capacity_tokens // block
        self._blocks: OrderedDict[tuple[int, ...], Block] = OrderedDict()

    @property
    def tokens(self) -> int:
        """Tokens held."""
        return len(self._blocks) * self.block

    def restore(self, slot: int, ids: Sequence[int]) -> int:
        """Copy the longest cached prefix of `ids` into `slot` (which must hold no tokens)
        and return its length in tokens: whole blocks, always short of len(ids) (the last
        prompt token must run, for its logits)."""
        keys: list[tuple[int, ...]] = []
        for end in range(self.block, len(ids), self.block):  # end < len(ids): one left to run
            key = tuple(ids[:end])
            if key not in self._blocks:
                break
            keys.append(key)
        self._touch(keys)
        for index, block in enumerate(self._blocks[key] for key in keys):
            rows = slice(index * self.block, (index + 1) * self.block)
            for buffer, values in zip(self.pool.buffers, block, strict=True):
                buffer[slot, :, rows] = values
        restored = len(keys) * self.block
        self.pool.lengths[slot] = restored
        return restored

    def store(self, slot: int, ids: Sequence[int], upto: int) -> None:
        """Keep the whole blocks of `ids[:upto]`, which `slot` holds, that are not yet kept."""
        if self.capacity_blocks == 0:
            return
        keys = [tuple(ids[:end]) for end in range(self.block, upto + 1, self.block)]
        for end, key in zip(range(self.block, upto + 1, self.block), keys, strict=True):
            if key not in self._blocks:
                rows = slice(end - self.block, end)
                self._blocks[key] = [b[slot, :, rows].copy() for b in self.pool.buffers]
        self._touch(keys)
        while len(self._blocks) > self.capacity_blocks:
            self._blocks.popitem(last=False)

    def _touch(self, keys: list[tuple[int, ...]]) -> None:
        """Mark a chain of blocks used, its first block last: eviction (oldest first) then
        takes a chain's later blocks before its earlier ones, which the later ones need."""
        for key in reversed(keys):
            self._blocks.move_to_end(key)
