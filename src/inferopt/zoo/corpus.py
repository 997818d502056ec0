"""English sentences for text models from what every Python installation carries: the
language's documentation (pydoc_data) and the docstrings of the standard library and of every
distribution installed in this interpreter's site-packages, read with `ast` (never imported).
Nothing downloads.

A *document* is one documentation topic or one source file. The hash of its name (a path
relative to its root, so the same on every machine) decides whether it is training or held out,
so the near-duplicate sentences of one document never straddle the split; a sentence that also
occurs in a held-out document is never on the training side. Every walk is sorted and each side
is ordered by sentence hash, so the same interpreter with the same installed distributions makes
the same corpus everywhere. The result is cached as gzip'd JSON under `cache_dir("corpus")`,
keyed by the Python version and the installed distributions' names and versions.
"""

from __future__ import annotations

import ast
import gc
import gzip
import hashlib
import json
import os
import re
import sys
import sysconfig
import warnings
from collections.abc import Iterator
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from inferopt.cache import cache_dir

BUILD = 2  # bump when the build changes what it makes, so that older caches are not reused
MIN_CHARS, MAX_CHARS = 25, 400  # a prose sentence's length
MIN_TRAINING_CHARS = 10  # the shortest sentence of the training text
HELD_OUT_PER_100 = 15  # about 15% of documents are held out for evaluation
# Test code is a third of the bytes and its docstrings are one-line labels, not prose;
# pydoc_data is read as topics, not as source.
_SKIP_DIRS = frozenset({"__pycache__", "site-packages", "test", "tests", "testing", "pydoc_data"})
_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
# reST markup around words (:func:`open`, ``None``, `link`_) is dropped, keeping the words.
_MARKUP = re.compile(r":[\w.:+-]+:`~?([^`]+?)`|``([^`]+?)``|`([^`]+?)`_{0,2}")
_CODE_MARKS = (">>>", "::", " :", "://", "...", "|", "{", "}", "=", "<", ">", "\\",
               "`", "_", "[", "$")  # fmt: skip
# A Google-style section's label ("Returns: The parsed value.") is not part of the sentence.
_SECTION = re.compile(
    r"^(?:Args|Arguments|Parameters|Returns?|Raises|Yields|Notes?|Examples?|Warnings?|"
    r"Attributes|Todo):\s+"
)
_DEFS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
Source = tuple[str, str]  # (document name, file path)


def _is_prose(sentence: str) -> bool:
    """A sentence, not code: 25-400 characters, capitalised, ended by . ! or ?, no code marks,
    more than 85% letters and spaces."""
    if not MIN_CHARS <= len(sentence) <= MAX_CHARS:
        return False
    if not (sentence[0].isupper() and sentence[-1] in ".!?"):
        return False
    if any(mark in sentence for mark in _CODE_MARKS):
        return False
    letters = sum(ch.isalpha() or ch.isspace() for ch in sentence)
    return letters / len(sentence) > 0.85


def _unmark(match: re.Match[str]) -> str:
    return next(group for group in match.groups() if group is not None)


def split_sentences(text: str) -> list[str]:
    """Every sentence of `text` (paragraphs split at blank lines, whitespace collapsed, reST
    markup dropped) from MIN_TRAINING_CHARS to MAX_CHARS characters long, in order."""
    found = []
    for paragraph in _PARAGRAPH.split(text):
        joined = " ".join(paragraph.split())
        if "`" in joined:
            joined = _MARKUP.sub(_unmark, joined)
        joined = _SECTION.sub("", joined)
        found += [
            s for s in _SENTENCE_END.split(joined) if MIN_TRAINING_CHARS <= len(s) <= MAX_CHARS
        ]
    return found


def _docstrings(node: ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """The docstrings of a module, its classes and functions (nested too), one per paragraph."""
    own = ast.get_docstring(node) or ""
    nested = [_docstrings(stmt) for stmt in node.body if isinstance(stmt, _DEFS)]
    return "\n\n".join(text for text in (own, *nested) if text)


def file_sentences(path: str) -> list[str]:
    """The sentences of a source file's docstrings; none for a file Python cannot parse (a
    template, another Python's syntax) or without a triple-quoted string (no docstring worth
    reading: this skips parsing a fifth of the files)."""
    try:
        source = Path(path).read_bytes()
        if b'"""' not in source and b"'''" not in source:
            return []
        return split_sentences(_docstrings(_parse(source)))
    except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
        return []


def _parse(source: bytes) -> ast.Module:
    # A syntax tree holds no cycles, so the cyclic collector, which its millions of nodes
    # would set off again and again, is off meanwhile: this halves the corpus's build time.
    enabled = gc.isenabled()
    gc.disable()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in other people's code
            return ast.parse(source)
    finally:
        if enabled:
            gc.enable()


def _walk(root: Path, prefix: str) -> Iterator[Source]:
    """The .py files under `root`, sorted at every level (os.walk's order is the disk's)."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        here = Path(folder)
        for name in sorted(files):
            if name.endswith(".py") and not name.startswith("test_"):
                yield f"{prefix}/{(here / name).relative_to(root).as_posix()}", str(here / name)


def _roots() -> list[tuple[str, Path]]:
    paths = sysconfig.get_paths()
    site = sorted({paths["purelib"], paths["platlib"]})
    return [("stdlib", Path(paths["stdlib"]))] + [("site", Path(p)) for p in site]


def sources(roots: list[tuple[str, Path]] | None = None) -> list[Source]:
    """(document name, path) of every source file read: the standard library's, then
    site-packages'. Names are relative ("stdlib/json/decoder.py"), the same on every machine."""
    return [s for prefix, root in roots or _roots() for s in _walk(root, prefix)]


def documents(roots: list[tuple[str, Path]] | None = None) -> Iterator[tuple[str, list[str]]]:
    """(name, sentences) of every document: each pydoc topic, then each source file."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield f"pydoc/{key}", split_sentences(topics[key])
    for name, path in sources(roots):
        yield name, file_sentences(path)


def held_out_document(name: str) -> bool:
    return int(_digest(name)[:8], 16) % 100 < HELD_OUT_PER_100


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def build(roots: list[tuple[str, Path]] | None = None) -> dict[str, Any]:
    """The corpus as cached: train and held-out prose sentences, the training text, stats.
    Sentences on each side are unique and ordered by their hash (a stable, mixed order)."""
    prose: dict[bool, dict[str, None]] = {False: {}, True: {}}  # dicts: ordered sets
    text: dict[bool, dict[str, None]] = {False: {}, True: {}}
    docs = {False: 0, True: 0}
    kinds: dict[str, int] = {}
    for name, found in documents(roots):
        side = held_out_document(name)
        kind = name.split("/", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
        text[side].update(dict.fromkeys(found))
        kept = [s for s in found if _is_prose(s)]
        prose[side].update(dict.fromkeys(kept))
        docs[side] += bool(kept)
    held_out = sorted(prose[True], key=_digest)
    train = sorted((s for s in prose[False] if s not in text[True]), key=_digest)
    training = sorted((s for s in text[False] if s not in text[True]), key=_digest)
    stats = {
        "sentences": {"train": len(train), "held_out": len(held_out)},
        "training_text": len(training),
        "documents": {"train": docs[False], "held_out": docs[True]},
        "sources": kinds,
        "distributions": len(_distributions()),
        "python": sys.version.split()[0],
    }
    return {"train": train, "held_out": held_out, "training": training, "stats": stats}


def _distributions() -> list[str]:
    paths = sysconfig.get_paths()
    site = sorted({paths["purelib"], paths["platlib"]})
    found = {f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions(path=site)}
    return sorted(found)


def cache_key() -> str:
    """What the corpus depends on: this build, the Python version, the installed distributions."""
    inputs = [BUILD, sys.version, MIN_CHARS, MAX_CHARS, HELD_OUT_PER_100, _distributions()]
    return _digest(json.dumps(inputs))[:16]


@lru_cache(maxsize=1)
def _corpus() -> dict[str, Any]:
    path = cache_dir("corpus") / f"corpus-{cache_key()}.json.gz"
    if path.is_file():
        with gzip.open(path, "rt", encoding="utf-8") as f:
            loaded: dict[str, Any] = json.load(f)
        return loaded
    built = build()
    partial = path.with_suffix(f".{os.getpid()}.tmp")  # another process may build it too
    with gzip.open(partial, "wt", encoding="utf-8", compresslevel=6) as f:
        json.dump(built, f)
    os.replace(partial, path)
    return built


@lru_cache(maxsize=1)
def split() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(train, held_out) prose sentences: disjoint, deterministic, split by document."""
    corpus = _corpus()
    return tuple(corpus["train"]), tuple(corpus["held_out"])


def sentences() -> tuple[str, ...]:
    """Every prose sentence, training side first."""
    train, held_out = split()
    return train + held_out


@lru_cache(maxsize=1)
def training_text() -> tuple[str, ...]:
    """Everything to train on (distillation): every sentence of 10 to 400 characters of the
    training documents, code-like ones included, none of which occurs in a held-out document
    (so never an evaluation sentence)."""
    return tuple(_corpus()["training"])


def stats() -> dict[str, Any]:
    """Counts: sentences and documents per side, training text, documents per source kind
    (pydoc topics, stdlib files, site-packages files), distributions, Python version."""
    found: dict[str, Any] = _corpus()["stats"]
    return found
