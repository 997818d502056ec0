"""Whether a context fits in memory: a request for more context than memory allows is refused,
with the figures, before anything is exported or loaded.

The need counted is a floor: the weights, the KV cache of `batch` sequences at the full
context (keys and values of every layer), and HEADROOM for the runtime, one step's
activations and the tokenizer. A graph that concatenates its cache (the dynamo exporter's)
holds past and present at once during a step, and a long prefill has activations of its
own, so a context that passes can still run out; one that is refused cannot fit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferopt.errors import InputError
from inferopt.generative.kv import KvLayout

HEADROOM = 512 * 2**20  # bytes: ONNX Runtime, one step's activations, the tokenizer
CGROUP = Path("/sys/fs/cgroup")  # cgroup v2: a container's limit, below what the host has free
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclass(frozen=True)
class MemoryNeed:
    """The bytes a context needs (a floor) against the bytes available."""

    kv_bytes: int
    weight_bytes: int
    headroom: int
    available: int
    bytes_per_token: int  # of all `batch` sequences
    max_tokens: int  # the longest context that fits; 0 when none does

    @property
    def total(self) -> int:
        return self.kv_bytes + self.weight_bytes + self.headroom

    @property
    def fits(self) -> bool:
        return self.total <= self.available


def need(
    layout: KvLayout,
    weight_bytes: int,
    *,
    context: int | None = None,
    batch: int = 1,
    available: int | None = None,
) -> MemoryNeed:
    """The memory `context` tokens (default: `layout.max_context`) of `batch` sequences need.

    Raises:
        ValueError: context, batch below 1 or weight_bytes below 0.
    """
    context = layout.max_context if context is None else context
    if context < 1 or batch < 1 or weight_bytes < 0:
        raise ValueError(
            f"context and batch must be >= 1 and weight_bytes >= 0, got {context}, {batch}, "
            f"{weight_bytes}"
        )
    per_token = layout.bytes_per_token() * batch
    free = available_bytes() if available is None else available
    spare = free - weight_bytes - HEADROOM
    return MemoryNeed(
        kv_bytes=per_token * context,
        weight_bytes=weight_bytes,
        headroom=HEADROOM,
        available=free,
        bytes_per_token=per_token,
        max_tokens=max(spare // per_token, 0),
    )


def check_context(
    layout: KvLayout,
    weight_bytes: int,
    *,
    asked: int | None = None,
    batch: int = 1,
    available: int | None = None,
) -> MemoryNeed:
    """Refuse a context of `layout.max_context` tokens that memory cannot hold; `asked` is the
    --max-context the user gave, when the model's window capped it lower.

    Raises:
        InputError: weights + the KV cache at that context + HEADROOM exceed the memory
            available, with the figures and the longest context that fits.
    """
    figures = need(layout, weight_bytes, batch=batch, available=available)
    if figures.fits:
        return figures
    context = layout.max_context
    label = f"--max-context {context}"
    if asked is not None and asked != context:
        label = f"--max-context {asked} (capped at the model's context, {context} tokens)"
    per_token = f"{size(layout.bytes_per_token())} per token x {context} tokens"
    if batch > 1:
        per_token += f" x batch {batch}"
    if figures.max_tokens >= 1:
        advice = f"at most {round_down(figures.max_tokens)} tokens fit"
    else:
        advice = "the weights and headroom alone do not fit"
    raise InputError(
        f"{label} needs {size(figures.kv_bytes)} of KV cache ({per_token}) + "
        f"{size(figures.weight_bytes)} of weights + {size(figures.headroom)} of headroom, "
        f"but {size(figures.available)} is available; {advice}"
    )


def available_bytes(cgroup: Path = CGROUP) -> int:
    """Memory available to this process: what the system has available (psutil), or less
    when a cgroup v2 limit (a container's) leaves less room."""
    import psutil

    free = int(psutil.virtual_memory().available)
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        used = int((cgroup / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return free
    if limit == "max" or not limit.isdigit():
        return free
    return max(min(free, int(limit) - used), 0)


def onnx_weight_bytes(model_path: Path) -> int:
    """Bytes of an ONNX model and its external data files next to it (`model.onnx.data`, or
    any file named after the model)."""
    folder = model_path.parent
    return sum(
        p.stat().st_size
        for p in folder.iterdir()
        if p.is_file() and (p == model_path or p.name.startswith(model_path.name + "."))
    )


def hf_weight_bytes(folder: Path, config: dict[str, Any] | None = None) -> int:
    """Bytes the weights of a Hugging Face folder take once exported in float32: the weight
    files' size (safetensors when there are both), doubled when config.json says they are
    stored in 16 bits."""
    if config is None:
        config = json.loads((folder / "config.json").read_text())
    files = [p for p in folder.iterdir() if p.is_file()]
    stored = 0
    for suffix in _WEIGHT_SUFFIXES:  # the first format the folder has: repos may ship two
        stored = sum(p.stat().st_size for p in files if p.suffix == suffix)
        if stored:
            break
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    return stored * 4 // _ITEMSIZE.get(dtype, 4)


def size(n: float) -> str:
    """Bytes in binary units, at most one decimal: '20.3 GiB', '512 MiB', '64 KiB'."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{int(n)} B"


def round_down(n: int) -> int:
    """`n` rounded down to two significant digits (310000 for 312345): a figure to quote that
    still fits."""
    if n < 100:
        return n
    step = int(10 ** (len(str(n)) - 2))
    return n // step * step
