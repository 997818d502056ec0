"""Prompts for stream benchmarks with a shared prefix: every prompt starts with the same text
of the length asked for, then goes on with its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferopt.loadgen.prompts import PromptLength, load_tokenizer, make_prompts


def test_a_shared_prefix_starts_every_prompt_and_counts_in_its_length() -> None:
    plain = make_prompts(20, PromptLength(30), seed=1)
    shared = make_prompts(20, PromptLength(30), seed=1, shared_prefix=50)
    prefix = shared.texts[0].split("\n\n")[0]
    assert len(prefix.split()) == 50
    assert all(t.startswith(prefix + "\n\n") for t in shared.texts)
    assert len({t.split("\n\n", 1)[1] for t in shared.texts}) == 20  # their own questions
    assert shared.lengths == [n + 50 for n in plain.lengths]
    assert "each starting with the same 50 words" in shared.origin
    with pytest.raises(ValueError, match="shared_prefix >= 0"):
        make_prompts(2, PromptLength(3), shared_prefix=-1)


def test_a_shared_prefix_in_tokens(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = " ".join(make_prompts(20, PromptLength(400)).texts).split()
    vocab = {"[UNK]": 0} | {w: i + 1 for i, w in enumerate(dict.fromkeys(words))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()  # punctuation is a token of its own
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    prompts = make_prompts(4, PromptLength(16), load_tokenizer(tmp_path), shared_prefix=64)
    prefix = prompts.texts[0].split("\n\n")[0]
    assert len(tokenizer.encode(prefix, add_special_tokens=False).ids) == 64
    assert all(t.startswith(prefix + "\n\n") for t in prompts.texts)
    assert prompts.lengths == [80] * 4
