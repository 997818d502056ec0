"""The fine-tuning loop: loss goes down, the best validation epoch is kept, and a seed gives
the same weights twice."""

import numpy as np
import pytest
import torch
from compress_models import SmallCNN, blobs
from torch import nn

from inferopt.compress import FinetuneConfig
from inferopt.compress.distillation import top1_score
from inferopt.compress.train import Batch, TrainData, finetune, warmup_cosine
from inferopt.errors import InputError


def _cross_entropy(module: nn.Module, batch: Batch) -> torch.Tensor:
    assert batch.labels is not None
    return nn.functional.cross_entropy(module(**batch.inputs), batch.labels)


def _train(seed: int = 0, epochs: int = 4) -> tuple[SmallCNN, object]:
    torch.manual_seed(0)
    module = SmallCNN(width=8)
    config = FinetuneConfig(epochs=epochs, lr=1e-2, seed=seed, patience=10)
    report = finetune(module, _cross_entropy, top1_score, TrainData(blobs()), config)
    return module, report


def test_loss_decreases_and_accuracy_rises() -> None:
    _, report = _train()
    assert report.losses[-1] < 0.5 * report.losses[0]  # type: ignore[attr-defined]
    assert report.best_score > report.initial_score + 0.3  # type: ignore[attr-defined]
    assert report.best_score > 0.9  # type: ignore[attr-defined]


def test_same_seed_same_weights() -> None:
    first, _ = _train(epochs=2)
    second, _ = _train(epochs=2)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_early_stopping_keeps_the_best_epoch() -> None:
    torch.manual_seed(0)
    module = SmallCNN(width=8)
    scores = iter([0.5, 0.9, 0.4, 0.3, 0.2, 0.1])  # before training, then per epoch
    states: list[dict[str, torch.Tensor]] = []

    def score(m: nn.Module, _: TrainData) -> float:
        states.append({k: v.clone() for k, v in m.state_dict().items()})
        return next(scores)

    config = FinetuneConfig(epochs=5, patience=2, lr=1e-3)
    report = finetune(module, _cross_entropy, score, TrainData(blobs()), config)
    assert (report.best_epoch, report.epochs_run) == (1, 3)
    kept = module.state_dict()
    assert all(torch.equal(kept[k], states[1][k]) for k in kept)


def test_schedule_warms_up_then_decays_to_zero() -> None:
    weight = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    schedule = warmup_cosine(optimizer, FinetuneConfig(warmup_fraction=0.1), total_steps=100)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] < rates[9] == pytest.approx(1.0)
    assert rates[-1] < 0.01 and np.all(np.diff(rates[10:]) <= 1e-12)


def test_too_few_examples_is_an_input_error() -> None:
    with pytest.raises(InputError, match="too few"):
        TrainData(blobs(count=15)).split(10)
