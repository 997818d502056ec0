"""A fixed pool of KV-cache slots, one row each of a shared buffer per cache tensor, so that
sequences of different lengths decode together in one batched run (continuous batching).

The buffers are float32 [slots, kv_heads, max_context, head_dim], allocated once. ONNX
Runtime's GroupQueryAttention updates its cache in place when past and present are the same
memory: each row's tokens sit at the start of the row (right-padded), the attention mask's
row sum says how many there are, and the new keys and values are written after them. So a
step binds rows [0, hi) of every buffer as both past and present: no copy, whatever the
lengths. Rows that are not decoding in a step (free, or between prefill chunks) take a dummy
token written after their last real one; the next real token overwrites it, so it is never
read. Other attention graphs (the dynamo exporter's concatenate their cache) cannot do this,
and are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from inferopt.errors import InputError
from inferopt.generative.memory import HEADROOM, available_bytes, onnx_weight_bytes

if TYPE_CHECKING:
    from inferopt.generative.generate import Generator

DUMMY_TOKEN = 0  # fed to rows that are not decoding in a step; its output is discarded


def slots_for_memory(generator: Generator, cap: int = 64, reserved: int = 0) -> int:
    """How many slots of the generator's capped context fit in the memory available after
    its weights, `reserved` bytes (e.g. the prefix cache's) and HEADROOM (at least 1, at most
    `cap`).

    Raises:
        InputError: not even one slot fits.
    """
    per_slot = generator.layout.bytes_per_token() * generator.layout.max_context
    weights = onnx_weight_bytes(generator.folder / "model.onnx")
    free = available_bytes() - weights - reserved - HEADROOM
    if free < per_slot:
        raise InputError(
            f"{generator.folder}: one KV-cache slot of {generator.layout.max_context} tokens "
            f"needs {per_slot / 2**20:.0f} MiB, and {max(free, 0) / 2**20:.0f} MiB is left "
            "after the weights; lower the context cap"
        )
    return int(min(cap, free // per_slot))


class SlotPool:
    """`slots` rows of KV cache for `generator`'s decoder; not thread-safe (one caller).

    Raises:
        InputError: the decoder has no GroupQueryAttention (its cache cannot be updated in
            place), or its cache is not float32.
        ValueError: slots < 1.
    """

    def __init__(self, generator: Generator, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        layout = generator.layout
        if not layout.in_place:
            raise InputError(
                f"{generator.folder}: continuous batching needs a decoder whose attention is "
                "GroupQueryAttention (ORT GenAI's builder export, `inferopt export`'s default "
                "for Llama, Qwen2 and Phi3); this one concatenates its cache"
            )
        if layout.dtype != "float32":
            raise InputError(f"{generator.folder}: a {layout.dtype} KV cache is not supported")
        self.session = generator.session
        self.slots = slots
        self.max_context = layout.max_context
        self.past_names, self.present_names = layout.past_names(), layout.present_names()
        shape = (slots, layout.kv_heads, layout.max_context, layout.head_dim)
        self.buffers = [np.zeros(shape, dtype=np.float32) for _ in self.past_names]
        self.lengths = [0] * slots  # tokens held by each row
        self.positions = "position_ids" in generator._inputs
        self._views: dict[int, list[ort.OrtValue]] = {}

    def prefill(self, slot: int, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """Feed `ids` ([n] int64) after the slot's tokens; the last position's logits [vocab].

        Raises:
            InputError: the slot would pass max_context.
        """
        total = self.lengths[slot] + ids.size
        self._check(slot, total)
        start = self.lengths[slot]
        logits = self._run(
            slice(slot, slot + 1),
            ids.reshape(1, -1),
            np.ones((1, total), dtype=np.int64),
            np.arange(start, total, dtype=np.int64)[None],
        )
        self.lengths[slot] = total
        last: npt.NDArray[np.float32] = logits[0, -1]
        return last

    def decode(self, tokens: Mapping[int, int]) -> dict[int, npt.NDArray[np.float32]]:
        """One token for each slot in `tokens` (slot -> id), all in one batched run; each
        slot's next-token logits [vocab].

        Raises:
            InputError: a slot would pass max_context.
        """
        rows = max(tokens) + 1
        total = max(self.lengths[:rows]) + 1
        mask = np.zeros((rows, total), dtype=np.int64)
        ids = np.full((rows, 1), DUMMY_TOKEN, dtype=np.int64)
        for row in range(rows):
            if row in tokens:
                self._check(row, self.lengths[row] + 1)
                ids[row, 0] = tokens[row]
            # A row not decoding gets its dummy token written after its last real one.
            mask[row, : min(self.lengths[row] + 1, total)] = 1
        positions = np.array([[n] for n in self.lengths[:rows]], dtype=np.int64)
        logits = self._run(slice(0, rows), ids, mask, positions)
        for row in tokens:
            self.lengths[row] += 1
        return {row: logits[row, -1] for row in tokens}

    def release(self, slot: int) -> None:
        """The slot holds no tokens any more (its memory is reused as is)."""
        self.lengths[slot] = 0

    def _check(self, slot: int, total: int) -> None:
        if total > self.max_context:
            raise InputError(f"slot {slot} would hold {total} tokens, past {self.max_context}")

    def _run(
        self,
        rows: slice,
        ids: npt.NDArray[np.int64],
        mask: npt.NDArray[np.int64],
        positions: npt.NDArray[np.int64],
    ) -> npt.NDArray[np.float32]:
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        if self.positions:
            binding.bind_cpu_input("position_ids", positions)
        for past, present, value in zip(
            self.past_names, self.present_names, self._bound(rows), strict=True
        ):
            # The same memory as past and present: GroupQueryAttention writes in place.
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)
        binding.bind_output("logits", "cpu")
        self.session.run_with_iobinding(binding)
        logits: npt.NDArray[np.float32] = binding.get_outputs()[-1].numpy()
        return logits

    def _bound(self, rows: slice) -> list[ort.OrtValue]:
        """OrtValues over rows [start, stop) of every buffer (views, not copies), kept."""
        key = rows.start * (self.slots + 1) + rows.stop
        if key not in self._views:
            self._views[key] = [ort.OrtValue.ortvalue_from_numpy(b[rows]) for b in self.buffers]
        return self._views[key]
