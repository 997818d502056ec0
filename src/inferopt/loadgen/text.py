"""Text inputs made by the model's own tokenizer (`inferopt bench --tokenizer`): the held-out
sentences of the zoo corpus (inferopt.zoo.corpus), one per request at its own length.

The tokenizer is named as a Hugging Face tokenizer folder, a zoo model that has one
(`minilm`), or an artifact folder of `inferopt optimize`, whose manifest's "source" names
either. Tokens are only ever made this way when asked: another model's ids are not a valid
input (see loadgen.inputs).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inferopt.errors import first_line
from inferopt.loadgen.inputs import (
    DTYPES,
    MAX_TOKENS,
    TEXT_INPUTS,
    BenchError,
    Inputs,
    TensorMeta,
    Tensors,
)

ZOO_TOKENIZERS = ("minilm",)  # zoo models that take text
MAX_HOPS = 3  # an artifact made from an artifact ...: follow "source" this many times


def tokenized(name: str, metas: Sequence[TensorMeta]) -> Inputs:
    """One input set per held-out corpus sentence, tokenized by `name`'s tokenizer."""
    from inferopt.zoo import corpus

    _check_text_model(metas)
    tokenizer, where = load(name)
    sentences = list(corpus.split()[1])
    try:
        encoded = tokenizer(sentences, truncation=True, max_length=MAX_TOKENS)
        ids = encoded["input_ids"]
    except Exception as exc:  # a tokenizer can fail in many ways; say which, in one line
        raise BenchError(f"--tokenizer {name}: tokenizing failed: {first_line(exc)}") from exc
    pool = [_sample(encoded, i, metas) for i in range(len(ids))]
    lengths = [len(row) for row in ids]
    origin = (
        f"tokenizer {where}: {len(pool)} held-out corpus sentences, "
        f"{min(lengths)}-{max(lengths)} tokens"
    )
    return Inputs(pool, origin)


def _check_text_model(metas: Sequence[TensorMeta]) -> None:
    names = [m.name for m in metas]
    if "input_ids" not in names:
        raise BenchError(f"--tokenizer makes input_ids, but the model's inputs are {names}")
    others = [n for n in names if n not in TEXT_INPUTS]
    if others:
        raise BenchError(
            f"--tokenizer makes {', '.join(sorted(TEXT_INPUTS))}; the model also takes "
            f"{', '.join(others)}: give --data"
        )
    for meta in metas:
        if meta.datatype not in DTYPES or DTYPES[meta.datatype].kind not in "iub":
            raise BenchError(f"input {meta.name!r} is {meta.datatype}, not token ids or a mask")


def _sample(encoded: Any, row: int, metas: Sequence[TensorMeta]) -> Tensors:
    ids = np.asarray([encoded["input_ids"][row]])
    sample = {}
    for meta in metas:
        if meta.name in encoded:
            values = np.asarray([encoded[meta.name][row]])
        elif meta.name == "attention_mask":  # one unpadded sentence: every token is real
            values = np.ones_like(ids)
        else:  # token_type_ids, from a tokenizer without them: one segment
            values = np.zeros_like(ids)
        sample[meta.name] = values.astype(DTYPES[meta.datatype])
    return sample


def load(name: str, hops: int = 0) -> tuple[Any, str]:
    """The tokenizer `name` stands for, and where it was found, in words."""
    from inferopt import zoo
    from inferopt.artifact import MANIFEST

    path = Path(name)
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return _from_artifact(path, hops)
        return _from_folder(path), str(path)
    if zoo.is_zoo_name(name):
        if name not in ZOO_TOKENIZERS:
            raise BenchError(
                f"--tokenizer {name}: that zoo model takes no text (zoo tokenizers: "
                f"{', '.join(ZOO_TOKENIZERS)})"
            )
        from inferopt.zoo import minilm

        return _from_folder(minilm.model_folder()), name
    raise BenchError(
        f"--tokenizer {name}: no such folder, and not a zoo model with a tokenizer "
        f"({', '.join(ZOO_TOKENIZERS)})"
    )


def _from_artifact(folder: Path, hops: int) -> tuple[Any, str]:
    from inferopt.artifact import read_manifest

    source = read_manifest(folder).get("source")
    if not isinstance(source, str) or hops >= MAX_HOPS:
        raise BenchError(f"--tokenizer {folder}: the artifact does not say what it was made from")
    try:
        tokenizer, where = load(source, hops + 1)
    except BenchError as exc:
        raise BenchError(
            f"--tokenizer {folder}: the artifact was made from {source!r}, which gives no "
            f"tokenizer ({exc}); give the tokenizer's folder"
        ) from exc
    return tokenizer, f"{where} (the source of {folder})"


def _from_folder(folder: Path) -> Any:
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise BenchError("--tokenizer needs transformers: pip install 'inferopt[torch]'") from exc
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises many kinds for a folder without one
        raise BenchError(f"--tokenizer {folder}: no tokenizer there: {first_line(exc)}") from exc
