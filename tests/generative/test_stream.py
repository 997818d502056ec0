"""Streaming detokenisation: pieces are whole characters, and joined they are the decoded text,
for byte-level BPE (tokens ending mid-character) and SentencePiece-like space rules."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from inferopt.generative.stream import REPLACEMENT, TextStreamer

TEXTS = ["日本語 🙂 café", "naïve Über 🎉🚀 中文字符, ok", "😀"]


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_artifact: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tiny_llama_artifact / "tokenizer.json"))


def _pieces(streamer: TextStreamer, ids: Sequence[int]) -> list[str]:
    return [streamer.push(i) for i in ids] + [streamer.finish()]


@pytest.mark.parametrize("text", TEXTS)
def test_byte_level_pieces_are_whole_characters(tokenizer: Tokenizer, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False).ids

    def decode(x: Sequence[int]) -> str:
        return str(tokenizer.decode(list(x), skip_special_tokens=True))

    pieces = _pieces(TextStreamer(decode), ids)
    assert "".join(pieces) == decode(ids) == text
    assert not any(REPLACEMENT in p for p in pieces)
    # The tiny vocabulary splits these characters over several tokens, so some pushes had
    # to wait: the test exercises the partial-character path, not just whole tokens.
    assert len(ids) > len(text.encode("utf-8")) / 4 and "" in pieces[:-1]


def test_prompt_context_is_not_emitted(tokenizer: Tokenizer) -> None:
    prompt = tokenizer.encode("Return the", add_special_tokens=False).ids
    new = tokenizer.encode(" value 🙂 of x", add_special_tokens=False).ids

    def decode(x: Sequence[int]) -> str:
        return str(tokenizer.decode(list(x)))

    pieces = _pieces(TextStreamer(decode, prompt), new)
    assert "".join(pieces) == " value 🙂 of x"


def test_sentencepiece_spaces_survive_the_window() -> None:
    # SentencePiece decoders drop the leading space of the first token of a decode: decoding
    # each token alone would lose every space, the window keeps them.
    vocab = ["▁Hello", "▁wor", "ld", "!", "▁again"]

    def decode(ids: Sequence[int]) -> str:
        return "".join(vocab[i] for i in ids).replace("▁", " ").removeprefix(" ")

    ids = [0, 1, 2, 3, 4, 1, 2]
    pieces = _pieces(TextStreamer(decode), ids)
    assert "".join(pieces) == decode(ids) == "Hello world! again world"


def test_an_unfinished_character_comes_out_at_the_end(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("ok 🙂", add_special_tokens=False).ids
    cut = ids[:-1]  # the emoji's last token is missing: its bytes never complete

    def decode(x: Sequence[int]) -> str:
        return str(tokenizer.decode(list(x)))

    streamer = TextStreamer(decode)
    held = "".join(streamer.push(i) for i in cut)
    assert REPLACEMENT not in held
    assert held + streamer.finish() == decode(cut)
