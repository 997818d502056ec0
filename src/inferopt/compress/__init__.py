"""Train-time compression: structured pruning, N:M and unstructured sparsity, knowledge
distillation, and the fine-tuning that recovers accuracy after them.

    from inferopt.compress import PruneConfig, prune_
    report = prune_(module, PruneConfig(ratio=0.5), {"image": example})

The configs and recipe steps import without torch; the functions load torch on first use."""

from __future__ import annotations

import importlib
from typing import Any

from inferopt.compress.config import DistillConfig, FinetuneConfig, PruneConfig, SparsityConfig
from inferopt.compress.steps import DistillStep, PruneStep, SparsifyStep, TorchStep

_LAZY = {
    "prune_": "inferopt.compress.prune",
    "PruneReport": "inferopt.compress.prune",
    "PruneError": "inferopt.compress.prune",
    "sparsify_": "inferopt.compress.sparsity",
    "sparse_size": "inferopt.compress.sparsity",
    "distill": "inferopt.compress.distillation",
    "layer_dropped": "inferopt.compress.distillation",
    "narrower": "inferopt.compress.distillation",
    "finetune": "inferopt.compress.train",
    "compress": "inferopt.compress.pipeline",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'inferopt.compress' has no attribute {name!r}")


__all__ = [
    "DistillConfig",
    "DistillStep",
    "FinetuneConfig",
    "PruneConfig",
    "PruneStep",
    "SparsifyStep",
    "SparsityConfig",
    "TorchStep",
    *_LAZY,
]
