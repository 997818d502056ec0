"""Prompts for streaming benchmarks (`inferopt bench --api ...`): consecutive stretches of the
held-out corpus text (inferopt.zoo.corpus, the second half of its held-out sentences, as
generative.fidelity.held_out_prompts takes them; nothing downloads), each of a length drawn
from a normal distribution, in tokens of a tokenizer.json (`tokenizers`) when one is given,
else in whitespace-separated words.

    prompts = make_prompts(100, PromptLength.parse("128:32"), load_tokenizer("tok.json"))

Consecutive stretches, not repeats of one prompt: a server with a prefix cache must not serve
the whole benchmark from its cache. To measure a prefix cache, `shared_prefix` puts one more
stretch of that many tokens (or words) before every prompt, as a shared system prompt would
be (vLLM's benchmark calls it the random prefix length).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from inferopt.errors import first_line
from inferopt.loadgen.inputs import BenchError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class PromptLength:
    """Prompt lengths ~ Normal(mean, stddev), rounded, at least 1 (tokens or words).

    Raises:
        ValueError: mean below 1, or stddev negative or not finite.
    """

    mean: float
    stddev: float = 0.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.mean) and self.mean >= 1):
            raise ValueError(f"the prompt length must be >= 1, got {self.mean:g}")
        if not (np.isfinite(self.stddev) and self.stddev >= 0):
            raise ValueError(f"the prompt length's stddev must be >= 0, got {self.stddev:g}")

    @classmethod
    def parse(cls, text: str) -> PromptLength:
        """ "128" (every prompt 128) or "128:32" (mean 128, stddev 32). Raises ValueError."""
        mean, sep, stddev = text.partition(":")
        try:
            return cls(float(mean), float(stddev) if sep else 0.0)
        except ValueError as exc:
            if "must be" in str(exc):  # a number out of range: say which flag it came from
                raise ValueError(f"--prompt-tokens {text!r}: {exc}") from None
            raise ValueError(f"--prompt-tokens must be MEAN or MEAN:STDDEV, got {text!r}") from None

    def draw(self, count: int, seed: int) -> list[int]:
        """`count` lengths, the same for the same seed."""
        rng = np.random.default_rng(seed)
        values = (
            rng.normal(self.mean, self.stddev, size=count) if self.stddev else [self.mean] * count
        )
        return [max(1, round(float(v))) for v in values]


@dataclass(frozen=True)
class Prompts:
    texts: list[str]
    lengths: list[int]  # of each text, measured in `unit` (re-counted, not the drawn length)
    unit: str  # "tokens" or "words"
    origin: str  # where the prompts come from, in words
    repeats: bool  # the text ran out and prompts start over from its beginning


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A `tokenizers.Tokenizer` from a tokenizer.json, or from a folder holding one.

    Raises:
        BenchError: no such file, or not a tokenizer.
    """
    from tokenizers import Tokenizer

    file = Path(path)
    if file.is_dir():
        file = file / TOKENIZER_FILE
    if not file.is_file():
        raise BenchError(f"--tokenizer {path}: no {TOKENIZER_FILE} there")
    try:
        return Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception for a bad file
        raise BenchError(f"--tokenizer {path}: not a tokenizer: {first_line(exc)}") from exc


def make_prompts(
    count: int,
    length: PromptLength,
    tokenizer: Tokenizer | None = None,
    seed: int = 0,
    shared_prefix: int = 0,
) -> Prompts:
    """`count` prompts, consecutive stretches of the held-out text, with lengths drawn from
    `length` (seeded), each after the same `shared_prefix`-long stretch (0: none); lengths
    count the prefix. Raises ValueError when count < 1 or shared_prefix < 0."""
    if count < 1 or shared_prefix < 0:
        raise ValueError(f"need count >= 1 and shared_prefix >= 0, got {count}, {shared_prefix}")
    wanted = length.draw(count, seed)
    if shared_prefix:
        wanted = [shared_prefix, *wanted]
    sentences = _held_out()
    if tokenizer is None:
        texts, repeats = _cut_words(sentences, wanted)
    else:
        texts, repeats = _cut_tokens(sentences, wanted, tokenizer)
    if shared_prefix:
        prefix, *texts = texts
        texts = [f"{prefix}\n\n{text}" for text in texts]
    if tokenizer is None:
        lengths, unit = [len(t.split()) for t in texts], "words"
    else:
        encoded = tokenizer.encode_batch(texts, add_special_tokens=False)
        lengths, unit = [len(e.ids) for e in encoded], "tokens"
    low, high = min(lengths), max(lengths)
    span = f"{low}" if low == high else f"{low}-{high}"
    origin = f"held-out corpus text, {count} prompts of {span} {unit}"
    if shared_prefix:
        origin += f", each starting with the same {shared_prefix} {unit}"
    if repeats:
        origin += " (the text ran out, so prompts repeat)"
    return Prompts(texts, lengths, unit, origin, repeats)


def _held_out() -> Sequence[str]:
    from inferopt.zoo import corpus

    held_out = corpus.split()[1]
    return held_out[len(held_out) // 2 :]


def _cut_words(sentences: Sequence[str], wanted: list[int]) -> tuple[list[str], bool]:
    words = " ".join(sentences).split()
    texts, start, repeats = [], 0, False
    for n in wanted:
        if start + n > len(words):
            start, repeats = 0, True
        texts.append(" ".join(words[start : start + n]))
        start += n
    return texts, repeats


def _cut_tokens(
    sentences: Sequence[str], wanted: list[int], tokenizer: Tokenizer
) -> tuple[list[str], bool]:
    """Cut the running text at token boundaries (the tokenizer's character offsets), so each
    prompt is real text of about its token count (a cut can merge differently at the edges;
    Prompts.lengths re-counts). Encodes only as much text as needed, doubling."""
    need, take = sum(wanted), 256
    while True:
        text = " ".join(sentences[:take])
        offsets = tokenizer.encode(text, add_special_tokens=False).offsets
        if len(offsets) >= need or take >= len(sentences):
            break
        take *= 2
    texts, start, repeats = [], 0, False
    for n in wanted:
        if start + n > len(offsets):
            start, repeats = 0, True
        end = min(start + n, len(offsets))  # a text shorter than one prompt: all of it
        texts.append(text[offsets[start][0] : offsets[end - 1][1]].strip())
        start = end
    return texts, repeats
