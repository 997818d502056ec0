"""The real server on loopback, through tritonclient's HTTP client (JSON and binary) and raw
HTTP, against digits-cnn and minilm; outputs compared with running the model directly."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import onnx
import orjson
import pytest
import tritonclient.http as triton
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from inferopt.model import Model, load_onnx
from inferopt.serve import BackgroundServer


@pytest.fixture(scope="module")
def digits(zoo_repo: Path) -> Model:
    return load_onnx(zoo_repo / "digits-cnn" / "1" / "model.onnx")


@pytest.fixture(scope="module")
def minilm(zoo_repo: Path) -> Model:
    return load_onnx(zoo_repo / "minilm" / "1" / "model.onnx")


@pytest.fixture(scope="module")
def client(zoo_server: BackgroundServer) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(zoo_server.http_url, concurrency=8)


def images(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, 1, 8, 8), dtype=np.float32)


def image_input(x: np.ndarray, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def text_inputs(ids: np.ndarray, binary: bool = True) -> list[triton.InferInput]:
    tensors = []
    for name, values in (
        ("input_ids", ids),
        ("attention_mask", np.ones_like(ids)),
        ("token_type_ids", np.zeros_like(ids)),
    ):
        tensor = triton.InferInput(name, list(values.shape), "INT64")
        tensor.set_data_from_numpy(values, binary_data=binary)
        tensors.append(tensor)
    return tensors


def direct(model: Model, **feeds: np.ndarray) -> dict[str, np.ndarray]:
    return model.run(feeds)


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits-cnn")
    meta = client.get_server_metadata()
    assert "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("digits-cnn")
    assert model["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert model["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.get_model_config("minilm")["max_batch_size"] == 8
    index = client.get_model_repository_index()
    assert {(m["name"], m["state"]) for m in index} == {
        ("digits-cnn", "READY"),
        ("minilm", "READY"),
    }


@pytest.mark.parametrize("binary", [False, True])
def test_digits_outputs_match_the_model(
    client: triton.InferenceServerClient, digits: Model, binary: bool
) -> None:
    x = images(3, seed=1)
    result = client.infer(
        "digits-cnn",
        [image_input(x, binary)],
        outputs=[triton.InferRequestedOutput("logits", binary_data=binary)],
        request_id="id-7",
    )
    np.testing.assert_allclose(
        result.as_numpy("logits"), direct(digits, image=x)["logits"], rtol=1e-5, atol=1e-5
    )
    assert result.get_response()["id"] == "id-7"


def test_a_request_beyond_the_max_batch_is_split_and_matches(
    client: triton.InferenceServerClient, digits: Model
) -> None:
    x = images(70, seed=2)  # max batch 32: three executions
    result = client.infer("digits-cnn", [image_input(x, True)])
    np.testing.assert_allclose(
        result.as_numpy("logits"), direct(digits, image=x)["logits"], rtol=1e-5, atol=1e-5
    )


def test_concurrent_requests_merge_and_each_gets_its_own_outputs(
    zoo_server: BackgroundServer,
    digits: Model,
    read_metric: Callable[..., float],
    poll: Callable[..., None],
) -> None:
    client = triton.InferenceServerClient(zoo_server.http_url, concurrency=16)
    before = client.get_inference_statistics("digits-cnn")["model_stats"][0]
    # A large request first: while its 64 pieces keep the model busy, the small requests
    # queue up behind it, so they must share batches (whatever the client's speed).
    inputs = [images(2048, seed=99)] + [images(1 + i % 3, seed=100 + i) for i in range(47)]
    pending = [client.async_infer("digits-cnn", [image_input(inputs[0], True)])]
    labels = {"model": "digits-cnn", "version": "1"}
    poll(lambda: read_metric(zoo_server.http_url, "inferopt_pending_requests", **labels) >= 1)
    pending += [client.async_infer("digits-cnn", [image_input(x, True)]) for x in inputs[1:]]
    for x, request in zip(inputs, pending, strict=True):
        got = request.get_result(timeout=120).as_numpy("logits")
        np.testing.assert_allclose(got, direct(digits, image=x)["logits"], rtol=1e-5, atol=1e-5)
    after = client.get_inference_statistics("digits-cnn")["model_stats"][0]
    rows = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert rows == sum(len(x) for x in inputs)
    assert executions < 64 + 47  # some small requests shared a batch
    client.close()


def test_minilm_matches_the_model_at_mixed_sequence_lengths(
    client: triton.InferenceServerClient, minilm: Model
) -> None:
    rng = np.random.default_rng(3)
    batches = [
        rng.integers(1000, 2000, size=(1 + i % 2, length), dtype=np.int64)
        for i, length in enumerate((5, 7, 12, 3, 16, 9))
    ]
    pending = [  # half JSON, half binary
        client.async_infer(
            "minilm",
            text_inputs(ids, binary=i % 2 == 0),
            outputs=[triton.InferRequestedOutput("sentence_embedding", binary_data=i % 2 == 0)],
        )
        for i, ids in enumerate(batches)
    ]
    for ids, request in zip(batches, pending, strict=True):
        got = request.get_result(timeout=120).as_numpy("sentence_embedding")
        want = direct(
            minilm,
            input_ids=ids,
            attention_mask=np.ones_like(ids),
            token_type_ids=np.zeros_like(ids),
        )["sentence_embedding"]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_statistics_and_metrics_count_requests(
    zoo_server: BackgroundServer, read_metric: Callable[..., float]
) -> None:
    url = zoo_server.http_url
    labels = {"model": "digits-cnn", "version": "1"}
    before = read_metric(url, "inferopt_requests_total", outcome="success", **labels)
    body = {
        "inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}]
    }
    assert httpx.post(f"http://{url}/v2/models/digits-cnn/infer", json=body).status_code == 200
    assert read_metric(url, "inferopt_requests_total", outcome="success", **labels) == before + 1
    text = httpx.get(f"http://{url}/metrics").text
    for name in (
        "inferopt_inferences_total",
        "inferopt_executions_total",
        "inferopt_pending_requests",
        "inferopt_queue_seconds_bucket",
        "inferopt_compute_seconds_bucket",
        "inferopt_request_seconds_bucket",
        "inferopt_batch_size_bucket",
    ):
        assert name in text


IMAGE = {"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}
BAD_BODIES = [
    ("{", 400, "malformed JSON"),
    (
        '{"inputs": [{"name": "image", "shape": [1,1,8,8], "datatype": "FLOAT", "data": [1]}]}',
        400,
        "input 'image': unknown datatype 'FLOAT'",
    ),
    (
        '{"inputs": [{"name": "image", "shape": [1,1,8,8], "datatype": "FP32", "data": [1, 2]}]}',
        400,
        "input 'image': shape [1, 1, 8, 8] needs 64 elements, data holds 2",
    ),
    (
        '{"inputs": [{"name": "image", "shape": [1,1,8,8], "datatype": "FP64", "data": '
        + str([0.0] * 64)
        + "}]}",
        400,
        "input 'image': datatype FP64 but the model expects FP32",
    ),
    (
        '{"inputs": [{"name": "image", "shape": [1,64], "datatype": "FP32", "data": '
        + str([0.0] * 64)
        + "}]}",
        400,
        "input 'image': shape [1, 64] has rank 2",
    ),
    (
        '{"inputs": [{"name": "image", "shape": [1,1,4,16], "datatype": "FP32", "data": '
        + str([0.0] * 64)
        + "}]}",
        400,
        "input 'image': dimension 2 is 4 but the model expects 8",
    ),
    ('{"inputs": []}', 400, "'inputs' must be a non-empty list"),
    (
        '{"inputs": [{"name": "pixels", "shape": [1], "datatype": "FP32", "data": [1]}]}',
        400,
        "missing inputs ['image']",
    ),
]


@pytest.mark.parametrize(("raw", "status", "message"), BAD_BODIES)
def test_bad_inputs_are_4xx_naming_the_input(
    zoo_server: BackgroundServer, raw: str, status: int, message: str
) -> None:
    response = httpx.post(
        f"http://{zoo_server.http_url}/v2/models/digits-cnn/infer", content=raw, timeout=30
    )
    assert response.status_code == status
    assert message in response.json()["error"]


def test_extra_input_binary_mismatch_unknown_model_and_limits(zoo_server: BackgroundServer) -> None:
    url = f"http://{zoo_server.http_url}"
    extra = {"inputs": [IMAGE, {"name": "extra", "shape": [1], "datatype": "FP32", "data": [1]}]}
    response = httpx.post(f"{url}/v2/models/digits-cnn/infer", json=extra)
    assert response.status_code == 400 and "unknown inputs ['extra']" in response.json()["error"]
    header = (
        b'{"inputs": [{"name": "image", "shape": [1,1,8,8], "datatype": "FP32", '
        b'"parameters": {"binary_data_size": 256}}]}'
    )
    response = httpx.post(
        f"{url}/v2/models/digits-cnn/infer",
        content=header + b"\0" * 200,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 400 and "input 'image'" in response.json()["error"]
    checks = [
        (f"{url}/v2/models/nope/infer", 404, "unknown model 'nope'"),
        (f"{url}/v2/models/digits-cnn/versions/7/infer", 404, "no version 7"),
        (f"{url}/v2/models/digits-cnn/versions/x/infer", 400, "invalid model version"),
        (f"{url}/v2/models/..%2f..%2fetc/infer", 404, ""),
        (f"{url}/v2/models/a..b/infer", 404, "unknown model"),
    ]
    for target, status, message in checks:
        response = httpx.post(target, json={"inputs": [IMAGE]})
        assert response.status_code == status, target
        assert message in response.json()["error"]
    huge = httpx.post(f"{url}/v2/models/digits-cnn/infer", content=b"0" * (65 * 2**20))
    assert huge.status_code == 413
    good = httpx.post(f"{url}/v2/models/digits-cnn/infer", json={"inputs": [IMAGE]})
    assert good.status_code == 200  # and everyone else is still served


def test_gzip_bodies_are_accepted(zoo_server: BackgroundServer) -> None:
    body = gzip.compress(httpx.Request("POST", "http://x", json={"inputs": [IMAGE]}).content)
    response = httpx.post(
        f"http://{zoo_server.http_url}/v2/models/digits-cnn/infer",
        content=body,
        headers={"Content-Encoding": "gzip"},
    )
    assert response.status_code == 200
    bomb = gzip.compress(b" " * (70 * 2**20))  # inflates past the limit
    response = httpx.post(
        f"http://{zoo_server.http_url}/v2/models/digits-cnn/infer",
        content=bomb,
        headers={"Content-Encoding": "gzip"},
    )
    assert response.status_code == 413


def test_management_api_is_off_by_default(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="management API is off"):
        client.load_model("digits-cnn")
    with pytest.raises(InferenceServerException, match="management API is off"):
        client.unload_model("digits-cnn")


# ---- batch-only tensors ([N]): shown and taken as Triton does, [b, 1] ----


def columns_model() -> onnx.ModelProto:
    """w: string[N] -> Identity -> t; flag: bool[N] -> Not -> nflag."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["t"]), helper.make_node("Not", ["flag"], ["nflag"])],
        "columns",
        [
            helper.make_tensor_value_info("w", TensorProto.STRING, ["N"]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, ["N"]),
        ],
        [
            helper.make_tensor_value_info("t", TensorProto.STRING, ["N"]),
            helper.make_tensor_value_info("nflag", TensorProto.BOOL, ["N"]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def columns_body(shape: list[int], flags: bytes) -> tuple[bytes, dict[str, str]]:
    """A binary request: w = ["yes", "no"], flag = `flags` (raw bytes, one per row)."""
    words = b"".join(len(w).to_bytes(4, "little") + w for w in (b"yes", b"no"))
    header = {
        "inputs": [
            {
                "name": name,
                "shape": shape,
                "datatype": datatype,
                "parameters": {"binary_data_size": len(raw)},
            }
            for name, datatype, raw in (("w", "BYTES", words), ("flag", "BOOL", flags))
        ]
    }
    head = orjson.dumps(header)
    return head + words + flags, {"Inference-Header-Content-Length": str(len(head))}


@pytest.fixture
def columns_url(serve: Callable[..., BackgroundServer], tmp_path: Path) -> str:
    """The models URL of a server with `columns` (batching) and `flat` (max_batch_size 0)."""
    onnx.save(columns_model(), str(tmp_path / "columns.onnx"))
    (tmp_path / "flat" / "1").mkdir(parents=True)
    onnx.save(columns_model(), str(tmp_path / "flat" / "1" / "model.onnx"))
    (tmp_path / "flat" / "serve.toml").write_text("max_batch_size = 0\n")
    return f"http://{serve(tmp_path).http_url}/v2/models"


def test_batch_only_tensors_are_shown_as_triton_shows_them(columns_url: str) -> None:
    config = httpx.get(f"{columns_url}/columns/config").json()
    column = {"dims": [1], "reshape": {"shape": []}}
    assert config["input"] == [
        {"name": "w", "data_type": "TYPE_STRING", **column},
        {"name": "flag", "data_type": "TYPE_BOOL", **column},
    ]
    assert [(o["dims"], o["reshape"]) for o in config["output"]] == [([1], {"shape": []})] * 2
    assert config["max_batch_size"] > 0 and "dynamic_batching" in config
    meta = httpx.get(f"{columns_url}/columns").json()
    assert [t["shape"] for t in meta["inputs"] + meta["outputs"]] == [[-1, 1]] * 4
    # without batching, `dims` are the whole shape, as the model has it
    flat = httpx.get(f"{columns_url}/flat/config").json()
    assert flat["max_batch_size"] == 0 and "dynamic_batching" not in flat
    assert [(t["dims"], "reshape" in t) for t in flat["input"]] == [([-1], False)] * 2


def test_batch_only_inputs_are_taken_as_b_by_1_or_as_the_model_has_them(columns_url: str) -> None:
    url = f"{columns_url}/columns/infer"
    # [b, 1], as advertised: answered as [b, 1]; a nonzero BOOL byte is true, as in C++
    body, headers = columns_body([2, 1], b"\x07\x00")
    outputs = httpx.post(url, content=body, headers=headers).json()["outputs"]
    assert [(o["shape"], o["data"]) for o in outputs] == [
        ([2, 1], ["yes", "no"]),
        ([2, 1], [False, True]),
    ]
    # [b], the model's own shape: answered in the model's shapes
    body, headers = columns_body([2], b"\x01\x00")
    outputs = httpx.post(url, content=body, headers=headers).json()["outputs"]
    assert [(o["shape"], o["data"]) for o in outputs] == [
        ([2], ["yes", "no"]),
        ([2], [False, True]),
    ]
    body, headers = columns_body([1, 2], b"\x01\x00")
    wrong = httpx.post(url, content=body, headers=headers)
    assert wrong.status_code == 400
    assert "input 'w': shape [1, 2], but the model takes [-1, 1]" in wrong.json()["error"]
