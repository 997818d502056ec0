"""The KV-slot pool: rows of any length decode together in one run and give each sequence's
tokens as it alone would; other attention graphs and overlong rows are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inferopt.errors import InputError
from inferopt.generative.export import export_causal_lm
from inferopt.generative.generate import GenerationConfig, Generator
from inferopt.generative.slots import SlotPool, slots_for_memory

PROMPTS = ["The function returns", "import numpy as np", "a b c d e f g h i j k l m n o", "x"]


def _greedy_alone(gen: Generator, ids: list[int], steps: int) -> list[int]:
    config = GenerationConfig(max_new_tokens=steps)
    return list(gen.token_ids(ids, config))


def test_rows_of_different_lengths_decode_as_each_alone(tiny_llama_artifact: Path) -> None:
    gen = Generator(tiny_llama_artifact, max_context=128)
    pool = SlotPool(gen, slots=4)
    prompts = [gen.prompt_ids(p) for p in PROMPTS]
    expected = [_greedy_alone(gen, ids, 12) for ids in prompts]
    found: dict[int, list[int]] = {}
    # Row 3 stays free while the others run; row 2's prompt goes in chunks of 3 tokens.
    for slot, ids in enumerate(prompts[:3]):
        chunks = [ids[i : i + 3] for i in range(0, len(ids), 3)] if slot == 2 else [ids]
        for chunk in chunks:
            logits = pool.prefill(slot, np.asarray(chunk, dtype=np.int64))
        found[slot] = [int(np.argmax(logits))]
    for _ in range(11):
        step = pool.decode({slot: tokens[-1] for slot, tokens in found.items()})
        for slot, row in step.items():
            found[slot].append(int(np.argmax(row)))
    for slot in found:
        eos = [i for i, t in enumerate(found[slot]) if t in gen.eos_ids]
        assert found[slot][: eos[0] if eos else None] == expected[slot], slot
    assert pool.lengths[:3] == [len(ids) + 11 for ids in prompts[:3]] and pool.lengths[3] == 0


def test_a_released_slot_starts_again_from_nothing(tiny_llama_artifact: Path) -> None:
    gen = Generator(tiny_llama_artifact, max_context=64)
    pool = SlotPool(gen, slots=1)
    ids = np.asarray(gen.prompt_ids(PROMPTS[0]), dtype=np.int64)
    first = pool.prefill(0, ids)
    pool.decode({0: 5})
    pool.release(0)
    np.testing.assert_array_equal(pool.prefill(0, ids), first)


def test_past_the_context_and_other_attention_are_refused(
    tiny_llama_artifact: Path, tiny_llama_folder: Path, tmp_path: Path
) -> None:
    gen = Generator(tiny_llama_artifact, max_context=8)
    pool = SlotPool(gen, slots=1)
    with pytest.raises(InputError, match="past 8"):
        pool.prefill(0, np.arange(1, 10, dtype=np.int64))
    with pytest.raises(ValueError):
        SlotPool(gen, slots=0)
    assert 1 <= slots_for_memory(gen) <= 64
    dynamo = export_causal_lm(tiny_llama_folder, tmp_path / "dynamo", exporter="dynamo")
    with pytest.raises(InputError, match="GroupQueryAttention"):
        SlotPool(Generator(dynamo), slots=1)
