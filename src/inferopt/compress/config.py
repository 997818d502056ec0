"""The options of every train-time compression, as frozen dataclasses validated on creation.

Torch-free on purpose: recipes (which may run where torch is not installed) import these to
parse and check `prune:0.5` before anything is trained."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Criterion = Literal["l1", "l2", "taylor", "activation"]
Scope = Literal["layer", "global"]
Schedule = Literal["cosine", "linear"]
CRITERIA = ("l1", "l2", "taylor", "activation")
_NM = re.compile(r"^(\d+)(?:of|:)(\d+)$")  # "2of4" on the command line, "2:4" from Python


def _check_ratio(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


@dataclass(frozen=True)
class PruneConfig:
    """Structured pruning: whole channels, filters, attention heads and FFN neurons go, so
    the exported model is really smaller.

    `ratio` is the fraction of each prunable group's channels removed (`scope="layer"`), or of
    all channels ranked together (`scope="global"`, never more than `max_layer_ratio` of one
    layer). Widths are rounded to multiples of `round_to` (SIMD-friendly). `ignore` names
    modules whose output width must stay; `layer_ratios` overrides the ratio per module."""

    ratio: float = 0.5
    criterion: Criterion = "l2"
    scope: Scope = "layer"
    round_to: int | None = 8
    ignore: tuple[str, ...] = ()
    layer_ratios: tuple[tuple[str, float], ...] = ()
    heads: bool = True  # transformers: remove whole attention heads (at the same ratio)
    max_layer_ratio: float = 0.9
    importance_samples: int = 256  # examples fed to data-driven criteria (taylor, activation)

    def __post_init__(self) -> None:
        _check_ratio("ratio", self.ratio)
        if self.criterion not in CRITERIA:
            raise ValueError(
                f"criterion must be one of {', '.join(CRITERIA)}, not {self.criterion!r}"
            )
        if self.scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', not {self.scope!r}")
        if self.round_to is not None and self.round_to < 1:
            raise ValueError(f"round_to must be at least 1, got {self.round_to}")
        for name, ratio in self.layer_ratios:
            _check_ratio(f"ratio of layer {name!r}", ratio)
        if not 0.0 < self.max_layer_ratio < 1.0:
            raise ValueError(f"max_layer_ratio must be in (0, 1), got {self.max_layer_ratio}")
        if self.importance_samples < 1:
            raise ValueError(
                f"importance_samples must be at least 1, got {self.importance_samples}"
            )

    @property
    def data_driven(self) -> bool:
        return self.criterion in ("taylor", "activation")


@dataclass(frozen=True)
class SparsityConfig:
    """Magnitude sparsity of Linear and Conv weights: `pattern="unstructured"` zeroes the
    `ratio` smallest weights of each layer; `pattern="2:4"` (N:M) keeps the N largest of every
    M consecutive weights along the input dimension (the ratio is then 1 - N/M)."""

    ratio: float = 0.5
    pattern: str = "unstructured"
    ignore: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_ratio("ratio", self.ratio)
        if self.pattern != "unstructured" and self.nm is None:
            raise ValueError(
                f"pattern must be 'unstructured' or N:M like '2:4', not {self.pattern!r}"
            )

    @property
    def nm(self) -> tuple[int, int] | None:
        match = _NM.match(self.pattern)
        if match is None:
            return None
        n, m = int(match.group(1)), int(match.group(2))
        if not 0 < n < m:
            raise ValueError(f"N:M sparsity needs 0 < N < M, got {n}:{m}")
        return n, m

    @property
    def effective_ratio(self) -> float:
        nm = self.nm
        return 1.0 - nm[0] / nm[1] if nm else self.ratio


@dataclass(frozen=True)
class FinetuneConfig:
    """The training loop that recovers accuracy: AdamW, linear warm-up then cosine (or
    linear) decay to zero, early stopping on the validation metric (the best weights seen
    are kept).

    Validation runs after every epoch, and also every `validation_steps` optimizer steps
    when that is positive (large corpora: an epoch is too coarse); `patience` counts
    validations without a better score. `max_seconds` caps the wall-clock time of training
    (validation included): the decay then follows whichever of steps or time runs out
    first, so a capped run still ends at a small learning rate. `log_seconds` spaces the
    plain-text progress lines."""

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 0.0
    warmup_fraction: float = 0.05
    patience: int = 3  # validations without a better score before stopping
    validation_every: int = 10  # every 10th training example validates, never trains
    seed: int = 0
    threads: int = 1  # 1: bit-reproducible on this machine whatever its core count
    schedule: Schedule = "cosine"
    validation_steps: int = 0  # 0: validate once per epoch only
    validation_limit: int = 0  # at most this many validation examples (0: all of them)
    max_seconds: float | None = None  # None: no wall-clock cap
    log_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"epochs must not be negative, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must not be negative, got {self.weight_decay}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.patience < 1:
            raise ValueError(f"patience must be at least 1, got {self.patience}")
        if self.validation_every < 2:
            raise ValueError(f"validation_every must be at least 2, got {self.validation_every}")
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        if self.schedule not in ("cosine", "linear"):
            raise ValueError(f"schedule must be 'cosine' or 'linear', not {self.schedule!r}")
        if self.validation_steps < 0 or self.validation_limit < 0:
            raise ValueError("validation_steps and validation_limit must not be negative")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be positive, got {self.max_seconds}")
        if not self.log_seconds > 0:
            raise ValueError(f"log_seconds must be positive, got {self.log_seconds}")


@dataclass(frozen=True)
class DistillConfig:
    """What the student learns from the teacher. The loss is the weighted sum of
    - `hard_weight` x cross-entropy to the labels (when there are labels),
    - `soft_weight` x KL divergence of the softened logits (temperature T, scaled by T^2),
    - `embedding_weight` x (1 - cosine) of outputs (for embedding models, or no labels;
      a [batch, seq, width] output is mean-pooled over real tokens first),
    - `embedding_mse_weight` x mean squared error of those same outputs,
    - `hidden_weight` x mean squared error of matched hidden states (layer-dropped
      transformers: student layer i to the teacher layer it was copied from, the last one
      to the teacher's last layer),
    - `relation_weight` x KL divergence of the query-query, key-key and value-value
      self-attention relations of the last student layer to the teacher's last layer
      (MiniLMv2), over `relation_heads` heads (None: the teacher's attention heads).

    The hidden-state and relation terms need a layer-dropped student (they are skipped for
    students without matched layers). Defaults are those measured best on all-MiniLM-L6-v2
    (docs/compress.md)."""

    temperature: float = 4.0
    hard_weight: float = 0.5
    soft_weight: float = 0.5
    embedding_weight: float = 1.0
    embedding_mse_weight: float = 0.0
    hidden_weight: float = 0.0
    relation_weight: float = 0.0
    relation_heads: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        weights = (
            self.hard_weight,
            self.soft_weight,
            self.embedding_weight,
            self.embedding_mse_weight,
            self.hidden_weight,
            self.relation_weight,
        )
        if min(weights) < 0:
            raise ValueError("loss weights must not be negative")
        if not any(weights):
            raise ValueError("at least one loss weight must be positive")
        if self.relation_heads is not None and self.relation_heads < 1:
            raise ValueError(f"relation_heads must be at least 1, got {self.relation_heads}")
