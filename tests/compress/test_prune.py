"""Structured pruning keeps CNNs, MLPs and transformer blocks runnable and exportable, and
the exported ONNX model really is smaller."""

import copy

import numpy as np
import pytest
import torch
from compress_models import SmallCNN, SmallMLP, bert_inputs, tiny_bert
from torch import nn

from inferopt.compress import PruneConfig, prune_
from inferopt.compress.prune import PruneError
from inferopt.compress.train import Batch
from inferopt.export import export_module
from inferopt.measure.size import size_figures

IMAGE = {"image": torch.rand(2, 1, 8, 8)}


def _onnx_params(module: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[int, np.ndarray]:
    model = export_module(module, inputs)  # parity-checked at another batch size
    out = model.run({k: v.numpy() for k, v in inputs.items()})
    return size_figures(model).parameters, next(iter(out.values()))


def test_cnn_with_residual_shrinks_and_exports(cnn: SmallCNN) -> None:
    before_params, _ = _onnx_params(cnn, IMAGE)
    report = prune_(cnn, PruneConfig(ratio=0.5, round_to=4), IMAGE)
    assert cnn.stem[0].out_channels == 8 and cnn.block[0].out_channels == 8  # coupled by the add
    assert cnn.wide[0].out_channels == 16 and cnn.head.out_features == 4  # output kept
    assert report.macs_removed > 0.5
    assert report.widths["stem.0"] == (16, 8)
    after_params, out = _onnx_params(cnn, IMAGE)
    assert after_params < 0.4 * before_params
    assert out.shape == (2, 4)


def test_mlp_shrinks_and_exports(mlp: SmallMLP) -> None:
    report = prune_(mlp, PruneConfig(ratio=0.5), {"features": torch.rand(2, 12)})
    assert [m.out_features for m in mlp.layers if isinstance(m, nn.Linear)] == [32, 16, 3]
    assert report.params_after < 0.4 * report.params_before
    _, out = _onnx_params(mlp, {"features": torch.rand(3, 12)})
    assert out.shape == (3, 3)


@pytest.mark.slow
def test_transformer_loses_heads_and_ffn_neurons_not_its_width() -> None:
    module = tiny_bert()
    inputs = bert_inputs()
    report = prune_(module, PruneConfig(ratio=0.5), inputs)
    layer = module.encoder.encoder.layer[0]
    assert layer.attention.self.num_attention_heads == 2
    assert layer.attention.self.query.out_features == 16
    assert layer.intermediate.dense.out_features == 32
    assert layer.output.dense.out_features == 32  # the residual stream keeps its width
    assert report.heads == {f"encoder.encoder.layer.{i}.attention.self": (4, 2) for i in (0, 1)}
    model = export_module(module, inputs)  # parity check at another batch and length
    assert model.run({k: v.numpy() for k, v in inputs.items()})[model.io.output_names[0]].shape == (
        2,
        32,
    )


@pytest.mark.parametrize("criterion", ["l1", "l2", "activation", "taylor"])
def test_every_criterion_prunes(criterion: str, cnn: SmallCNN) -> None:
    images, labels = torch.rand(16, 1, 8, 8), torch.randint(0, 4, (16,))
    batches = [Batch({"image": images}, labels, None)]

    def loss(module: nn.Module, batch: Batch) -> torch.Tensor:
        assert batch.labels is not None
        return nn.functional.cross_entropy(module(**batch.inputs), batch.labels)

    config = PruneConfig(ratio=0.5, criterion=criterion, round_to=None)  # type: ignore[arg-type]
    report = prune_(cnn, config, IMAGE, batches=batches, loss=loss)
    assert report.widths["stem.0"] == (16, 8)


def test_data_driven_criteria_need_data(cnn: SmallCNN) -> None:
    with pytest.raises(PruneError, match="needs data"):
        prune_(cnn, PruneConfig(criterion="activation"), IMAGE)


def test_global_scope_and_layer_ratios(cnn: SmallCNN) -> None:
    layer = prune_(
        copy.deepcopy(cnn), PruneConfig(ratio=0.0, layer_ratios=(("wide.0", 0.5),)), IMAGE
    )
    assert layer.widths == {"wide.0": (32, 16)}
    glob = prune_(cnn, PruneConfig(ratio=0.5, scope="global", round_to=None), IMAGE)
    assert glob.macs_removed > 0.3


def test_ignored_layers_keep_their_width(cnn: SmallCNN) -> None:
    prune_(cnn, PruneConfig(ratio=0.5, ignore=("wide.0",)), IMAGE)
    assert cnn.wide[0].out_channels == 32
    assert cnn.stem[0].out_channels == 8


def test_ratio_zero_changes_nothing(cnn: SmallCNN) -> None:
    report = prune_(cnn, PruneConfig(ratio=0.0), IMAGE)
    assert report.macs_removed == 0 and not report.widths


def test_unknown_layer_names_the_layer_and_lists_real_ones(cnn: SmallCNN) -> None:
    with pytest.raises(PruneError, match=r"names layer 'conv9'.*stem\.0"):
        prune_(cnn, PruneConfig(ignore=("conv9",)), IMAGE)


class FixedScale(nn.Module):
    """A buffer sized for the unpruned channels: Torch-Pruning cannot know to shrink it."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(1, 16, 3, padding=1)
        self.second = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 3)
        self.register_buffer("scale", torch.rand(1, 16, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.second(self.first(image)) * self.scale
        out: torch.Tensor = self.head(x.mean((2, 3)))
        return out


def test_untraceable_model_names_the_layer_and_is_left_unchanged() -> None:
    module = FixedScale()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(PruneError, match=r"fails in layer '\(root\)'.*ignore=\('second',\)"):
        prune_(module, PruneConfig(ratio=0.5), IMAGE)
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    report = prune_(module, PruneConfig(ratio=0.5, ignore=("second",)), IMAGE)
    assert report.widths == {"first": (16, 8)}
