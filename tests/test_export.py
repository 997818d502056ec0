import numpy as np
import pytest
import torch

from inferopt.errors import ExportError, InputError, ParityError
from inferopt.export import ExportConfig, export_module


class ConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 5)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        pooled = torch.relu(self.conv(image)).mean(dim=(2, 3))
        out: torch.Tensor = self.head(pooled)
        return out


class TokenModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).float()
        out: torch.Tensor = (self.embed(input_ids) * mask).sum(1) / mask.sum(1)
        return out


class BakesBatchIntoView(torch.nn.Module):
    """int(x.shape[0]) turns the example's batch size into a constant in the exported graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(int(x.shape[0]), -1) * 2


class DataDependentBranch(torch.nn.Module):
    """torch.export cannot guard on a tensor's value; the TorchScript tracer follows the branch
    the example takes, which here is every input's branch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.abs() >= 0).all():
            return x * 2
        return x * 3


class FixedBatch(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.zeros(2, x.shape[1])


def test_cnn_exports_with_dynamic_batch_and_passes_parity() -> None:
    torch.manual_seed(0)
    model = export_module(ConvNet(), (torch.randn(2, 1, 8, 8),))
    assert model.provenance.exporter == "dynamo"
    report = model.provenance.parity
    assert report is not None and report.ok and report.batch == 3 and report.seq is None
    assert model.io.batch_axis == 0 and model.io.seq_axis is None
    out = model.run({"image": np.zeros((5, 1, 8, 8), dtype=np.float32)})["output"]
    assert out.shape == (5, 5)


def test_token_inputs_get_batch_and_sequence_axes() -> None:
    ids = torch.randint(0, 50, (2, 7))
    model = export_module(
        TokenModel(), {"input_ids": ids, "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    )
    assert model.io.seq_axis == 1
    assert model.io.inputs[0].shape == ("batch", "seq")
    assert model.io.inputs[0].value_range == (float(ids.min()), float(ids.max()))
    report = model.provenance.parity
    assert report is not None and (report.batch, report.seq) == (3, 57)


def test_parity_shape_steps_away_from_the_example_shape() -> None:
    model = export_module(ConvNet(), (torch.randn(3, 1, 8, 8),))
    assert model.provenance.parity is not None and model.provenance.parity.batch == 4


@pytest.mark.parametrize("exporter", ["auto", "torchscript"])
def test_a_baked_in_batch_size_is_caught(exporter: str) -> None:
    with pytest.raises(ParityError, match=r"BakesBatchIntoView: .*batch 3.*baked"):
        export_module(
            BakesBatchIntoView(),
            (torch.randn(2, 4),),
            ExportConfig(exporter=exporter),  # type: ignore[arg-type]
        )


def test_falls_back_to_torchscript_and_says_why() -> None:
    model = export_module(DataDependentBranch(), (torch.randn(2, 4),))
    assert model.provenance.exporter == "torchscript"
    assert model.provenance.exporter_note is not None
    assert "dynamo exporter failed" in model.provenance.exporter_note
    assert model.provenance.parity is not None and model.provenance.parity.ok


def test_dynamo_only_reports_its_failure() -> None:
    with pytest.raises(ExportError, match="dynamo exporter failed"):
        export_module(DataDependentBranch(), (torch.randn(2, 4),), ExportConfig(exporter="dynamo"))


def test_a_module_with_a_fixed_batch_says_so() -> None:
    with pytest.raises(ExportError, match=r"module itself fails at batch 3.*batch_axis"):
        export_module(FixedBatch(), (torch.randn(2, 4),))
    model = export_module(FixedBatch(), (torch.randn(2, 4),), ExportConfig(batch_axis=None))
    assert model.io.batch_axis is None


def test_output_names_are_applied_even_when_they_clash_with_inner_values() -> None:
    model = export_module(
        ConvNet(), (torch.randn(2, 1, 8, 8),), ExportConfig(output_names=("conv",))
    )
    assert model.io.output_names == ["conv"]


def test_bad_example_inputs_and_configs() -> None:
    with pytest.raises(InputError, match="takes 1 inputs, 2 example inputs given"):
        export_module(ConvNet(), (torch.randn(2, 1, 8, 8), torch.randn(1)))
    with pytest.raises(InputError, match="'image' is a list"):
        export_module(ConvNet(), {"image": [1, 2]})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="exporter must be"):
        ExportConfig(exporter="onnx")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="atol and rtol"):
        ExportConfig(atol=-1)


def test_training_mode_is_restored() -> None:
    net = ConvNet().train()
    export_module(net, (torch.randn(2, 1, 8, 8),))
    assert net.training
