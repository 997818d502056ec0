"""`inferopt deploy kserve`: the files it writes, what it prints, and one-line errors with
exit code 2 for what a user can fix."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from inferopt.cli import main

SCHEMAS = Path(__file__).resolve().parents[1] / "data" / "k8s-schemas"
IMAGE = "registry.example.com/team/inferopt:0.1.0"
FILES = [
    "Dockerfile",
    "clusterservingruntime.yaml",
    "inferenceservice.yaml",
    "kustomization.yaml",
    "rayservice.yaml",
]


def make_artifact(folder: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True)
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "inferopt.json").write_text(json.dumps({"schema_version": 1}))
    return folder


def deploy(*args: str) -> int:
    return main(["deploy", "kserve", *args])


def test_writes_the_manifests_and_says_what_to_run_next(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    artifact = make_artifact(tmp_path / "mnist")
    out = tmp_path / "deploy"
    code = deploy(str(artifact), "--image", IMAGE, "--out", str(out), "--ray-version", "2.60.0")
    printed = capsys.readouterr().out
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == FILES
    isvc = yaml.safe_load((out / "inferenceservice.yaml").read_text())
    assert isvc["metadata"]["name"] == "mnist"
    assert f"{artifact}/model.onnx -> STORAGE/mnist/model.onnx" in printed
    assert f"pip wheel --no-deps -w {out}/wheels" in printed
    assert f"docker build -t {IMAGE} {out}" in printed
    assert f"kubectl kustomize {out} | kubectl apply -f -" in printed


def test_flags_reach_the_manifests(tmp_path: Path) -> None:
    artifact = make_artifact(tmp_path / "mnist")
    wheel = tmp_path / "inferopt-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK")
    out = tmp_path / "deploy"
    argv = [str(artifact), "--image", IMAGE, "--out", str(out), "--ray-version", "2.60.0"]
    argv += ["--name", "digits", "--replicas", "auto", "--max-replicas", "6", "--cpus", "2"]
    argv += ["--memory", "4Gi", "--claim", "team-models", "--repository", "/data/repo"]
    assert deploy(*argv, "--wheel", str(wheel)) == 0
    ray = yaml.safe_load((out / "rayservice.yaml").read_text())
    serve = yaml.safe_load(ray["spec"]["serveConfigV2"])
    assert ray["metadata"]["name"] == "digits"
    assert serve["applications"][0]["args"]["repository"] == "/data/repo"
    deployment = serve["applications"][0]["deployments"][0]
    assert deployment["autoscaling_config"]["max_replicas"] == 6
    assert deployment["ray_actor_options"] == {"num_cpus": 2.0}
    worker = ray["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    pod = worker["template"]["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "team-models"
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"}
    isvc = yaml.safe_load((out / "inferenceservice.yaml").read_text())
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "pvc://team-models/"
    assert (out / "wheels" / wheel.name).is_file()


def test_check_validates_against_the_crds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    artifact = make_artifact(tmp_path / "mnist")
    argv = [str(artifact), "--image", IMAGE, "--out", str(tmp_path / "d"), "--bake"]
    assert deploy(*argv, "--ray-version", "2.60.0", "--check", str(SCHEMAS)) == 0
    assert "rayservice.yaml, kustomization.yaml: valid (CRDs from" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("setup", "extra", "message"),
    [
        (lambda d: d / "missing", [], "missing: no such file or folder"),
        (lambda d: d.joinpath("empty").mkdir() or d / "empty", [], "neither an inferopt"),
        (lambda d: make_artifact(d / "m"), ["--image", "Team/Image"], "not a valid image"),
        (lambda d: make_artifact(d / "m"), ["--memory", "lots"], "quantity"),
        (lambda d: make_artifact(d / "m"), ["--repository", "rel/path"], "absolute path"),
        (lambda d: make_artifact(d / "m"), ["--max-replicas", "0"], "max_replicas"),
        (lambda d: make_artifact(d / "m"), ["--check", "/nonexistent"], "no such folder"),
        (lambda d: make_artifact(d / "m"), ["--wheel", "/x/inferopt-1-py3-none-any.whl"], "wheel"),
        (lambda d: make_artifact(d / "9"), [], "give one with --name"),
    ],
)
def test_a_fixable_mistake_is_one_line_and_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    setup: object,
    extra: list[str],
    message: str,
) -> None:
    source = setup(tmp_path)  # type: ignore[operator]
    image = [] if "--image" in extra else ["--image", IMAGE]
    argv = [str(source), *image, "--out", str(tmp_path / "out"), "--ray-version", "2.60.0"]
    assert deploy(*argv, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("inferopt: error: ") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_an_out_folder_in_use_needs_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    artifact = make_artifact(tmp_path / "mnist")
    out = tmp_path / "deploy"
    out.mkdir()
    (out / "old.yaml").write_text("kind: Old\n")
    argv = [str(artifact), "--image", IMAGE, "--out", str(out), "--ray-version", "2.60.0"]
    assert deploy(*argv) == 2
    assert "give --force" in capsys.readouterr().err
    assert deploy(*argv, "--force") == 0
    assert sorted(p.name for p in out.iterdir()) == FILES


@pytest.mark.parametrize(
    "argv",
    [
        ["deploy"],
        ["deploy", "kserve", "x", "--out", "o"],  # no --image
        ["deploy", "kserve", "x", "--image", "a:1", "--out", "o", "--bake", "--repository", "/m"],
        ["deploy", "kserve", "x", "--image", "a:1", "--out", "o", "--replicas", "some"],
    ],
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_check_failing_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    crds = tmp_path / "crds"  # KServe's CRDs only: the RayService has no schema here
    crds.mkdir()
    for name in (
        "serving.kserve.io_clusterservingruntimes.yaml",
        "serving.kserve.io_inferenceservices.yaml",
    ):
        (crds / name).write_bytes((SCHEMAS / name).read_bytes())
    artifact = make_artifact(tmp_path / "mnist")
    out = tmp_path / "d"
    argv = [str(artifact), "--image", IMAGE, "--out", str(out), "--ray-version", "2.60.0"]
    assert deploy(*argv, "--check", str(crds)) == 2
    err = capsys.readouterr().err
    assert "rayservice.yaml: no schema for apiVersion ray.io/v1 kind RayService" in err
    assert not out.exists()
