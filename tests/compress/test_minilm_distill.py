"""MiniLM-style distillation: attention-relation loss, step-wise early stopping, the time cap,
progress lines, and the student cache, on a tiny BERT (2-4 layers, hidden 32)."""

import copy
import time
from typing import Any

import pytest
import torch
from compress_models import bert_dataset, bert_inputs, tiny_bert
from torch import nn

from inferopt.compress import distillation
from inferopt.compress.config import DistillConfig, FinetuneConfig
from inferopt.compress.distillation import distill, layer_dropped, student_key
from inferopt.compress.relations import captured_projections, relation_loss
from inferopt.compress.train import Batch, TrainData, finetune, warmup_decay

LOSSES = DistillConfig(embedding_weight=1.0, hidden_weight=1.0, relation_weight=1.0)


def _last_layer(model: nn.Module) -> nn.Module:
    stack: Any = model.get_submodule("encoder.encoder.layer")
    return stack[-1]  # type: ignore[no-any-return]


def _relations(
    student: nn.Module, teacher: nn.Module, inputs: dict[str, torch.Tensor]
) -> torch.Tensor:
    with captured_projections(_last_layer(student)) as got, torch.no_grad():
        student(**inputs)
    with captured_projections(_last_layer(teacher)) as want, torch.no_grad():
        teacher(**inputs)
    return relation_loss(got, want, heads=4, mask=inputs["attention_mask"])


def test_relation_loss_is_zero_for_identical_models_and_positive_otherwise() -> None:
    teacher = tiny_bert(3)
    inputs = bert_inputs(batch=3, seq=7)
    assert float(_relations(copy.deepcopy(teacher), teacher, inputs)) == pytest.approx(0, abs=1e-6)
    torch.manual_seed(1)
    other = tiny_bert(3)
    for p in other.parameters():
        p.data.add_(0.5 * torch.randn_like(p))
    assert float(_relations(other, teacher, inputs)) > 1e-3


def test_padded_positions_do_not_change_the_relation_loss() -> None:
    teacher = tiny_bert(2)
    student = tiny_bert(2)
    for p in student.parameters():
        p.data.add_(0.3 * torch.randn_like(p))
    short = bert_inputs(batch=2, seq=5)
    padded = {k: torch.cat([v, v[:, :3]], dim=1) for k, v in short.items()}
    padded["input_ids"][:, 5:] = torch.randint(1, 120, (2, 3))  # junk under the mask
    padded["attention_mask"][:, 5:] = 0
    assert float(_relations(student, teacher, padded)) == pytest.approx(
        float(_relations(student, teacher, short)), rel=1e-4
    )


def test_layer_dropped_student_learns_with_every_loss() -> None:
    teacher = tiny_bert(4)
    student, pairs = layer_dropped(teacher, 2, keep=(0, 2))
    assert pairs.teacher[-1] is _last_layer(teacher)  # last to last
    training = FinetuneConfig(epochs=4, lr=3e-3, batch_size=8, patience=10, schedule="linear")
    report = distill(student, teacher, bert_dataset(80), LOSSES, training, hidden=pairs)
    # A random tiny BERT's pooled outputs are near-constant (cosine ~0.9997 from the start):
    # the loss, mostly hidden states and relations, is what shows learning.
    assert report.losses[-1] < 0.9 * report.losses[0]
    assert report.best_score >= report.initial_score
    assert report.examples_seen == 72 * 4 and report.steps == 9 * 4


def _mse_to_zero(module: nn.Module, batch: Batch) -> torch.Tensor:
    return module(**batch.inputs).pow(2).mean()  # type: ignore[no-any-return]


def test_early_stopping_counts_step_validations() -> None:
    scores = iter([0.5, 0.9, *[0.1] * 100])  # before training, then each validation

    def score(_m: nn.Module, _d: TrainData) -> float:
        return next(scores)

    config = FinetuneConfig(epochs=50, batch_size=4, patience=3, validation_steps=2)
    report = finetune(tiny_bert(2), _mse_to_zero, score, TrainData(bert_dataset(60)), config)
    assert report.stopped == "patience"
    assert report.steps == 8  # validations at steps 2 (best), 4, 6, 8 (third miss)
    assert report.best_score == 0.9 and report.epochs_run == 1


def test_training_stops_at_max_seconds_and_scores_the_last_weights() -> None:
    calls = []

    def slow(module: nn.Module, batch: Batch) -> torch.Tensor:
        time.sleep(0.05)
        return _mse_to_zero(module, batch)

    def score(_m: nn.Module, _d: TrainData) -> float:
        calls.append(1)
        return float(len(calls))  # always better: the last weights win

    lines: list[str] = []
    config = FinetuneConfig(epochs=1000, batch_size=4, max_seconds=0.6, log_seconds=0.2)
    started = time.perf_counter()
    report = finetune(
        tiny_bert(2), slow, score, TrainData(bert_dataset(60)), config, log=lines.append
    )
    assert time.perf_counter() - started < 2.0
    assert report.stopped == "time" and 0.6 <= report.seconds < 1.5
    assert report.best_score == len(calls) >= 2  # scored after the clock stopped it
    assert lines and "examples/s" in lines[0]


def test_time_cap_drives_the_linear_decay() -> None:
    weight = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    now = [0.0]
    config = FinetuneConfig(schedule="linear", warmup_fraction=0.0, max_seconds=10.0)
    schedule = warmup_decay(optimizer, config, 1000, lambda: now[0])
    now[0] = 5.0
    optimizer.step()
    schedule.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5)


def test_a_second_distillation_loads_the_cached_student(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("INFEROPT_CACHE", str(tmp_path))
    teacher, data = tiny_bert(3), bert_dataset(60)
    training = FinetuneConfig(epochs=2, lr=3e-3, batch_size=8)
    key = student_key(teacher, data, LOSSES, training, (0, 2))
    first, pairs = layer_dropped(teacher, 2, keep=(0, 2))
    trained = distill(first, teacher, data, LOSSES, training, hidden=pairs, cache_key=key)

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("the cached student should have been loaded, not trained")

    monkeypatch.setattr(distillation, "finetune", refuse)
    second, pairs = layer_dropped(teacher, 2, keep=(0, 2))
    again = distill(second, teacher, data, LOSSES, training, hidden=pairs, cache_key=key)
    assert again.cached and not trained.cached and again.best_score == trained.best_score
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert student_key(teacher, data, LOSSES, training, (0, 1)) != key


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="relation_heads"):
        DistillConfig(relation_heads=0)
    with pytest.raises(ValueError, match="max_seconds"):
        FinetuneConfig(max_seconds=0)
    with pytest.raises(ValueError, match="schedule"):
        FinetuneConfig(schedule="step")  # type: ignore[arg-type]
