"""User data files: an .npz of arrays keyed by input name, or, for a model with a Hugging Face
tokenizer (a zoo text model such as `minilm`, a Hugging Face folder, or an artifact made from
either), a UTF-8 .txt file of texts, one per line, tokenized by the model's own tokenizer.

`inferopt optimize minilm --data sentences.txt` measures fidelity on the user's own sentences."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from inferopt.data import Dataset
from inferopt.errors import InputError, first_line
from inferopt.model import Model

TEXT_SUFFIX, ARRAYS_SUFFIX = ".txt", ".npz"
MAX_TOKENS = 512  # a tokenizer that states no limit of its own is truncated here
MIN_LINES = 10  # enough texts to hold a fifth out and still calibrate on the rest


def read(model: Model, path: str | Path) -> Dataset:
    """The data file as one sample per example: an .npz as it is, a .txt tokenized.

    Raises InputError naming the file when its suffix is neither, or (for text) when the
    model has no tokenizer, the file is not UTF-8, or it has fewer than MIN_LINES texts."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ARRAYS_SUFFIX:
        return Dataset.from_npz(path)
    if suffix != TEXT_SUFFIX:
        raise InputError(f"--data {path}: expected a .npz (arrays) or a .txt (one text a line)")
    lines = read_lines(path)
    return tokenize(lines, tokenizer_of(model, path), model, path)


def read_lines(path: Path) -> list[str]:
    """The file's non-blank lines, stripped. Raises InputError (missing, not UTF-8, too few)."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a byte order mark is not text
    except FileNotFoundError as exc:
        raise InputError(f"--data {path}: no such file") from exc
    except UnicodeDecodeError as exc:
        raise InputError(
            f"--data {path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc
    except OSError as exc:
        raise InputError(f"--data {path}: cannot read it: {first_line(exc)}") from exc
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) < MIN_LINES:
        raise InputError(
            f"--data {path}: {len(lines)} non-blank lines; at least {MIN_LINES} texts needed"
        )
    return lines


def tokenizer_folder(model: Model) -> Path | None:
    """Where the model's tokenizer is: the zoo text model's folder, or the Hugging Face
    folder it was loaded from; None for any other model."""
    source, kind = model.provenance.source, model.provenance.kind
    if kind == "zoo" and source == "minilm":
        from inferopt.zoo import minilm

        return minilm.model_folder()
    if kind == "huggingface" and Path(source).is_dir():
        return Path(source)
    return None


def tokenizer_of(model: Model, path: Path) -> Any:
    """The model's own Hugging Face tokenizer, loaded offline. Raises InputError naming the
    data file when the model has none."""
    no_tokenizer = f"--data {path} needs a model with a tokenizer; give an .npz"
    folder = tokenizer_folder(model)
    if folder is None:
        raise InputError(f"{no_tokenizer} ({model.provenance.source} has none)")
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises many kinds for a folder without one
        raise InputError(f"{no_tokenizer} ({folder}: {first_line(exc)})") from exc


def tokenize(lines: list[str], tokenizer: Any, model: Model, path: Path) -> Dataset:
    """One sample per line at its own length (batch 1, no padding), in the model's integer
    dtypes, truncated at the tokenizer's limit (at most MAX_TOKENS). Raises InputError when
    the model takes an input a tokenizer does not make."""
    limit = min(int(getattr(tokenizer, "model_max_length", MAX_TOKENS)), MAX_TOKENS)
    encoded = tokenizer(lines, truncation=True, max_length=limit)
    samples = []
    for row in range(len(lines)):
        ids = np.asarray([encoded["input_ids"][row]])
        sample = {}
        for spec in model.io.inputs:
            if spec.name in encoded:
                values = np.asarray([encoded[spec.name][row]])
            elif spec.name in ("attention_mask", "token_type_ids"):
                # one unpadded text: every token is real, and in the first segment
                values = np.full_like(ids, spec.name == "attention_mask")
            else:
                raise InputError(
                    f"--data {path}: the model's input {spec.name!r} is not made by a "
                    "tokenizer; give an .npz"
                )
            sample[spec.name] = values.astype(spec.np_dtype)
        samples.append(sample)
    return Dataset(tuple(samples), labels=None, seq_axis=1)
