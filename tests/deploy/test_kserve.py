"""`inferopt.deploy`: the KServe and KubeRay manifests validate, strictly, against the real
CRDs (vendored in tests/data/k8s-schemas) and Ray's own Serve schema; a misspelt field at any
depth fails the same check; the pieces agree with each other (ports, paths, claim, image,
Ray version) and with the files written."""

from __future__ import annotations

import argparse
import copy
import filecmp
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper
from ray.serve.schema import ServeDeploySchema

from inferopt.commands import serve as serve_command
from inferopt.deploy import DeployError, KServeConfig, inspect, manifests, render, write
from inferopt.deploy.dockerfile import dockerfile
from inferopt.deploy.schema import CrdSchemas, ManifestError, check, close, serve_config_problems
from inferopt.serve.config import ModelConfig, ServerConfig
from inferopt.serve.layout import Layout
from inferopt.serve.rayconfig import RaySettings, repository_revision, serve_config
from inferopt.serve.rayproxy import CALLBACK, CALLBACK_ENV

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = REPO_ROOT / "tests" / "data" / "k8s-schemas"
SHARED_SCHEMAS = REPO_ROOT.parent / "shared" / "k8s-schemas"
IMAGE = "registry.example.com/team/inferopt:0.1.0"
RAY = "2.60.0"
RUNTIME, ISVC, RAYSVC = "clusterservingruntime.yaml", "inferenceservice.yaml", "rayservice.yaml"


@pytest.fixture(scope="module")
def schemas() -> CrdSchemas:
    return CrdSchemas.load(SCHEMAS)


def save_model(path: Path, *, external: bool = False) -> Path:
    weight = numpy_helper.from_array(np.ones(2, "float32"), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        onnx.save_model(
            model, str(path), save_as_external_data=True, location="w.bin", size_threshold=0
        )
    else:
        onnx.save(model, str(path))
    return path


def make_artifact(folder: Path, *, external: bool = False, toml: bool = False) -> Path:
    save_model(folder / "model.onnx", external=external)
    (folder / "inferopt.json").write_text(json.dumps({"schema_version": 1, "kind": "search"}))
    (folder / "report.md").write_text("# report\n")
    if toml:
        (folder / "serve.toml").write_text("max_batch_size = 8\n")
    return folder


def make_repository(root: Path) -> Path:
    save_model(root / "resnet" / "1" / "model.onnx")
    save_model(root / "resnet" / "2" / "model.onnx")
    make_artifact(root / "bert_small")
    save_model(root / "plain.onnx", external=True)
    (root / "notes.txt").write_text("not a model\n")
    return root


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    return make_artifact(tmp_path / "digits_cnn", external=True, toml=True)


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    return make_repository(tmp_path / "models")


def config(**changes: Any) -> KServeConfig:
    return KServeConfig(image=IMAGE, ray_version=RAY, **changes)


def resources(found: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: m for name, m in found.items() if name != "kustomization.yaml"}


VARIANTS = {
    "fixed": {},
    "autoscaling": {"ray": RaySettings(replicas=None, min_replicas=0, max_replicas=6)},
    "fractional-cpus": {"ray": RaySettings(replicas=3, cpus_per_replica=0.5), "memory": "512Mi"},
    "baked": {"bake": True},
    "own-path-and-claim": {"repository": "/data/models", "claim": "shared-models"},
}


# -- every manifest validates -------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", ["artifact", "repository"])
def test_every_manifest_validates_against_its_crd_and_ray(
    schemas: CrdSchemas, artifact: Path, repository: Path, kind: str, variant: str
) -> None:
    source = artifact if kind == "artifact" else repository
    found = resources(manifests(source, config(**VARIANTS[variant])))
    assert [m["kind"] for m in found.values()] == [
        "ClusterServingRuntime",
        "InferenceService",
        "RayService",
    ]
    for manifest in found.values():
        assert schemas.problems(manifest) == []
    # serveConfigV2 against Ray's ServeDeploySchema as well, and the kustomization's resources
    check(manifests(source, config(**VARIANTS[variant])), schemas)


def test_the_serve_config_is_rayconfigs_for_the_repository_path(artifact: Path) -> None:
    settings = RaySettings(replicas=None, min_replicas=1, max_replicas=3, cpus_per_replica=2)
    model = ModelConfig(max_batch_size=8)
    ray = manifests(artifact, config(ray=settings, model=model, repository="/srv/repo"))[RAYSVC]
    serve = yaml.safe_load(ray["spec"]["serveConfigV2"])
    server = ServerConfig(host="0.0.0.0", http_port=8000, grpc_port=9000)
    revision = repository_revision(artifact)  # new files: a new config, which KubeRay rolls out
    assert serve == serve_config("/srv/repo", model, server, settings, None, revision)
    env = ray["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    assert {"name": CALLBACK_ENV, "value": CALLBACK} in env["containers"][0]["env"]
    assert serve_config_problems(serve) == []
    parsed = ServeDeploySchema.model_validate(serve)
    assert parsed.applications[0].import_path == "inferopt.serve.rayserve:build"


# -- typos fail the same check ------------------------------------------------------------------


def _at(manifest: dict[str, Any], path: str) -> Any:
    node: Any = manifest
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else node[part]
    return node


def misspell(manifest: dict[str, Any], path: str, wrong: str) -> dict[str, Any]:
    """A copy of `manifest` with the key at dotted `path` renamed to `wrong`."""
    broken = copy.deepcopy(manifest)
    parent, _, key = path.rpartition(".")
    node = _at(broken, parent) if parent else broken
    node[wrong] = node.pop(key)
    return broken


TYPOS = [
    (ISVC, "spec.predictor.model.modelFormat", "modelFromat"),
    (ISVC, "spec.predictor.model.modelFormat.name", "nmae"),
    (ISVC, "spec.predictor", "predictr"),
    (ISVC, "spec", "specs"),
    (RUNTIME, "spec.supportedModelFormats", "supportedModelFormat"),
    (RUNTIME, "spec.containers.0.readinessProbe.httpGet.port", "prot"),
    (RUNTIME, "spec.containers.0.securityContext.capabilities.drop", "dorp"),
    (RUNTIME, "spec.containers.0.ports.1.containerPort", "containerport"),
    (RAYSVC, "spec.serveConfigV2", "serveConfig"),
    (RAYSVC, "spec.rayClusterConfig.workerGroupSpecs.0.rayStartParams", "rayStartParam"),
    (
        RAYSVC,
        "spec.rayClusterConfig.headGroupSpec.template.spec.containers.0.volumeMounts.0.mountPath",
        "mountpath",
    ),
    (
        RAYSVC,
        "spec.rayClusterConfig.workerGroupSpecs.0.template.spec.volumes.0"
        ".persistentVolumeClaim.claimName",
        "claimname",
    ),
]


@pytest.mark.parametrize(("file", "path", "wrong"), TYPOS, ids=[t[2] for t in TYPOS])
def test_a_misspelt_field_at_any_depth_fails(
    schemas: CrdSchemas, artifact: Path, file: str, path: str, wrong: str
) -> None:
    found = resources(manifests(artifact, config()))
    broken = misspell(found[file], path, wrong)
    problems = schemas.problems(broken)
    assert any(repr(wrong) in p and "Additional properties" in p for p in problems), problems
    with pytest.raises(ManifestError, match=wrong):
        check({**found, file: broken}, schemas)


SERVE_TYPOS = [
    ("applications.0.deployments.0.max_ongoing_requests", "max_ongoing_requestz"),
    ("applications.0.deployments.0.ray_actor_options.num_cpus", "num_cpu"),
    ("applications.0.deployments.0.backpressure_config.status_code", "status"),
    ("applications.0.route_prefix", "route_prefx"),
    ("http_options.port", "prot"),
    ("grpc_options.grpc_servicer_functions", "grpc_servicer_function"),
    ("proxy_location", "proxy_locaton"),
]


@pytest.mark.parametrize(("path", "wrong"), SERVE_TYPOS, ids=[t[1] for t in SERVE_TYPOS])
def test_a_misspelt_key_in_serve_config_v2_fails(
    schemas: CrdSchemas, artifact: Path, path: str, wrong: str
) -> None:
    found = resources(manifests(artifact, config()))
    serve = misspell(yaml.safe_load(found[RAYSVC]["spec"]["serveConfigV2"]), path, wrong)
    assert any(wrong in p for p in serve_config_problems(serve))
    broken = copy.deepcopy(found[RAYSVC])
    broken["spec"]["serveConfigV2"] = yaml.safe_dump(serve)
    assert schemas.problems(broken) == []  # a string to the CRD: only Ray's schema sees inside
    with pytest.raises(ManifestError, match=wrong):
        check({RAYSVC: broken}, schemas)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda k: k.update(resource=k.pop("resources")), "resource: unknown field"),
        (lambda k: k["resources"].append("missing.yaml"), "'missing.yaml' is not a file here"),
        (lambda k: k.update(apiVersion="v1"), "not kustomize's v1beta1"),
    ],
)
def test_a_broken_kustomization_fails(
    schemas: CrdSchemas, artifact: Path, change: Any, expected: str
) -> None:
    found = manifests(artifact, config())
    change(found["kustomization.yaml"])
    with pytest.raises(ManifestError, match=re.escape(expected)):
        check(found, schemas)


def test_a_value_ray_refuses_fails(schemas: CrdSchemas, artifact: Path) -> None:
    ray = manifests(artifact, config())[RAYSVC]
    serve = yaml.safe_load(ray["spec"]["serveConfigV2"])
    serve["applications"][0]["deployments"][0]["max_ongoing_requests"] = "many"
    ray["spec"]["serveConfigV2"] = yaml.safe_dump(serve)
    with pytest.raises(ManifestError, match="max_ongoing_requests"):
        check({RAYSVC: ray}, schemas)


@pytest.mark.parametrize(
    ("file", "path", "value", "expected"),
    [
        (ISVC, "spec.predictor.model.protocolVersion", 2, "is not of type 'string'"),
        (RUNTIME, "spec.containers.0.ports.0.containerPort", "8080", "not of type 'integer'"),
        (RUNTIME, "spec.containers.0.resources.limits.memory", "2 GB", "does not match"),
        (RAYSVC, "spec.rayClusterConfig.headGroupSpec.rayStartParams.num-cpus", 0, "string"),
        (RAYSVC, "spec.rayClusterConfig.workerGroupSpecs.0.replicas", 1.5, "integer"),
    ],
)
def test_a_value_of_the_wrong_type_fails(
    schemas: CrdSchemas, artifact: Path, file: str, path: str, value: Any, expected: str
) -> None:
    broken = copy.deepcopy(manifests(artifact, config())[file])
    parent, _, key = path.rpartition(".")
    _at(broken, parent)[key] = value
    assert any(expected in p for p in schemas.problems(broken)), schemas.problems(broken)


@pytest.mark.parametrize(
    ("file", "change", "expected"),
    [
        (ISVC, {"name": "Digits_CNN"}, "metadata.name"),
        (ISVC, {"name": "9-lives"}, "metadata.name"),  # a DNS-1123 label, not DNS-1035
        (RAYSVC, {"name": "r" * 48}, "metadata.name"),
        (RUNTIME, {"namespace": "default"}, "cluster-scoped"),
        (ISVC, {"namespace": "Team_A"}, "metadata.namespace"),
        (ISVC, {"nmae": "x"}, "metadata.nmae: unknown field"),
        (ISVC, {"labels": {"app": 3}}, "not a string"),
        (ISVC, {"labels": {"app": "has space"}}, "not a valid label value"),
    ],
)
def test_metadata_is_checked_by_hand(
    schemas: CrdSchemas, artifact: Path, file: str, change: dict[str, Any], expected: str
) -> None:
    broken = copy.deepcopy(manifests(artifact, config())[file])
    broken["metadata"].update(change)
    assert any(expected in p for p in schemas.problems(broken)), schemas.problems(broken)


def test_closing_leaves_maps_and_preserved_fields_open(schemas: CrdSchemas, artifact: Path) -> None:
    found = manifests(artifact, config())
    isvc = copy.deepcopy(found[ISVC])
    isvc["status"] = {"anything": {"the": "controller writes"}}  # x-kubernetes-preserve-unknown
    isvc["metadata"]["annotations"]["example.com/any-key"] = "any value"
    ray = copy.deepcopy(found[RAYSVC])
    ray["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["any-param"] = "1"
    assert schemas.problems(isvc) == [] and schemas.problems(ray) == []
    closed = close({"type": "object", "properties": {"a": {"type": "object", "properties": {}}}})
    assert closed["additionalProperties"] is False
    assert closed["properties"]["a"]["additionalProperties"] is False


def test_an_unknown_kind_has_no_schema(schemas: CrdSchemas) -> None:
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
    assert "no schema for apiVersion v1 kind ConfigMap" in schemas.problems(manifest)[0]


def test_the_vendored_crds_are_the_shared_ones_unchanged() -> None:
    if not SHARED_SCHEMAS.is_dir():
        pytest.skip("no ../shared/k8s-schemas beside this checkout")
    names = sorted(p.name for p in SHARED_SCHEMAS.iterdir())
    assert sorted(p.name for p in SCHEMAS.iterdir()) == names
    same, mismatch, errors = filecmp.cmpfiles(SHARED_SCHEMAS, SCHEMAS, names, shallow=False)
    assert (sorted(same), mismatch, errors) == (names, [], [])


# -- the pieces agree ---------------------------------------------------------------------------


def test_kserve_runtime_follows_kserves_v2_conventions(artifact: Path) -> None:
    runtime = manifests(artifact, config(ray=RaySettings(cpus_per_replica=2)))[RUNTIME]
    spec = runtime["spec"]
    assert runtime["metadata"]["name"] == "kserve-inferopt"
    assert spec["supportedModelFormats"][0] | {"version": None} == {
        "name": "onnx",
        "version": None,
        "autoSelect": True,
    }
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    (container,) = spec["containers"]
    assert container["image"] == IMAGE and container["command"] == ["inferopt", "serve"]
    args = container["args"]
    assert args[0] == "/mnt/models"
    flags = dict(zip(args[1::2], args[2::2], strict=True))
    assert flags == {
        "--host": "0.0.0.0",
        "--http-port": "8080",
        "--grpc-port": "8081",
        "--intra-op-threads": "2",  # the CPU limit, not the node's cores
    }
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [
        ("http1", 8080),
        ("h2c", 8081),
    ]
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "2Gi"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert container["securityContext"]["runAsNonRoot"] is True


def test_inference_service_uses_the_runtime_and_the_rays_claim(artifact: Path) -> None:
    found = manifests(artifact, config())
    model = found[ISVC]["spec"]["predictor"]["model"]
    assert model == {
        "modelFormat": {"name": "onnx"},
        "protocolVersion": "v2",
        "runtime": "kserve-inferopt",
        "storageUri": "pvc://digits-cnn-models/",
    }
    assert found[ISVC]["metadata"]["name"] == "digits-cnn"
    worker = found[RAYSVC]["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    claim = worker["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]
    assert claim == {"claimName": "digits-cnn-models", "readOnly": True}


def _ray_pods(ray: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = ray["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"]["spec"]] + [
        group["template"]["spec"] for group in cluster["workerGroupSpecs"]
    ]


@pytest.mark.parametrize("variant", VARIANTS)
def test_ray_pods_serve_the_configs_ports_and_read_its_repository(
    artifact: Path, variant: str
) -> None:
    settings = config(**VARIANTS[variant])
    ray = manifests(artifact, settings)[RAYSVC]
    serve = yaml.safe_load(ray["spec"]["serveConfigV2"])
    repository = serve["applications"][0]["args"]["repository"]
    assert repository == ("/models" if settings.bake else settings.repository or "/mnt/models")
    assert ray["spec"]["rayClusterConfig"]["rayVersion"] == RAY
    for pod in _ray_pods(ray):
        (container,) = pod["containers"]
        assert container["image"] == IMAGE
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["serve"] == serve["http_options"]["port"]
        assert ports["serve-grpc"] == serve["grpc_options"]["port"]
        if settings.bake:
            assert "volumes" not in pod and "volumeMounts" not in container
        else:
            (mount,) = container["volumeMounts"]
            (volume,) = pod["volumes"]
            assert (mount["mountPath"], mount["readOnly"]) == (repository, True)
            assert mount["name"] == volume["name"]


@pytest.mark.parametrize(
    ("settings", "pods", "autoscaling"),
    [
        (RaySettings(replicas=3), (3, 3, 3), False),
        (RaySettings(replicas=3, cpus_per_replica=0.5), (2, 2, 2), False),
        (RaySettings(replicas=2, cpus_per_replica=1.5), (2, 2, 2), False),
        (RaySettings(replicas=None, min_replicas=0, max_replicas=5), (0, 0, 5), True),
    ],
)
def test_worker_pods_hold_the_replicas(
    artifact: Path, settings: RaySettings, pods: tuple[int, int, int], autoscaling: bool
) -> None:
    cluster = manifests(artifact, config(ray=settings))[RAYSVC]["spec"]["rayClusterConfig"]
    (group,) = cluster["workerGroupSpecs"]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == pods
    assert cluster.get("enableInTreeAutoscaling", False) is autoscaling
    assert cluster["headGroupSpec"]["rayStartParams"] == {"num-cpus": "0"}
    cpus = group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]
    assert group["rayStartParams"]["num-cpus"] == cpus


# -- what the source gives ----------------------------------------------------------------------


def test_an_artifact_is_stored_under_its_model_name(artifact: Path) -> None:
    source = inspect(artifact)
    assert (source.kind, source.name, source.models) == ("artifact", "digits-cnn", ("digits_cnn",))
    assert [(local.name, dest) for local, dest in source.copies] == [
        ("model.onnx", "digits_cnn/model.onnx"),
        ("w.bin", "digits_cnn/w.bin"),  # its external data
        ("serve.toml", "digits_cnn/serve.toml"),
    ]
    renamed = inspect(artifact, "Mnist.v2")
    assert (renamed.name, renamed.models) == ("mnist-v2", ("Mnist.v2",))


def test_a_repository_is_stored_as_it_is(repository: Path) -> None:
    source = inspect(repository)
    assert (source.kind, source.name) == ("repository", "models")
    assert source.models == ("bert_small", "plain", "resnet")
    assert sorted(dest for _, dest in source.copies) == [
        "bert_small",
        "plain.onnx",
        "resnet",
        "w.bin",
    ]
    assert inspect(repository, "prod-models").name == "prod-models"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing", "no such file or folder"),
        (lambda d: save_model(d / "m.onnx"), "not a folder"),
        (lambda d: d, "neither an inferopt artifact"),
        (lambda d: (d / "inferopt.json").write_text("{}") and d, "without model.onnx"),
        (lambda d: make_artifact(d / "123"), "no Kubernetes name follows"),
        (lambda d: make_artifact(d / ("x" * 48)), "no Kubernetes name follows"),
    ],
)
def test_what_cannot_be_deployed_is_refused(tmp_path: Path, make: Any, message: str) -> None:
    with pytest.raises(DeployError, match=message):
        inspect(make(tmp_path))


def test_a_broken_model_file_is_refused(tmp_path: Path) -> None:
    folder = make_artifact(tmp_path / "a")
    (folder / "model.onnx").write_bytes(b"\x00not protobuf")
    with pytest.raises(DeployError, match="not a readable ONNX model"):
        inspect(folder)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"image": "Registry/Team:1"}, "not a valid image reference"),
        ({"image": "team/inferopt:"}, "not a valid image reference"),
        ({"image": "team inferopt"}, "not a valid image reference"),
        ({"image": "a:b:c"}, "not a valid image reference"),
        ({"repository": "models"}, "absolute path"),
        ({"bake": True, "repository": "/mnt/models"}, "with bake"),
        ({"claim": "Models_PVC"}, "PersistentVolumeClaim"),
        ({"memory": "2 GB"}, "quantity"),
        ({"ray_version": "latest"}, "ray_version"),
        ({"wheel": Path("dist/other-1.0-py3-none-any.whl")}, "inferopt wheel"),
        ({"name": ""}, "must not be empty"),
    ],
)
def test_config_refuses_bad_values(changes: dict[str, Any], message: str) -> None:
    values: dict[str, Any] = {"image": IMAGE, **changes}
    with pytest.raises(ValueError, match=message):
        KServeConfig(**values)


@pytest.mark.parametrize(
    "image",
    ["inferopt", "team/inferopt:0.1", "localhost:5000/a/b_c:v1.2-rc", f"r.io/x@sha256:{'a' * 64}"],
)
def test_config_accepts_image_references(image: str) -> None:
    assert KServeConfig(image=image).image == image


# -- the files written --------------------------------------------------------------------------


def test_write_renders_commented_yaml_that_loads_back(artifact: Path, tmp_path: Path) -> None:
    out = tmp_path / "deploy"
    settings = config()
    written = write(artifact, out, settings)
    assert [p.name for p in written] == [RUNTIME, ISVC, RAYSVC, "kustomization.yaml", "Dockerfile"]
    found = manifests(artifact, settings)
    for name, manifest in found.items():
        text = (out / name).read_text()
        assert text.startswith("# ")
        assert yaml.safe_load(text) == manifest
        assert "&id" not in text  # no YAML anchors: each pod's ports are its own
    isvc = (out / ISVC).read_text()
    (line,) = [ln for ln in isvc.splitlines() if "storageUri:" in ln]
    assert "# an example: replace it" in line
    assert "digits_cnn/model.onnx -> STORAGE/digits_cnn/model.onnx" in isvc
    assert "serveConfigV2: |" in (out / RAYSVC).read_text()
    for resource in found["kustomization.yaml"]["resources"]:
        assert (out / resource).is_file()
    assert not list(tmp_path.glob(".deploy.*"))  # no staging left


def test_write_refuses_a_folder_in_use_unless_forced(artifact: Path, tmp_path: Path) -> None:
    out = tmp_path / "deploy"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(DeployError, match="not empty; give --force"):
        write(artifact, out, config())
    assert (out / "mine.txt").is_file()
    write(artifact, out, config(), force=True)
    assert not (out / "mine.txt").exists() and (out / RUNTIME).is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(DeployError, match="not a folder"):
        write(artifact, tmp_path / "file", config())


def test_bake_puts_a_servable_repository_in_the_build_context(
    repository: Path, tmp_path: Path
) -> None:
    wheel = tmp_path / "inferopt-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK")
    out = tmp_path / "deploy"
    write(repository, out, config(bake=True, wheel=wheel))
    baked = Layout(out / "models")
    assert baked.names() == ["bert_small", "plain", "resnet"]
    assert baked.find("resnet").version == "2"
    assert (out / "models" / "w.bin").is_file()  # plain.onnx's external data
    assert (out / "wheels" / wheel.name).read_bytes() == b"PK"
    # Every COPY source of the Dockerfile is in the build context.
    for line in (out / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            assert (out / line.split()[1]).exists(), line


def test_a_missing_wheel_is_refused(artifact: Path, tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="no such wheel"):
        write(
            artifact, tmp_path / "out", config(wheel=tmp_path / "inferopt-0.1.0-py3-none-any.whl")
        )


DOCKER_INSTRUCTIONS = {
    "FROM",
    "ENV",
    "RUN",
    "COPY",
    "USER",
    "WORKDIR",
    "EXPOSE",
    "ENTRYPOINT",
    "CMD",
}


@pytest.mark.parametrize("bake", [False, True])
def test_dockerfile_installs_the_wheel_and_runs_inferopt_serve_as_a_user(
    artifact: Path, bake: bool
) -> None:
    settings = config(bake=bake)
    text = dockerfile(inspect(artifact), settings)
    assert text == render(inspect(artifact), settings)["Dockerfile"]
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    instructions = [ln.split()[0] for ln in lines if not ln.startswith(" ")]
    assert set(instructions) <= DOCKER_INSTRUCTIONS
    assert instructions[0] == "FROM" and lines[0] == "FROM python:3.11-slim"
    assert 'pip install "/tmp/wheels/inferopt-0.1.0-py3-none-any.whl[serve,ray]"' in text
    assert f'"ray[serve]=={RAY}"' in text  # the RayService's rayVersion
    assert "install -y --no-install-recommends wget" in text  # KubeRay's worker probe
    (user,) = [ln for ln in lines if ln.startswith("USER ")]
    assert user == "USER 1000:1000"
    assert instructions.index("USER") > max(i for i, w in enumerate(instructions) if w == "RUN")
    (expose,) = [ln for ln in lines if ln.startswith("EXPOSE ")]
    assert expose.split()[1:] == ["8080", "8081", "8000", "9000"]
    assert 'ENTRYPOINT ["inferopt", "serve"]' in lines
    (cmd,) = [ln for ln in lines if ln.startswith("CMD ")]
    assert json.loads(cmd[4:])[0] == ("/models" if bake else "/mnt/models")
    assert ("COPY models/ /models/" in lines) is bake


def test_runtime_args_are_flags_inferopt_serve_parses_to_the_same_settings(
    artifact: Path,
) -> None:
    model = ModelConfig(max_batch_size=8, max_queue_delay_ms=2.5, sequence_batching="pad")
    settings = config(model=model, ray=RaySettings(cpus_per_replica=3))
    container = manifests(artifact, settings)[RUNTIME]["spec"]["containers"][0]
    parser = argparse.ArgumentParser()
    serve_command.add_arguments(parser)
    args = parser.parse_args(container["args"])
    assert args.repository == "/mnt/models"
    server = serve_command.server_config(args)
    assert (server.host, server.http_port, server.grpc_port) == ("0.0.0.0", 8080, 8081)
    assert serve_command.model_config(args) == replace(model, intra_op_threads=3)
    # What an InferenceService appends wins, as KServe concatenates the two lists.
    later = parser.parse_args([*container["args"], "--max-batch-size", "16"])
    assert serve_command.model_config(later).max_batch_size == 16
