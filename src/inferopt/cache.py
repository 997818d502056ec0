"""Where inferopt keeps what is slow to make again: trained zoo weights, exported zoo models,
the machine's measured GEMM peak. One folder, overridable with INFEROPT_CACHE."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """The cache folder (or a subfolder of it), created on first use."""
    root = Path(os.environ.get("INFEROPT_CACHE") or Path.home() / ".cache" / "inferopt")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
