"""Magnitude sparsity: the pattern holds through fine-tuning and export; the sparse-stored
size is smaller; the ONNX file itself is not."""

import numpy as np
import pytest
import torch
from compress_models import SmallCNN, SmallMLP, blobs
from onnx import numpy_helper

from inferopt.compress import DistillConfig, FinetuneConfig, SparsityConfig, distill, sparsify_
from inferopt.compress.prune import PruneError
from inferopt.compress.sparsity import sparse_size
from inferopt.export import export_module


def test_unstructured_zeroes_the_ratio_of_each_layer(mlp: SmallMLP) -> None:
    masks = sparsify_(mlp, SparsityConfig(ratio=0.75))
    for weight, _ in masks.masks.values():
        assert float((weight == 0).float().mean()) == pytest.approx(0.75, abs=0.01)
    assert masks.sparsity == pytest.approx(0.75, abs=0.01)


def test_two_of_four_keeps_the_two_largest_of_each_group(mlp: SmallMLP) -> None:
    original = mlp.layers[0].weight.detach().clone()
    sparsify_(mlp, SparsityConfig(pattern="2:4"))
    groups = mlp.layers[0].weight.detach().reshape(64, -1, 4)
    assert torch.all((groups != 0).sum(-1) == 2)
    largest = original.abs().reshape(64, -1, 4).topk(2, dim=-1).indices.sort(-1).values
    kept = (groups != 0).nonzero()[:, 2].reshape(64, -1, 2)
    assert torch.equal(kept, largest)


def test_layers_that_do_not_fit_n_m_are_skipped(cnn: SmallCNN) -> None:
    masks = sparsify_(cnn, SparsityConfig(pattern="2:4"))
    assert masks.skipped == ("stem.0",)  # 1 input channel x 3x3 = 9 weights per filter


def test_unknown_ignored_layer_is_refused(cnn: SmallCNN) -> None:
    with pytest.raises(PruneError, match="ignores layer 'nope'"):
        sparsify_(cnn, SparsityConfig(ignore=("nope",)))


def test_masks_hold_through_fine_tuning_and_export() -> None:
    torch.manual_seed(0)
    teacher = SmallCNN(width=8)
    student = SmallCNN(width=8)
    student.load_state_dict(teacher.state_dict())
    masks = sparsify_(student, SparsityConfig(pattern="2:4"))
    distill(
        student,
        teacher,
        blobs(),
        DistillConfig(),
        FinetuneConfig(epochs=2),
        after_step=masks.apply,
    )
    groups = student.block[0].weight.detach().reshape(8, -1, 4)
    assert torch.all((groups != 0).sum(-1) <= 2)
    model = export_module(student, {"image": torch.rand(2, 1, 8, 8)})
    weights = [numpy_helper.to_array(t) for t in model.proto.graph.initializer if len(t.dims) == 4]
    assert any(np.mean(w == 0) >= 0.5 for w in weights)
    size = sparse_size(model, "2of4")
    assert size.sparse_bytes < size.dense_bytes
    assert size.sparse_tensors >= 2


def test_dense_model_has_no_sparse_saving(mlp: SmallMLP) -> None:
    model = export_module(mlp, {"features": torch.rand(2, 12)})
    size = sparse_size(model)
    assert size.sparse_bytes == size.dense_bytes and size.sparse_tensors == 0
