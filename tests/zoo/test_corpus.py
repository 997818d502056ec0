"""The corpus: Python's documentation and installed docstrings, split by document, cached."""

import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferopt.cache import cache_dir
from inferopt.zoo import corpus, minilm

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SMALL = [(f"stdlib/{name}", STDLIB / name) for name in ("email", "json", "logging")]


def test_full_corpus_is_large_split_by_document_and_disjoint() -> None:
    train, held_out = corpus.split()
    stats = corpus.stats()
    assert len(train) + len(held_out) >= 100_000
    assert 0.10 <= len(held_out) / (len(train) + len(held_out)) <= 0.20
    assert len(held_out) >= minilm.EVAL_SENTENCES
    assert len(train) >= minilm.CALIBRATION_SENTENCES
    assert stats["sentences"] == {"train": len(train), "held_out": len(held_out)}
    assert stats["documents"]["held_out"] > 500 and stats["sources"]["site"] > 1000
    assert not set(train) & set(held_out)
    assert len(set(train)) == len(train) and len(set(held_out)) == len(held_out)
    assert all(corpus.MIN_CHARS <= len(s) <= corpus.MAX_CHARS for s in train + held_out)
    assert not any(">>>" in s or "{" in s or "`" in s for s in train + held_out)


def test_training_text_adds_sentences_but_never_an_evaluation_one() -> None:
    train, held_out = corpus.split()
    text = corpus.training_text()
    assert set(train) <= set(text)
    assert len(text) > len(train) >= 100_000
    assert not set(text) & set(held_out)


def test_cache_is_reused_not_rebuilt(monkeypatch: pytest.MonkeyPatch) -> None:
    before = corpus.split()

    def no_build(*args: object) -> None:
        raise AssertionError("the corpus was built again")

    monkeypatch.setattr(corpus, "build", no_build)
    for cached in (corpus._corpus, corpus.split, corpus.training_text):
        cached.cache_clear()
    assert corpus.split() == before  # read back from the file in cache_dir("corpus")
    assert list(cache_dir("corpus").glob(f"corpus-{corpus.cache_key()}.json.gz"))


def test_cache_key_follows_the_installed_distributions(monkeypatch: pytest.MonkeyPatch) -> None:
    key = corpus.cache_key()
    assert key == corpus.cache_key()
    monkeypatch.setattr(corpus, "_distributions", lambda: ["somepackage==1.0"])
    assert corpus.cache_key() != key


def _reversed_walk(top: str | Path, **kwargs: object) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk listing every folder backwards, as another file system might."""
    for folder, dirs, files in real_walk(top):
        dirs.reverse()
        files.reverse()
        yield folder, dirs, files


real_walk = os.walk


def test_build_is_the_same_whatever_order_the_disk_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    first = corpus.build(SMALL)
    monkeypatch.setattr(os, "walk", _reversed_walk)
    assert corpus.build(SMALL) == first
    assert first["stats"]["sources"]["stdlib"] > 20


def test_no_document_straddles_the_split() -> None:
    documents = list(corpus.documents(SMALL))
    built = corpus.build(SMALL)
    held_out_text = {
        s for name, found in documents if corpus.held_out_document(name) for s in found
    }
    train_text = {
        s for name, found in documents if not corpus.held_out_document(name) for s in found
    }
    assert set(built["held_out"]) <= held_out_text
    assert set(built["train"]) <= train_text - held_out_text
    assert set(built["training"]) <= train_text - held_out_text
    sides = {corpus.held_out_document(name) for name, _ in documents}
    assert sides == {True, False}
    names = [name for name, _ in documents]
    assert "stdlib/json/decoder.py" in names and len(names) == len(set(names))


def test_sentences_are_split_and_unmarked() -> None:
    text = (
        "Returns: The :func:`open` call reads ``None`` here. The second sentence follows it!"
        "\n\nx : int"
    )
    found = corpus.split_sentences(text)
    assert found == ["The open call reads None here.", "The second sentence follows it!"]
    assert all(corpus._is_prose(s) for s in found)
    assert not corpus._is_prose("x : array_like of the values.")
