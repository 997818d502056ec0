"""`inferopt optimize --recipe` end to end on the zoo's MLP: artifact, manifest, bad input."""

import json
from pathlib import Path

import numpy as np
import pytest

from inferopt.artifact import ArtifactError
from inferopt.cli import main
from inferopt.errors import InputError
from inferopt.passes.recipe import RecipeError
from inferopt.recipes import optimize_recipe
from inferopt.sources import load


@pytest.mark.slow
def test_recipe_writes_a_reproducible_artifact(tmp_path: Path) -> None:
    out = tmp_path / "mlp-int8"
    result = optimize_recipe("digits-mlp", "fuse,int8-static:percentile", out)
    files = sorted(p.name for p in out.iterdir())
    assert files == ["inferopt.json", "model.onnx", "report.md"]
    manifest = json.loads((out / "inferopt.json").read_text())
    assert [s["pass"] for s in manifest["recipe"]] == ["fuse", "int8-static"]
    assert manifest["evaluation"]["fidelity"]["metric"] == "top1"
    assert manifest["evaluation"]["size_ratio"] < 0.5
    assert manifest["hardware_fingerprint"]
    assert abs(result.evaluation.fidelity.drop) < 0.02
    reloaded = load(out)  # an artifact folder is a model source
    assert [s["pass"] for s in reloaded.provenance.steps] == ["fuse", "int8-static"]
    assert "top-1" in (out / "report.md").read_text()


def test_user_data_is_checked_and_nothing_is_written_on_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, pixels=np.zeros((20, 64), dtype=np.float32))
    out = tmp_path / "out"
    with pytest.raises(InputError, match="do not match the model's inputs"):
        optimize_recipe("digits-mlp", "int8-static", out, data=bad)
    assert not out.exists()
    assert not list(tmp_path.glob(".out.partial*"))


def test_cli_errors_exit_2_without_an_artifact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.npz"
    np.savez(empty)
    code = main(
        [
            "optimize",
            "digits-mlp",
            "--recipe",
            "int8-static",
            "--out",
            str(tmp_path / "o"),
            "--data",
            str(empty),
        ]
    )
    assert code == 2 and "holds no input arrays" in capsys.readouterr().err
    code = main(
        ["optimize", "digits-mlp", "--recipe", "int8-dynamic,fuse", "--out", str(tmp_path / "o")]
    )
    assert code == 2 and "comes after" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_refuses_to_overwrite_a_folder_that_is_not_an_artifact(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="not an inferopt artifact"):
        optimize_recipe("digits-mlp", "fuse", tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_unknown_pass_is_a_recipe_error() -> None:
    with pytest.raises(RecipeError, match="unknown pass"):
        optimize_recipe("digits-mlp", "fuse,turbo")


@pytest.mark.slow
def test_labelled_user_data_gives_task_metric(tmp_path: Path) -> None:
    from inferopt.zoo import get

    evaluation = get("digits-mlp").data().evaluation
    arrays = evaluation.batch(range(len(evaluation)))
    data = tmp_path / "digits.npz"
    np.savez(data, image=arrays["image"], labels=evaluation.labels)
    result = optimize_recipe("digits-mlp", "int8-dynamic", data=data)
    assert result.evaluation.fidelity.task_score is not None
    assert result.data_origin == str(data)
