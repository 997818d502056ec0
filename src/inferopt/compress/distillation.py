"""Knowledge distillation: a smaller student learns to reproduce a teacher.

`distill(student, teacher, data, DistillConfig(...), FinetuneConfig(...))` trains the student
in place on the teacher's outputs (computed once, up front) and, where the data has them, the
labels. Student builders: `layer_dropped` (a Hugging Face encoder keeping k of its layers,
copied from the teacher's) and `narrower` (a module whose class takes a `width`, as the zoo's
`DigitsCNN`, freshly initialised). Fine-tuning after pruning is distillation too: the
unpruned model is the teacher."""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from inferopt.compress.config import DistillConfig, FinetuneConfig
from inferopt.compress.train import (
    Batch,
    Objective,
    Score,
    TrainData,
    TrainReport,
    finetune,
    forward,
    predict,
    reproducible,
)
from inferopt.data import Dataset
from inferopt.errors import InferoptError, InputError

MAX_SUBSETS = 40  # beyond this many layer subsets, keep evenly spaced layers


class DistillError(InferoptError):
    """No student of the requested shape can be built from this teacher."""


@dataclass(frozen=True)
class HiddenPairs:
    """Student layers and the teacher layers whose outputs they learn to reproduce."""

    student: tuple[nn.Module, ...]
    teacher: tuple[nn.Module, ...]


def distill(
    student: nn.Module,
    teacher: nn.Module,
    examples: Dataset,
    config: DistillConfig,
    training: FinetuneConfig,
    *,
    hidden: HiddenPairs | None = None,
    after_step: Callable[[], None] | None = None,
    label: str = "distilling",
) -> TrainReport:
    """Train `student` in place to match `teacher` on `examples` (labels used when present);
    early stopping on top-1 (labelled) or mean cosine to the teacher (unlabelled)."""
    teacher.eval()
    check_labels(teacher, examples)
    with reproducible(training.seed, training.threads):
        targets = predict(teacher, examples)
    data = TrainData(examples, targets)
    score = top1_score if examples.labels is not None else cosine_score
    objective = make_objective(config, examples.labels is not None, teacher, hidden)
    return finetune(student, objective, score, data, training, after_step=after_step, label=label)


def check_labels(model: nn.Module, examples: Dataset) -> None:
    """Labels must be class ids of the model's outputs."""
    if examples.labels is None:
        return
    labels = np.asarray(examples.labels)
    with torch.no_grad():
        out = forward(model.eval(), TrainData(examples).batch([0]).inputs)
    if not np.issubdtype(labels.dtype, np.integer) or out.dim() != 2:
        raise InputError(
            f"labels must be integer class ids for a model with [batch, classes] output; got "
            f"{labels.dtype} labels for output {list(out.shape)}"
        )
    if labels.min() < 0 or labels.max() >= out.shape[1]:
        raise InputError(
            f"labels range over {labels.min()}..{labels.max()} but the model has "
            f"{out.shape[1]} outputs"
        )


def make_objective(
    config: DistillConfig, labelled: bool, teacher: nn.Module, hidden: HiddenPairs | None
) -> Objective:
    def loss(student: nn.Module, batch: Batch) -> torch.Tensor:
        if hidden is not None and config.hidden_weight > 0:
            with _captured(hidden.student) as got:
                out = forward(student, batch.inputs)
            with _captured(hidden.teacher) as want, torch.no_grad():
                forward(teacher, batch.inputs)
            total = config.hidden_weight * _hidden_loss(got, want, batch)
        else:
            out, total = forward(student, batch.inputs), torch.zeros(())
        target = batch.teacher
        if target is None:
            raise InputError("distillation needs the teacher's outputs in every batch")
        if labelled and batch.labels is not None:
            t = config.temperature
            soft = F.kl_div(
                F.log_softmax(out / t, dim=-1),
                F.log_softmax(target / t, dim=-1),
                log_target=True,
                reduction="batchmean",
            )
            total = total + config.soft_weight * soft * t * t
            total = total + config.hard_weight * F.cross_entropy(out, batch.labels)
        else:
            cosine = F.cosine_similarity(out.flatten(1), target.flatten(1), dim=1)
            total = total + config.embedding_weight * (1.0 - cosine).mean()
        return total

    return loss


def _hidden_loss(got: list[torch.Tensor], want: list[torch.Tensor], batch: Batch) -> torch.Tensor:
    """Mean squared error of hidden states over real (unpadded) tokens."""
    mask = batch.inputs.get("attention_mask")
    total = torch.zeros(())
    for g, w in zip(got, want, strict=True):
        err = (g - w).pow(2).mean(-1)
        if mask is not None and mask.shape == err.shape:
            err = (err * mask).sum() / mask.sum().clamp(min=1)
        total = total + err.mean()
    return total / max(len(got), 1)


@contextlib.contextmanager
def _captured(layers: Sequence[nn.Module]) -> Iterator[list[torch.Tensor]]:
    outputs: list[torch.Tensor] = []

    def keep(_m: nn.Module, _i: Any, out: Any) -> None:
        outputs.append(out[0] if isinstance(out, tuple | list) else out)

    hooks = [layer.register_forward_hook(keep) for layer in layers]
    try:
        yield outputs
    finally:
        for h in hooks:
            h.remove()


def top1_score(module: nn.Module, data: TrainData) -> float:
    labels = data.examples.labels
    if labels is None:
        raise InputError("top-1 needs labels")
    predicted = predict(module, data.examples).argmax(1).numpy()
    return float(np.mean(predicted == labels))


def cosine_score(module: nn.Module, data: TrainData) -> float:
    if data.teacher is None:
        raise InputError("the cosine score needs the teacher's outputs")
    got = predict(module, data.examples)
    return float(F.cosine_similarity(got.flatten(1), data.teacher.flatten(1), dim=1).mean())


SCORES: dict[str, Score] = {"top1": top1_score, "cosine": cosine_score}


def layer_dropped(
    teacher: nn.Module, layers: int, keep: Sequence[int] | None = None
) -> tuple[nn.Module, HiddenPairs]:
    """A copy of a Hugging Face encoder keeping `layers` of its transformer layers (`keep`,
    else evenly spaced with the last included), with the teacher's weights; plus the layer
    pairs for hidden-state matching."""
    student = copy.deepcopy(teacher)
    stack, config = _layer_stack(student)
    total = len(stack)
    if not 1 <= layers < total:
        raise DistillError(f"a student needs 1 to {total - 1} of the teacher's {total} layers")
    kept = (
        list(keep)
        if keep is not None
        else [round((i + 1) * total / layers) - 1 for i in range(layers)]
    )
    if len(kept) != layers or sorted(set(kept)) != kept or not 0 <= kept[0] <= kept[-1] < total:
        raise DistillError(
            f"keep must be {layers} increasing layer indices below {total}, got {kept}"
        )
    teacher_stack, _ = _layer_stack(teacher)
    owner = _stack_owner(student)
    owner.layer = nn.ModuleList([stack[i] for i in kept])
    config.num_hidden_layers = layers
    for m in student.modules():
        if isinstance(m, nn.Embedding):
            # The vocabulary table is most of the parameters and already right (the teacher's):
            # training it costs an optimizer update of every row per step and overfits.
            m.weight.requires_grad_(False)
    pairs = HiddenPairs(tuple(owner.layer), tuple(teacher_stack[i] for i in kept))
    return student, pairs


def choose_layers(
    teacher: nn.Module, layers: int, examples: Dataset, samples: int = 64
) -> tuple[int, ...]:
    """Which `layers` of the teacher's layers to keep: of every subset (up to a few dozen),
    the one whose untrained student is closest to the teacher (mean cosine) on the first
    `samples` training examples. On all-MiniLM-L6-v2, 3 of 6: layers (0, 4, 5) start at
    ~0.70, the evenly spaced (1, 3, 5) at ~0.47, and the better start trains to the better end."""
    stack, _ = _layer_stack(teacher)
    total = len(stack)
    subsets = list(itertools.combinations(range(total), layers))
    if len(subsets) > MAX_SUBSETS:
        return tuple(round((i + 1) * total / layers) - 1 for i in range(layers))
    probe = examples.subset(range(min(samples, len(examples))))
    target = predict(teacher, probe)
    owner = _stack_owner(teacher)
    best: tuple[float, tuple[int, ...]] = (-2.0, subsets[-1])
    try:
        for keep in subsets:
            owner.layer = nn.ModuleList([stack[i] for i in keep])
            got = predict(teacher, probe)
            cosine = float(F.cosine_similarity(got.flatten(1), target.flatten(1), dim=1).mean())
            best = max(best, (cosine, keep))
    finally:
        owner.layer = stack
    return best[1]


def _stack_owner(module: nn.Module) -> Any:
    for m in module.modules():
        if isinstance(getattr(m, "layer", None), nn.ModuleList) and m is not module:
            return m
    raise DistillError(
        f"{type(module).__name__} has no Hugging Face style layer stack (encoder.layer) to drop "
        "layers from; distill:layers=K is for transformer encoders"
    )


def _layer_stack(module: nn.Module) -> tuple[nn.ModuleList, Any]:
    owner = _stack_owner(module)
    config = next(
        (getattr(m, "config", None) for m in module.modules() if hasattr(m, "config")), None
    )
    if config is None or not hasattr(config, "num_hidden_layers"):
        raise DistillError(f"{type(module).__name__}: no model config with num_hidden_layers")
    stack: nn.ModuleList = owner.layer
    return stack, config


def narrower(teacher: nn.Module, width: int, seed: int = 0) -> nn.Module:
    """A fresh, seeded instance of the teacher's class at `width` (the class must take a
    `width` argument and expose it, as the zoo's DigitsCNN does)."""
    current = getattr(teacher, "width", None)
    if not isinstance(current, int):
        raise DistillError(
            f"{type(teacher).__name__} has no integer `width` attribute; distill:width=N needs "
            "a model class built with a width (e.g. digits-cnn); use prune for other models"
        )
    if not 1 <= width < current:
        raise DistillError(f"the student's width must be 1 to {current - 1}, got {width}")
    with reproducible(seed):
        try:
            student: nn.Module = type(teacher)(width=width)
        except TypeError as exc:
            raise DistillError(f"{type(teacher).__name__}(width={width}) failed: {exc}") from exc
    return student
