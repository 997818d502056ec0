"""Real English sentences for text models, from Python's own documentation (pydoc_data ships
with CPython), so calibration and evaluation need no download. The split is deterministic:
a sentence's hash, not its position, decides which side it falls on."""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pydoc_data.topics import topics

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_CODE_MARKS = (">>>", "::", "...", "|", "{", "}", "==", "->", "<", ">", "\\")
MIN_CHARS, MAX_CHARS = 25, 400
EVAL_FRACTION_PER_100 = 20  # 20% of sentences are held out for evaluation


def _is_prose(sentence: str) -> bool:
    if not MIN_CHARS <= len(sentence) <= MAX_CHARS:
        return False
    if any(mark in sentence for mark in _CODE_MARKS):
        return False
    letters = sum(ch.isalpha() or ch.isspace() for ch in sentence)
    return letters / len(sentence) > 0.85


@lru_cache(maxsize=1)
def sentences() -> tuple[str, ...]:
    """Every prose sentence of the documentation topics, deduplicated, in a stable order."""
    found: set[str] = set()
    for key in sorted(topics):
        for paragraph in re.split(r"\n\s*\n", topics[key]):
            text = " ".join(paragraph.split())
            found.update(s for s in _SENTENCE_END.split(text) if _is_prose(s))
    return tuple(sorted(found, key=_digest))


def _digest(sentence: str) -> str:
    return hashlib.sha256(sentence.encode()).hexdigest()


def _held_out(sentence: str) -> bool:
    return int(_digest(sentence)[:8], 16) % 100 < EVAL_FRACTION_PER_100


def split() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(train, eval): disjoint, deterministic, about 80/20."""
    train: list[str] = []
    held_out: list[str] = []
    for s in sentences():
        side = held_out if _held_out(s) else train
        side.append(s)
    return tuple(train), tuple(held_out)


@lru_cache(maxsize=1)
def training_text() -> tuple[str, ...]:
    """More text to train on (distillation) than the prose sentences: every sentence of
    the documentation from 10 to 400 characters, code-like ones included, on the training
    side of the same hash split, so none of them is ever an evaluation sentence."""
    found: set[str] = set()
    for key in sorted(topics):
        for paragraph in re.split(r"\n\s*\n", topics[key]):
            text = " ".join(paragraph.split())
            found.update(s for s in _SENTENCE_END.split(text) if 10 <= len(s) <= MAX_CHARS)
    return tuple(s for s in sorted(found, key=_digest) if not _held_out(s))
