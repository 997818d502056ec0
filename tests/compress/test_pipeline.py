"""Recipes with PyTorch steps, end to end: trained, exported with the parity check, measured
against the unmodified source, cached, and refused cleanly when they cannot run."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from compress_models import SmallMLP

from inferopt.compress import pipeline
from inferopt.compress.steps import DistillStep
from inferopt.errors import InputError, ModelLoadError
from inferopt.measure.size import size_figures
from inferopt.passes.recipe import Recipe, RecipeError
from inferopt.recipes import optimize_recipe
from inferopt.sources import load


@pytest.mark.slow
def test_prune_recipe_then_int8_writes_an_artifact_and_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "pruned"
    result = optimize_recipe("digits-mlp", "prune:0.5:epochs=3,int8-static", out)
    manifest = json.loads((out / "inferopt.json").read_text())
    assert [s["pass"] for s in manifest["recipe"]] == ["prune", "int8-static"]
    prune = manifest["provenance"]["steps"][0]
    assert prune["pass"] == "prune" and prune["report"]["macs_removed"] > 0.5
    assert prune["report"]["epochs_run"] >= 1
    assert result.baseline.provenance.steps == ()  # measured against the untouched source
    assert result.evaluation.size_ratio < 0.2  # fewer parameters, and int8
    assert abs(result.evaluation.fidelity.drop) < 0.03
    assert load(out).provenance.steps[0]["pass"] == "prune"

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained again instead of using the cache")

    monkeypatch.setattr(pipeline, "apply_step", no_training)
    again = optimize_recipe("digits-mlp", "prune:0.5:epochs=3,int8-static")
    assert again.model.provenance.steps[0]["report"] == prune["report"]


def test_onnx_file_source_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    path = load("digits-mlp").save(tmp_path / "mlp.onnx")
    out = tmp_path / "out"
    with pytest.raises(ModelLoadError, match="need the PyTorch model"):
        optimize_recipe(path, "prune:0.5", out)
    assert not out.exists() and not list(tmp_path.glob(".out.partial*"))


def test_module_without_data_needs_real_examples() -> None:
    with pytest.raises(InputError, match="needs real examples: pass --data"):
        optimize_recipe(SmallMLP(), "prune:0.5", example_inputs=(torch.rand(2, 12),))


def _data(path: Path, labels: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, features=rng.normal(size=(len(labels), 12)).astype(np.float32), labels=labels)
    return path


def test_labels_that_do_not_fit_the_model_are_refused(tmp_path: Path) -> None:
    data = _data(tmp_path / "bad.npz", np.full(60, 5, dtype=np.int64))
    out = tmp_path / "out"
    with pytest.raises(InputError, match="but the model has 3 outputs"):
        optimize_recipe(
            SmallMLP(), "prune:0.5:epochs=1", out, data=data, example_inputs=(torch.rand(2, 12),)
        )
    assert not out.exists()


@pytest.mark.slow
def test_module_source_with_user_data_is_pruned_and_trained(tmp_path: Path) -> None:
    labels = np.random.default_rng(1).integers(0, 3, 80).astype(np.int64)
    data = _data(tmp_path / "data.npz", labels)
    torch.manual_seed(0)
    result = optimize_recipe(
        SmallMLP(), "prune:0.5:epochs=2", data=data, example_inputs=(torch.rand(2, 12),)
    )
    step = result.model.provenance.steps[0]
    assert step["report"]["widths"] == {"layers.0": [64, 32], "layers.2": [32, 16]}
    params = size_figures(result.model).parameters
    assert params < 0.4 * size_figures(result.baseline).parameters


def test_which_sources_have_a_torch_model(tmp_path: Path) -> None:
    onnx_file = load("digits-mlp").save(tmp_path / "m.onnx")
    assert pipeline.has_torch_model("digits-cnn") and pipeline.has_torch_model(SmallMLP())
    assert pipeline.has_torch_model("factories:good")
    assert not pipeline.has_torch_model(onnx_file) and not pipeline.has_torch_model(tmp_path)


def test_a_step_s_own_cap_replaces_the_family_s_and_a_search_only_lowers_it() -> None:
    class Attention(torch.nn.Module):  # what makes a module count as a transformer
        num_attention_heads = 2

    module = torch.nn.Sequential(Attention())
    family = pipeline.TRANSFORMER_TRAINING.max_seconds
    assert pipeline._training(DistillStep(layers=3), module).max_seconds == family
    long = DistillStep(layers=3, max_seconds=7200)
    assert pipeline._training(long, module).max_seconds == 7200
    assert pipeline._training(long, module, cap=600).max_seconds == 600
    assert long.options()["max_seconds"] == 7200  # part of the student's cache key
    with pytest.raises(RecipeError, match="max_seconds must be positive"):
        Recipe.parse("distill:layers=3:max_seconds=0")
