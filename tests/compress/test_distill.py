"""Distillation: students of the right shape, a loss that decreases, labels checked."""

import numpy as np
import pytest
import torch
from compress_models import SmallCNN, bert_dataset, bert_inputs, blobs, tiny_bert

from inferopt.compress import DistillConfig, FinetuneConfig, distill, layer_dropped, narrower
from inferopt.compress.distillation import DistillError
from inferopt.data import Dataset
from inferopt.errors import InputError


def _teacher() -> SmallCNN:
    from inferopt.compress.distillation import top1_score
    from inferopt.compress.train import TrainData, finetune

    torch.manual_seed(0)
    teacher = SmallCNN(width=16)

    def loss(module: torch.nn.Module, batch: object) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(module(**batch.inputs), batch.labels)  # type: ignore[attr-defined]

    finetune(teacher, loss, top1_score, TrainData(blobs()), FinetuneConfig(epochs=3, lr=1e-2))
    return teacher


def test_narrow_cnn_student_learns_from_soft_labels() -> None:
    teacher = _teacher()
    student = narrower(teacher, width=4)
    assert isinstance(student, SmallCNN) and student.stem[0].out_channels == 4
    report = distill(
        student, teacher, blobs(), DistillConfig(), FinetuneConfig(epochs=8, lr=1e-2, patience=8)
    )
    assert report.losses[-1] < 0.5 * report.losses[0]
    assert report.best_score > 0.85


@pytest.mark.slow
def test_layer_dropped_transformer_student_matches_the_teacher() -> None:
    teacher = tiny_bert(layers=4)
    student, pairs = layer_dropped(teacher, 2)
    kept = student.encoder.encoder.layer
    assert len(kept) == 2 and student.encoder.config.num_hidden_layers == 2
    assert len(teacher.encoder.encoder.layer) == 4  # the teacher is untouched
    # evenly spaced, the last included, weights copied from the teacher's layers 1 and 3
    for layer, source in zip(kept, (1, 3), strict=True):
        assert torch.equal(
            layer.output.dense.weight, teacher.encoder.encoder.layer[source].output.dense.weight
        )
    assert pairs.teacher == (teacher.encoder.encoder.layer[1], teacher.encoder.encoder.layer[3])
    config = DistillConfig(hidden_weight=1.0)
    report = distill(
        student, teacher, bert_dataset(), config, FinetuneConfig(epochs=4, lr=1e-3), hidden=pairs
    )
    assert report.losses[-1] < report.losses[0]
    assert report.best_score >= report.initial_score
    assert student(**bert_inputs()).shape == (2, 32)


def test_students_that_cannot_be_built_say_why() -> None:
    with pytest.raises(DistillError, match="1 to 1 of the teacher's 2 layers"):
        layer_dropped(tiny_bert(layers=2), 2)
    with pytest.raises(DistillError, match="no Hugging Face style layer stack"):
        layer_dropped(SmallCNN(), 1)
    with pytest.raises(DistillError, match="no integer `width`"):
        narrower(torch.nn.Linear(3, 3), 2)
    with pytest.raises(DistillError, match="width must be 1 to 15"):
        narrower(SmallCNN(16), 16)


def test_labels_that_do_not_fit_the_model_are_refused() -> None:
    data = blobs()
    bad = Dataset(data.samples, np.full(len(data), 7, dtype=np.int64))
    with pytest.raises(InputError, match=r"labels range over 7\.\.7 but the model has 4 outputs"):
        distill(SmallCNN(4), SmallCNN(), bad, DistillConfig(), FinetuneConfig(epochs=1))
