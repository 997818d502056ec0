"""Shared test settings: a cache inside the repo's build folder, so that local re-runs reuse
trained and exported zoo models while CI (a fresh clone) builds them once per run."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort
import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("INFEROPT_CACHE", str(REPO / "build" / "test-cache"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU and onnxruntime-gpu")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
