"""What the generator sends: sets of input tensors, from the model's metadata (random), from
an .npz file, or, for text models, real sentences of varied length from the zoo corpus.

A small pool of input sets is prepared before the run and sent round-robin, so building
requests costs the generator (which shares the cores with the server) nothing while it runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inferopt.errors import InferoptError

Tensors = dict[str, np.ndarray]
POOL_SIZE = 16  # random input sets; enough to avoid sending one tensor over and over
TEXT_INPUTS = frozenset({"input_ids", "attention_mask", "token_type_ids"})

DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
DATATYPES = {dtype: name for name, dtype in DTYPES.items()}


class BenchError(InferoptError):
    """The benchmark cannot run: unreachable server, unknown model, bad settings or data."""


@dataclass(frozen=True)
class TensorMeta:
    name: str
    datatype: str  # Open Inference Protocol name, e.g. "FP32"
    shape: tuple[int, ...]  # -1 for a variable dimension


def datatype_of(array: np.ndarray) -> str:
    try:
        return DATATYPES[array.dtype]
    except KeyError:
        raise BenchError(f"cannot send tensors of dtype {array.dtype}") from None


def random_pool(metas: Sequence[TensorMeta], seq_len: int, seed: int = 0) -> list[Tensors]:
    """Random tensors shaped like the metadata: a leading -1 is batch 1, any other -1 is
    `seq_len` (the usual meaning of a second variable axis)."""
    for meta in metas:
        if meta.datatype not in DTYPES:
            raise BenchError(
                f"input {meta.name!r} has datatype {meta.datatype}; random data supports "
                f"{', '.join(DTYPES)} (give --data)"
            )
    rng = np.random.default_rng(seed)
    return [{m.name: _random(m, seq_len, rng) for m in metas} for _ in range(POOL_SIZE)]


def _random(meta: TensorMeta, seq_len: int, rng: np.random.Generator) -> np.ndarray:
    shape = tuple(
        (1 if axis == 0 else seq_len) if size < 0 else size for axis, size in enumerate(meta.shape)
    )
    dtype = DTYPES[meta.datatype]
    if dtype.kind == "f":
        return rng.random(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    # Small non-negative integers: valid token ids and indices for nearly any model.
    return rng.integers(0, 100, size=shape).astype(dtype)


def npz_pool(path: str | Path, metas: Sequence[TensorMeta]) -> list[Tensors]:
    """Input sets from an .npz keyed by input name; each array's first axis indexes samples."""
    path = Path(path)
    try:
        with np.load(path) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as exc:
        raise BenchError(f"{path}: cannot read the data file: {exc}") from exc
    missing = [m.name for m in metas if m.name not in arrays]
    if missing:
        raise BenchError(f"{path}: has no array for input(s) {', '.join(missing)}")
    count = min(len(arrays[m.name]) for m in metas)
    if count == 0:
        raise BenchError(f"{path}: holds no samples")
    return [{m.name: arrays[m.name][i : i + 1] for m in metas} for i in range(count)]


def is_text_model(metas: Sequence[TensorMeta]) -> bool:
    names = {m.name for m in metas}
    return (
        "input_ids" in names and names <= TEXT_INPUTS and all(m.datatype == "INT64" for m in metas)
    )


def corpus_pool(metas: Sequence[TensorMeta]) -> list[Tensors]:
    """Held-out sentences of the zoo corpus, tokenized at their own lengths (one each)."""
    from inferopt.zoo import corpus, minilm

    try:
        dataset = minilm.tokenize(corpus.split()[1])
    except Exception as exc:  # a missing tokenizer can fail in many ways
        raise BenchError(f"cannot tokenize the zoo corpus ({exc!r}); give --data") from exc
    wanted = {m.name for m in metas}
    return [{k: v for k, v in s.items() if k in wanted} for s in dataset.samples]
