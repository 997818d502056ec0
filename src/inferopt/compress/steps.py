"""The PyTorch-side recipe steps (`prune`, `sparsify`, `distill`): their options, as parsed
from `--recipe prune:0.5,int8-static`, and the configs they stand for.

Torch-free, like `config.py`: a recipe is parsed and checked before anything is imported
or trained. `inferopt.compress.pipeline` runs them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from inferopt.compress.config import DistillConfig, PruneConfig, SparsityConfig


@dataclass(frozen=True)
class TorchStep:
    """A step that changes the PyTorch model and trains it; it runs before any ONNX pass.
    `epochs`, `lr` and `max_seconds` (the wall-clock cap on training, in seconds) left at
    None take the defaults for the model's family (transformers: 15 minutes).

    Raises:
        ValueError: negative epochs, or a learning rate or cap that is not positive.
    """

    name: ClassVar[str]
    epochs: int | None = None
    lr: float | None = None
    seed: int = 0
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.epochs is not None and self.epochs < 0:
            raise ValueError(f"epochs must not be negative, got {self.epochs}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be positive, got {self.max_seconds}")

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PruneStep(TorchStep):
    """`prune:0.5`, `prune:ratio=0.5:criterion=taylor:scope=global:ignore=head+fc`: structured
    pruning, then fine-tuning with the unpruned model as teacher."""

    name: ClassVar[str] = "prune"
    ratio: float = 0.5
    criterion: str = "l2"
    scope: str = "layer"
    round_to: int = 8
    ignore: tuple[str, ...] = ()
    heads: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.config()

    def config(self) -> PruneConfig:
        return PruneConfig(
            ratio=self.ratio,
            criterion=self.criterion,  # type: ignore[arg-type]  # validated by PruneConfig
            scope=self.scope,  # type: ignore[arg-type]
            round_to=self.round_to,
            ignore=self.ignore,
            heads=self.heads,
        )


@dataclass(frozen=True)
class SparsifyStep(TorchStep):
    """`sparsify:0.5` (unstructured, 50% zeros per layer) or `sparsify:pattern=2of4` (N:M):
    magnitude masks, then fine-tuning with the masks held and the dense model as teacher."""

    name: ClassVar[str] = "sparsify"
    ratio: float = 0.5
    pattern: str = "unstructured"
    ignore: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        self.config()

    def config(self) -> SparsityConfig:
        return SparsityConfig(ratio=self.ratio, pattern=self.pattern, ignore=self.ignore)


@dataclass(frozen=True)
class DistillStep(TorchStep):
    """`distill:layers=3` (a transformer student keeping 3 of the teacher's layers) or
    `distill:width=16` (a narrower student of the teacher's class, e.g. digits-cnn), trained
    on the teacher's outputs (soft labels; embeddings for embedding models)."""

    name: ClassVar[str] = "distill"
    layers: int | None = None
    width: int | None = None
    temperature: float = 4.0
    hard_weight: float = 0.5
    soft_weight: float = 0.5
    hidden_weight: float = 1.0  # layer-dropped students: hidden-state MSE
    relation_weight: float = 1.0  # layer-dropped students: MiniLMv2 Q/K/V relations

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.layers is None) == (self.width is None):
            raise ValueError("give exactly one of layers=K (transformers) or width=N (CNNs)")
        for name in ("layers", "width"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.config()

    def config(self) -> DistillConfig:
        return DistillConfig(
            temperature=self.temperature,
            hard_weight=self.hard_weight,
            soft_weight=self.soft_weight,
            hidden_weight=self.hidden_weight,
            relation_weight=self.relation_weight,
        )


STEPS: dict[str, type[TorchStep]] = {
    cls.name: cls for cls in (PruneStep, SparsifyStep, DistillStep)
}
MAIN_OPTION = {"prune": "ratio", "sparsify": "ratio"}
