"""The zoo's shape: each entry builds a trained PyTorch module with example inputs, and ships
its own data and metric, so every command works with no model or data given."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from inferopt.data import Dataset

Metric = Literal["top1", "retrieval", "embedding"]


@dataclass(frozen=True)
class TorchSource:
    """A trained module and what its exporter needs to know."""

    module: Any  # torch.nn.Module; typed loosely so the zoo imports without torch
    example_inputs: dict[str, Any]  # input name -> torch.Tensor, in forward() order
    output_names: tuple[str, ...]
    seq_axis: int | None = None  # axis of the inputs that varies with sequence length
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the tokenizer of a text model


@dataclass(frozen=True)
class ZooData:
    calibration: Dataset  # for calibration and fine-tuning
    evaluation: Dataset  # held out: never seen by training or calibration
    metric: Metric  # "top1": labels are class ids; "embedding": compare to the fp32 model


@dataclass(frozen=True)
class ZooEntry:
    name: str
    summary: str
    requires: tuple[str, ...]  # importable modules this entry needs (checked before building)
    build: Callable[[], TorchSource]
    data: Callable[[], ZooData]
    version: str = "1"  # bump when the build changes, so cached exports are redone
    # More examples for fine-tuning and distillation than calibration has (never any of the
    # evaluation set); None: train on the calibration split.
    training: Callable[[], Dataset] | None = None
