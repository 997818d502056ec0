"""GGUF files (llama.cpp's format) as a source: a cached Hugging Face folder made from one.

transformers reads the GGUF, unpacks the weights to dense float32 and rebuilds the tokenizer
(and its chat template, when the file has one); we save that as a plain Hugging Face folder
(config.json, model.safetensors, tokenizer files) in the cache, keyed by the file's content
and the transformers and gguf versions, so every later use is an ordinary
`from_pretrained(folder)` and `inferopt export model.gguf` converts a file only once.

Before transformers sees the file, its header is read with the `gguf` package and the file is
refused, one line each, when it is not GGUF, lacks the model's size or a tokenizer, is of an
architecture transformers cannot load from GGUF, stores tensors in types transformers cannot
unpack, or would not fit in memory once unpacked to float32.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from inferopt.cache import cache_dir
from inferopt.errors import InputError, ModelLoadError, first_line

MAGIC = b"GGUF"
# What converting a GGUF needs: transformers reads it with gguf, loads it with accelerate.
REQUIRED = ("torch", "transformers", "gguf", "accelerate")
# Bump when what is saved changes (the config fix-ups, the files written), to redo the cache.
BUILD = "1"
# llama.cpp's names that load_gguf_checkpoint renames before it checks its supported list.
_RENAMED = {
    "qwen2moe": "qwen2_moe",
    "qwen3moe": "qwen3_moe",
    "gpt-oss": "gpt_oss",
    "minimax-m2": "minimax_m2",
    "t5encoder": "t5",
}
_NOT_ARCHITECTURES = frozenset({"general", "tokenizer"})  # sections of the same mapping
_FLOAT_TYPES = frozenset({"F32", "F16", "BF16"})
# Keys every llama.cpp architecture writes (prefixed by its name). Without them transformers
# builds its config class's default size (a 7B Llama) and fills it: refused, not attempted.
REQUIRED_KEYS = ("block_count", "embedding_length")


@dataclass(frozen=True)
class GgufHeader:
    """What the file's header says: `general.architecture`, the tensor count of each tensor
    type (GGML type names such as "Q4_1"), whether it carries a tokenizer, the model-size keys
    it lacks of REQUIRED_KEYS, and the bytes its tensors take unpacked to float32."""

    architecture: str
    types: dict[str, int]
    has_tokenizer: bool
    missing_keys: tuple[str, ...] = ()
    dense_bytes: int = 0


def gguf_folder(path: str | Path) -> Path:
    """The Hugging Face folder converted from the GGUF file `path` (dense float32: about four
    times the file for a 4-bit one), made on first use (seconds to minutes) and reused while
    the file's content and the transformers and gguf versions stay the same.

    Raises:
        InputError: no such file, not a GGUF file, no model size or tokenizer in its header,
            an architecture or a tensor type transformers cannot load from GGUF, or weights
            that would not fit in memory as float32.
        ModelLoadError: transformers, gguf, accelerate or torch is missing, or transformers
            fails on the file anyway.
    """
    source = Path(path)
    if not source.is_file():
        raise InputError(f"{source}: no such GGUF file")
    missing = missing_packages()
    if missing:  # before the content hash, which imports nothing but reads the whole file
        raise ModelLoadError(
            f"{source.name}: reading a GGUF file needs {', '.join(missing)}: "
            f"pip install {' '.join(missing)}"
        )
    folder = cache_path(source)
    if not (folder / "config.json").is_file():
        build_folder(source, folder)
    return folder


def cache_path(source: Path) -> Path:
    """Where the folder of `source` lives: its name, a hash of its content (0.2 s for 100 MB;
    two copies of one file share a folder, an edited file gets a new one) and the versions
    of what converts it."""
    versions = "-".join(f"{m}{importlib.metadata.version(m)}" for m in ("transformers", "gguf"))
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", source.stem)[:60]
    return cache_dir("gguf") / f"{stem}-{content_hash(source)[:16]}-v{BUILD}-{versions}"


def content_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def missing_packages() -> list[str]:
    return [m for m in REQUIRED if importlib.util.find_spec(m) is None]


def build_folder(source: Path, folder: Path) -> Path:
    """Check `source`'s header, convert it with transformers into a staging folder next to
    `folder` and rename that into place (atomic: a reader sees no folder or a whole one).
    Raises as `gguf_folder`; the caller has checked that the packages are installed."""
    check_header(source, read_header(source))
    print(f"converting {source.name} to a Hugging Face folder (once) ...", file=sys.stderr)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".", suffix=".tmp"))
    try:
        _convert(source, staging)
        _publish(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


# -- the header ----------------------------------------------------------------------------


def read_header(path: Path) -> GgufHeader:
    """The header of `path`, read with gguf's GGUFReader (memory-mapped: the tensors are not
    read, though a large vocabulary takes a second or two to parse).

    Raises:
        InputError: the file does not start with the GGUF magic, or gguf cannot parse it.
    """
    from gguf import GGUFReader

    with path.open("rb") as file:
        magic = file.read(4)
    if magic != MAGIC:
        raise InputError(
            f"{path.name}: not a GGUF file (starts with {magic!r}, expected {MAGIC!r})"
        )
    try:
        reader = GGUFReader(path)
        field = reader.fields.get("general.architecture")
        architecture = str(field.contents()) if field is not None else ""
        types = Counter(tensor.tensor_type.name for tensor in reader.tensors)
        has_tokenizer = "tokenizer.ggml.tokens" in reader.fields
        missing = tuple(
            f"{architecture}.{key}"
            for key in REQUIRED_KEYS
            if f"{architecture}.{key}" not in reader.fields
        )
        dense = 4 * sum(int(tensor.n_elements) for tensor in reader.tensors)
    except Exception as exc:  # gguf raises ValueError, KeyError, struct and numpy errors
        raise InputError(
            f"{path.name}: not a readable GGUF file: {first_line(exc, named=True)}"
        ) from exc
    return GgufHeader(architecture, dict(types), has_tokenizer, missing, dense)


def check_header(path: Path, header: GgufHeader, *, available: int | None = None) -> None:
    """Refuse what transformers would fail on, naming the problem in one line.

    Raises:
        InputError: no architecture, size keys or tokenizer in the header, an architecture
            transformers does not load from GGUF, tensor types it cannot dequantize, or
            dense float32 weights larger than the memory `available` (default: what the
            system has) less memory.HEADROOM.
    """
    from inferopt.generative import memory

    transformers_version = importlib.metadata.version("transformers")
    if not header.architecture:
        raise InputError(f"{path.name}: the GGUF header has no general.architecture")
    supported = supported_architectures()
    if _RENAMED.get(header.architecture, header.architecture) not in supported:
        raise InputError(
            f"{path.name}: transformers {transformers_version} cannot load GGUF architecture "
            f"{header.architecture!r} (it loads {', '.join(sorted(supported))})"
        )
    if header.missing_keys:
        raise InputError(
            f"{path.name}: the GGUF header lacks {', '.join(header.missing_keys)} (the model's "
            "size); transformers would build a default-sized model instead"
        )
    if not header.has_tokenizer:
        raise InputError(f"{path.name}: the GGUF file has no tokenizer (tokenizer.ggml.tokens)")
    unreadable = {
        name: count
        for name, count in sorted(header.types.items())
        if not dequantizable(header.architecture, name)
    }
    if unreadable:
        listed = ", ".join(f"{name} ({count} tensor{'s' * (count > 1)})"
                           for name, count in unreadable.items())  # fmt: skip
        raise InputError(
            f"{path.name}: transformers {transformers_version} cannot dequantize GGUF tensor "
            f"type {listed}; re-quantize the model to a type it reads, such as Q8_0 or F16"
        )
    free = memory.available_bytes() if available is None else available
    if header.dense_bytes + memory.HEADROOM > free:
        raise InputError(
            f"{path.name}: converting it needs {memory.size(header.dense_bytes)} for its "
            f"weights as float32 + {memory.size(memory.HEADROOM)} of headroom, but "
            f"{memory.size(free)} is available"
        )


@cache
def supported_architectures() -> frozenset[str]:
    """The GGUF architectures (llama.cpp's `general.architecture` names, after transformers'
    renames) that this transformers loads: its legacy loader's list and, in transformers 5,
    the architectures of its newer GGUF path."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    names = set(GGUF_SUPPORTED_ARCHITECTURES) - _NOT_ARCHITECTURES
    return frozenset(names | set(_newer_path_architectures()))


def _newer_path_architectures() -> list[str]:
    try:
        from transformers.integrations.gguf.gguf_conversion_mapping import GGUF_ARCHS
    except ImportError:  # transformers 4: the legacy loader only
        return []
    return list(GGUF_ARCHS)


@cache
def dequantizable(architecture: str, type_name: str) -> bool:
    """Whether transformers can unpack tensors of GGML type `type_name` for `architecture`.

    The legacy loader (most architectures) unpacks with gguf's `dequantize`; it is asked to
    unpack one block of zeros, which raises NotImplementedError for a type it lacks. The
    newer path of transformers 5 unpacks float types and the block types of its own table.
    """
    if architecture in _newer_path_architectures():
        from transformers.integrations.gguf.dequant import GGML_NAME

        return type_name in _FLOAT_TYPES or type_name in GGML_NAME.values()
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, dequantize

    try:
        qtype = GGMLQuantizationType[type_name]
        _, block_bytes = GGML_QUANT_SIZES[qtype]
        dequantize(np.zeros(block_bytes, dtype=np.uint8), qtype)
    except (KeyError, NotImplementedError):
        return False
    return True


# -- the conversion ------------------------------------------------------------------------


def _convert(source: Path, out: Path) -> None:
    """Load the GGUF with transformers, dense float32, and save model and tokenizer to `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        # dequantize=True: without it transformers keeps Q4 blocks (when the `kernels` package
        # is installed) in modules that cannot be saved as safetensors nor exported to ONNX.
        model = AutoModelForCausalLM.from_pretrained(
            source.parent,
            gguf_file=source.name,
            quantization_config=GgufConfig(gguf_file=source.name, dequantize=True),
        )
    except Exception as exc:  # transformers raises many types for a file it cannot read
        raise ModelLoadError(
            f"transformers cannot read {source.name} (GGUF tensor types "
            f"{', '.join(_types_of(source))}): {first_line(exc, named=True)}"
        ) from exc
    _drop_quantizer(model, source)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _drop_quantizer(model: Any, source: Path) -> None:
    """Make the dequantized model an ordinary one, which save_pretrained accepts."""
    packed = sorted({type(m).__name__ for m in model.modules() if "Gguf" in type(m).__name__})
    if packed:  # the weights would not be plain tensors: refuse rather than save garbage
        raise ModelLoadError(
            f"transformers kept GGUF-packed modules ({', '.join(packed)}) in {source.name}"
        )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)


def _types_of(path: Path) -> list[str]:
    try:
        return sorted(read_header(path).types)
    except InputError:
        return ["unreadable"]


def _publish(staging: Path, folder: Path) -> None:
    # A rename is atomic: a reader sees no folder or a whole one, even with two converters.
    try:
        os.replace(staging, folder)
    except OSError:
        if not (folder / "config.json").is_file():
            raise  # not lost to a concurrent converter: a real failure
