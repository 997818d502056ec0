import sys
from pathlib import Path

import pytest
import torch

from inferopt import load
from inferopt.errors import ModelLoadError, ZooError
from inferopt.zoo import get

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))


def test_module_with_example_inputs() -> None:
    from factories import good

    module, examples = good()
    model = load(module, examples)
    assert model.provenance.kind == "torch" and model.provenance.source == "TinyMLP"
    assert model.io.input_names == ["features"]


def test_module_without_example_inputs_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="needs example_inputs"):
        load(torch.nn.Linear(2, 2))


def test_factory_spec() -> None:
    model = load("factories:good")
    assert model.provenance.source == "factories:good"
    assert model.provenance.parity is not None and model.provenance.parity.ok


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("factories:raises", "the factory raised RuntimeError: checkpoint weights.pt not found"),
        ("factories:wrong_type", r"must return \(torch.nn.Module, example_inputs\), got str"),
        ("factories:missing", "cannot import the factory"),
        ("no_such_module_xyz:make", "cannot import the factory"),
    ],
)
def test_bad_factories(spec: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        load(spec)


def test_unknown_names_list_what_exists() -> None:
    with pytest.raises(ModelLoadError, match=r"not a zoo name .*minilm"):
        load("resnet9000")
    with pytest.raises(ZooError, match="not a zoo model"):
        get("resnet9000")


def test_artifact_folder_loads_its_model_onnx(tmp_path: Path) -> None:
    model = load("factories:good")
    model.save(tmp_path / "model.onnx")
    again = load(tmp_path)
    assert again.provenance.source == "factories:good"
    assert again.io == model.io


def test_unsupported_object() -> None:
    with pytest.raises(ModelLoadError, match="cannot load a int"):
        load(42)
