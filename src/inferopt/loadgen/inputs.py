"""What the generator sends: sets of input tensors, chosen in this order (see `choose`):

* an .npz file (`--data`);
* text from a tokenizer (`--tokenizer`, see loadgen.text): held-out corpus sentences, tokenized
  by the model's own tokenizer;
* the server's input spec (inferopt's own server publishes the model's IOSpec): ids within
  the table they index, valid masks, the sizes discovery found, text lengths like real
  sentences';
* random tensors from the model's metadata: integers 0..99 unless `--int-range` says
  otherwise (said above the table, since a model with a small vocabulary rejects them).

Another model's token ids are never sent unasked: ids that the model does not know make
every request fail, which measures nothing.

A pool of input sets is prepared before the run and sent round-robin, so building requests
costs the generator (which shares the cores with the server) nothing while it runs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from inferopt.errors import InferoptError
from inferopt.iospec import IOSpec
from inferopt.stated import state_shapes

Tensors = dict[str, np.ndarray]
POOL_SIZE = 16  # random input sets; enough to avoid sending one tensor over and over
SPEC_POOL_SIZE = 64  # from the server's spec: enough sentence lengths to vary like real text
DEFAULT_SEQ_LEN = 16
RANDOM_INTS = (0, 99)  # small non-negative integers: valid indices for most models
MAX_TOKENS = 128  # sentence lengths are capped like the zoo's tokenization
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


@dataclass(frozen=True)
class DataSource:
    npz: Path | None = None  # inputs from this file
    seq_len: int | None = None  # variable axes' length; None: like real sentences, else 16
    tokenizer: str | None = None  # text inputs by this tokenizer (see loadgen.text)
    int_range: tuple[int, int] | None = None  # random integer inputs within [low, high]
    # input -> its shape (--input-shape; without the batch dim too, as perf_analyzer writes it)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.seq_len is not None and self.seq_len < 1:
            raise ValueError(f"the sequence length must be >= 1, got {self.seq_len}")
        if self.int_range is not None and self.int_range[0] > self.int_range[1]:
            raise ValueError(f"the integer range {self.int_range} is empty")


@dataclass
class Inputs:
    pool: list[Tensors]
    origin: str  # where they came from, in words
    notes: list[str] = field(default_factory=list)  # what the user should know about them


def datatype_of(array: np.ndarray) -> str:
    try:
        return DATATYPES[array.dtype]
    except KeyError:
        raise BenchError(f"cannot send tensors of dtype {array.dtype}") from None


def choose(metas: Sequence[TensorMeta], spec: IOSpec | None, data: DataSource) -> Inputs:
    """The input pool for a model with these inputs (and this spec, if its server has one)."""
    if not metas:
        raise BenchError("the model's metadata lists no inputs")
    if data.npz is not None:
        return Inputs(npz_pool(data.npz, metas), f"file {data.npz}")
    if data.tokenizer is not None:
        from inferopt.loadgen import text

        return text.tokenized(data.tokenizer, metas)
    why = None if spec is None else _unusable(spec, metas)
    if spec is not None and why is None:
        return spec_inputs(spec, metas, data)
    random = random_inputs(metas, data)
    if why is not None:
        random.notes.insert(0, f"the server's input spec was not used: {why}")
    return random


def _unusable(spec: IOSpec, metas: Sequence[TensorMeta]) -> str | None:
    """Why the server's spec cannot make this model's inputs, or None when it can."""
    if sorted(spec.input_names) != sorted(m.name for m in metas):
        return f"it names inputs {spec.input_names}, the metadata {[m.name for m in metas]}"
    found = spec.extra.get("inputs_found")
    problem = found.get("problem") if isinstance(found, dict) else None
    # discovery found no inputs the model runs (see inferopt.discovery)
    return str(problem) if problem else None


def spec_inputs(spec: IOSpec, metas: Sequence[TensorMeta], data: DataSource) -> Inputs:
    """Inputs made as the model's spec says (ids within their table, valid masks, ...), one
    set per seed; a text model's sequences get lengths like real sentences'."""
    _check_datatypes(metas)
    if data.int_range is not None:  # the user's word over what discovery found
        low, high = data.int_range
        ints = [t.name for t in spec.inputs if t.role == "ids" or
                (t.role == "values" and _is_int(t.np_dtype))]  # fmt: skip
        spec = spec.with_value_ranges({name: (float(low), float(high)) for name in ints})
    if data.shapes:
        try:
            spec = state_shapes(spec, data.shapes)[0]
        except InferoptError as exc:
            raise BenchError(str(exc)) from exc
    texty = spec.seq_axis is not None and any(t.role == "ids" for t in spec.inputs)
    if data.seq_len is None and texty:
        lengths = sentence_lengths(SPEC_POOL_SIZE)
    else:
        lengths = [data.seq_len or DEFAULT_SEQ_LEN] * SPEC_POOL_SIZE
    try:
        pool = [spec.sample_inputs(batch=1, seq=n, seed=i) for i, n in enumerate(lengths)]
    except InferoptError as exc:
        raise BenchError(f"cannot make inputs from the server's spec: {exc}") from exc
    described = "; ".join(t.describe() for t in spec.inputs)
    origin = f"the server's input spec ({described})"
    if texty and data.seq_len is None:
        origin += f", lengths {min(lengths)}-{max(lengths)} like real sentences"
    elif spec.seq_axis is not None:
        origin += f", length {lengths[0]}"
    return Inputs(pool, origin)


def sentence_lengths(count: int) -> list[int]:
    """Token counts like a word-piece tokenizer's for held-out corpus sentences: their words
    and punctuation marks, plus the two marks around a sentence. No tokenizer is needed,
    and none is assumed to match the model."""
    from inferopt.zoo import corpus

    held_out = corpus.split()[1][:count]
    return [min(MAX_TOKENS, len(re.findall(r"\w+|[^\w\s]", s)) + 2) for s in held_out]


def random_inputs(metas: Sequence[TensorMeta], data: DataSource) -> Inputs:
    seq_len = data.seq_len or DEFAULT_SEQ_LEN
    metas = [_stated(m, data.shapes.get(m.name)) for m in metas]
    pool = random_pool(metas, seq_len, int_range=data.int_range)
    shapes = ", ".join(f"{m.name} {m.datatype}{list(m.shape)}" for m in metas)
    ints = [m.name for m in metas if _is_int(DTYPES[m.datatype]) and not _is_mask(m.name)]
    low, high = data.int_range or RANDOM_INTS
    origin = f"random from metadata ({shapes})" + (f", integers {low}..{high}" if ints else "")
    notes = []
    if ints and data.int_range is None:
        notes.append(
            f"integer inputs are random {low}..{high} ({', '.join(ints)}): give --data or "
            "--tokenizer for real ids, or --int-range for the model's own range"
        )
    return Inputs(pool, origin, notes)


def _stated(meta: TensorMeta, shape: tuple[int, ...] | None) -> TensorMeta:
    """`meta` with the user's shape: in full, or without the leading batch dim."""
    if shape is None:
        return meta
    if len(shape) == len(meta.shape) - 1:
        shape = (1, *shape)
    fits = len(shape) == len(meta.shape) and all(
        d < 0 or d == s for d, s in zip(meta.shape, shape, strict=True)
    )
    if not fits:
        raise BenchError(
            f"--input-shape {meta.name}: {list(shape)} does not fit the model's {list(meta.shape)}"
        )
    return replace(meta, shape=shape)


def random_pool(
    metas: Sequence[TensorMeta],
    seq_len: int,
    seed: int = 0,
    int_range: tuple[int, int] | None = None,
) -> list[Tensors]:
    """Random tensors shaped like the metadata: a leading -1 is batch 1, any other -1 is
    `seq_len` (the usual meaning of a second variable axis). Masks (by name) mark every
    position valid: a random mask is a meaningless input."""
    _check_datatypes(metas)
    rng = np.random.default_rng(seed)
    ints = int_range or RANDOM_INTS
    return [{m.name: _random(m, seq_len, rng, ints) for m in metas} for _ in range(POOL_SIZE)]


def _check_datatypes(metas: Sequence[TensorMeta]) -> None:
    for meta in metas:
        if meta.datatype not in DTYPES:
            raise BenchError(
                f"input {meta.name!r} has datatype {meta.datatype}; generated data supports "
                f"{', '.join(DTYPES)} (give --data)"
            )


def _random(
    meta: TensorMeta, seq_len: int, rng: np.random.Generator, ints: tuple[int, int]
) -> np.ndarray:
    shape = tuple(
        (1 if axis == 0 else seq_len) if size < 0 else size for axis, size in enumerate(meta.shape)
    )
    dtype = DTYPES[meta.datatype]
    if _is_mask(meta.name):
        # As inferopt.iospec guesses: a boolean mask named for padding marks padding with
        # True (PyTorch), any other marks real positions with 1 (Hugging Face).
        padding = dtype.kind == "b" and "pad" in meta.name.lower()
        return np.full(shape, not padding).astype(dtype)
    if dtype.kind == "f":
        return rng.random(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    return rng.integers(ints[0], ints[1] + 1, size=shape).astype(dtype)


def _is_mask(name: str) -> bool:
    return "mask" in name.lower()


def _is_int(dtype: np.dtype[Any]) -> bool:
    return dtype.kind in "iu"


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


def corpus_pool(metas: Sequence[TensorMeta]) -> list[Tensors]:
    """MiniLM's tokens for the held-out corpus sentences (what `--tokenizer minilm` sends),
    for callers that know their model is MiniLM (benchmarks/serving.py)."""
    from inferopt.loadgen import text

    return text.tokenized("minilm", metas).pool
