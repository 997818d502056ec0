"""Knowledge distillation: a smaller student learns to reproduce a teacher.

`distill(student, teacher, data, DistillConfig(...), FinetuneConfig(...))` trains the student
in place on the teacher's outputs and, where the data has them, the labels. Student builders:
`layer_dropped` (a Hugging Face encoder keeping k of its layers, copied from the teacher's)
and `narrower` (a module whose class takes a `width`, as the zoo's `DigitsCNN`, freshly
initialised). Fine-tuning after pruning is distillation too: the unpruned model is the
teacher.

Without labels (embedding models) the teacher runs on each batch as the student trains, so
a corpus of 100k sentences never has all its teacher outputs in memory at once; the
layer-dropped student also learns the teacher's hidden states and MiniLMv2 attention
relations (`relations.py`). With `cache_key` the trained weights are kept under the cache's
`students/` folder, and a later call with the same key loads them instead of training."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from inferopt.cache import cache_dir
from inferopt.compress.config import DistillConfig, FinetuneConfig
from inferopt.compress.relations import (
    captured_outputs,
    captured_projections,
    hidden_loss,
    relation_loss,
)
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
STUDENT_FILE = "student.pt"


class DistillError(InferoptError):
    """No student of the requested shape can be built from this teacher."""


@dataclass(frozen=True)
class HiddenPairs:
    """Student layers and the teacher layers whose outputs they learn to reproduce (the
    last student layer is paired with the teacher's last layer)."""

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
    log: Callable[[str], None] | None = None,
    cache_key: str | None = None,
) -> TrainReport:
    """Train `student` in place to match `teacher` on `examples` (labels used when present);
    early stopping on top-1 (labelled) or mean cosine to the teacher (unlabelled), measured
    on a slice of `examples`. With `cache_key`, weights trained before under the same key
    are loaded instead (the report then has `cached=True`)."""
    path = cache_dir("students", cache_key) / STUDENT_FILE if cache_key else None
    if path is not None and path.is_file():
        return _load_student(student, path)
    teacher.eval()
    check_labels(teacher, examples)
    labelled = examples.labels is not None
    score: Score
    if labelled:  # small labelled sets, many epochs: the teacher runs once, up front
        with reproducible(training.seed, training.threads):
            data = TrainData(examples, predict(teacher, examples))
        score = top1_score
    else:  # large unlabelled corpora: the teacher runs on each batch
        data, score = TrainData(examples), teacher_cosine(teacher)
    objective = make_objective(config, labelled, teacher, hidden)
    report = finetune(
        student, objective, score, data, training, after_step=after_step, label=label, log=log
    )
    if path is not None:
        _save_student(student, report, path)
    return report


def update_with_weights(digest: Any, module: nn.Module) -> None:
    """Feed every parameter and buffer of `module` (names and bytes) to `digest`."""
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())


def student_key(teacher: nn.Module, examples: Dataset, *options: Any, version: str = "1") -> str:
    """A cache key for a student: the teacher's weights, the training data's content, and
    every option given (configs, kept layers), as a 32-digit hex digest."""
    digest = hashlib.sha256(version.encode())
    update_with_weights(digest, teacher)
    examples.update_digest(digest)
    plain = [dataclasses.asdict(o) if dataclasses.is_dataclass(o) else o for o in options]  # type: ignore[arg-type]
    digest.update(json.dumps(plain, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


def _save_student(student: nn.Module, report: TrainReport, path: Any) -> None:
    partial = path.with_suffix(".partial")
    torch.save({"state": student.state_dict(), "report": dataclasses.asdict(report)}, partial)
    partial.replace(path)  # atomic: a killed run never leaves half a student


def _load_student(student: nn.Module, path: Any) -> TrainReport:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    student.load_state_dict(saved["state"])
    student.eval()
    fields = dict(saved["report"], losses=tuple(saved["report"]["losses"]), cached=True)
    return TrainReport(**fields)


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
    """The loss of one batch (DistillConfig lists its terms). The teacher's output comes
    from the batch when precomputed, else from running the teacher on it."""
    use_hidden = hidden is not None and config.hidden_weight > 0
    use_relation = hidden is not None and config.relation_weight > 0
    heads = config.relation_heads or _attention_heads(teacher)

    def loss(student: nn.Module, batch: Batch) -> torch.Tensor:
        mask = batch.inputs.get("attention_mask")
        with _taps(hidden, use_hidden, use_relation, student=True) as (got, got_qkv):
            out = forward(student, batch.inputs)
        target = batch.teacher
        with (
            _taps(hidden, use_hidden, use_relation, student=False) as (want, want_qkv),
            torch.no_grad(),
        ):
            if target is None or use_hidden or use_relation:
                ran = forward(teacher, batch.inputs)
                target = ran if target is None else target
        total = torch.zeros(())
        if use_hidden:
            total = total + config.hidden_weight * hidden_loss(got, want, mask)
        if use_relation:
            total = total + config.relation_weight * relation_loss(got_qkv, want_qkv, heads, mask)
        if labelled and batch.labels is not None:
            return total + _label_loss(config, out, target, batch.labels)
        return total + _embedding_loss(config, out, target, mask)

    return loss


@contextlib.contextmanager
def _taps(
    hidden: HiddenPairs | None, states: bool, relations: bool, *, student: bool
) -> Iterator[tuple[list[torch.Tensor], dict[str, torch.Tensor]]]:
    """Hidden states of the paired layers and Q/K/V of the last one, while open."""
    layers = () if hidden is None else (hidden.student if student else hidden.teacher)
    with contextlib.ExitStack() as stack:
        kept = stack.enter_context(captured_outputs(layers if states else ()))
        qkv = stack.enter_context(
            captured_projections(layers[-1]) if relations and layers else _nothing()
        )
        yield kept, qkv


@contextlib.contextmanager
def _nothing() -> Iterator[dict[str, torch.Tensor]]:
    yield {}


def _attention_heads(module: nn.Module) -> int:
    for m in module.modules():
        heads = getattr(m, "num_attention_heads", None)
        if isinstance(heads, int) and heads > 0:
            return heads
    return 1


def _label_loss(
    config: DistillConfig, out: torch.Tensor, target: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    t = config.temperature
    soft = F.kl_div(
        F.log_softmax(out / t, dim=-1),
        F.log_softmax(target / t, dim=-1),
        log_target=True,
        reduction="batchmean",
    )
    return config.soft_weight * soft * t * t + config.hard_weight * F.cross_entropy(out, labels)


def _embedding_loss(
    config: DistillConfig, out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    got, want = pooled(out, mask), pooled(target, mask)
    total = config.embedding_weight * (1.0 - F.cosine_similarity(got, want, dim=1)).mean()
    if config.embedding_mse_weight > 0:
        total = total + config.embedding_mse_weight * F.mse_loss(got, want)
    return total


def pooled(out: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[batch, features]: a [batch, seq, width] output mean-pooled over real tokens (mask
    1), anything else flattened per example."""
    if out.dim() == 3 and mask is not None and tuple(mask.shape) == tuple(out.shape[:2]):
        weights = mask.to(out.dtype).unsqueeze(-1)
        return (out * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    return out.flatten(1)


def teacher_cosine(teacher: nn.Module) -> Score:
    """Mean cosine of the student's (pooled) outputs to the teacher's on the validation
    data; the teacher's outputs are computed once per validation set and remembered."""
    memo: dict[int, tuple[Dataset, torch.Tensor]] = {}

    def score(module: nn.Module, data: TrainData) -> float:
        key = id(data.examples)
        if key not in memo:
            memo[key] = (data.examples, predict(teacher, data.examples))
        return _mean_cosine(predict(module, data.examples), memo[key][1])

    return score


def _mean_cosine(got: torch.Tensor, want: torch.Tensor) -> float:
    return float(F.cosine_similarity(got.flatten(1), want.flatten(1), dim=1).mean())


def top1_score(module: nn.Module, data: TrainData) -> float:
    labels = data.examples.labels
    if labels is None:
        raise InputError("top-1 needs labels")
    predicted = predict(module, data.examples).argmax(1).numpy()
    return float(np.mean(predicted == labels))


def cosine_score(module: nn.Module, data: TrainData) -> float:
    if data.teacher is None:
        raise InputError("the cosine score needs the teacher's outputs")
    return _mean_cosine(predict(module, data.examples), data.teacher)


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
    # The last student layer learns the teacher's last layer, whichever layer it started as.
    mapped = [*kept[:-1], total - 1]
    pairs = HiddenPairs(tuple(owner.layer), tuple(teacher_stack[i] for i in mapped))
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
