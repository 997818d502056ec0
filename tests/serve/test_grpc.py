"""The real server over gRPC: tritonclient's gRPC client (raw contents), our own stub with
typed contents, error codes, and the other RPCs."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from google.protobuf.json_format import ParseDict
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from inferopt.model import load_onnx
from inferopt.serve import BackgroundServer
from inferopt.serve.proto import grpc_service_pb2 as pb
from inferopt.serve.proto import grpc_service_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def client(zoo_server: BackgroundServer) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(zoo_server.grpc_url)


@pytest.fixture(scope="module")
def stub(zoo_server: BackgroundServer) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(zoo_server.grpc_url))


def test_health_metadata_index_and_statistics(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("minilm")
    assert "statistics" in client.get_server_metadata().extensions
    meta = client.get_model_metadata("minilm")
    assert next((t.name, t.datatype, list(t.shape)) for t in meta.inputs) == (
        "input_ids",
        "INT64",
        [-1, -1],
    )
    names = {m.name for m in client.get_model_repository_index().models}
    assert names == {"digits-cnn", "minilm"}
    stats = client.get_inference_statistics("digits-cnn").model_stats[0]
    assert stats.name == "digits-cnn" and stats.version == "1"


def test_digits_raw_contents_match_the_model(
    client: triton.InferenceServerClient, zoo_repo: Path
) -> None:
    digits = load_onnx(zoo_repo / "digits-cnn" / "1" / "model.onnx")
    x = np.random.default_rng(5).random((4, 1, 8, 8), dtype=np.float32)
    tensor = triton.InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(
        "digits-cnn",
        [tensor],
        request_id="g1",
        outputs=[triton.InferRequestedOutput("logits")],
        client_timeout=60,
    )
    np.testing.assert_allclose(
        result.as_numpy("logits"), digits.run({"image": x})["logits"], rtol=1e-5, atol=1e-5
    )
    assert result.get_response().id == "g1"


def test_minilm_raw_contents_match_the_model(
    client: triton.InferenceServerClient, zoo_repo: Path
) -> None:
    minilm = load_onnx(zoo_repo / "minilm" / "1" / "model.onnx")
    ids = np.random.default_rng(6).integers(1000, 2000, size=(2, 11), dtype=np.int64)
    feeds = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),
    }
    tensors = []
    for name, values in feeds.items():
        tensor = triton.InferInput(name, list(values.shape), "INT64")
        tensor.set_data_from_numpy(values)
        tensors.append(tensor)
    got = client.infer("minilm", tensors, client_timeout=60).as_numpy("sentence_embedding")
    np.testing.assert_allclose(got, minilm.run(feeds)["sentence_embedding"], rtol=1e-4, atol=1e-4)


def test_typed_contents_are_accepted(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = pb.ModelInferRequest(model_name="digits-cnn")
    tensor = request.inputs.add(name="image", datatype="FP32", shape=[1, 1, 8, 8])
    tensor.contents.fp32_contents.extend([0.25] * 64)
    response = stub.ModelInfer(request, timeout=30)
    assert list(response.outputs[0].shape) == [1, 10]
    assert len(response.raw_output_contents[0]) == 40


def test_bad_requests_get_the_matching_code(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    cases = []
    wrong_count = pb.ModelInferRequest(model_name="digits-cnn")
    wrong_count.inputs.add(name="image", datatype="FP32", shape=[1, 1, 8, 8])
    wrong_count.raw_input_contents.append(b"\0" * 100)
    cases.append((wrong_count, grpc.StatusCode.INVALID_ARGUMENT, "input 'image'"))
    unpaired = pb.ModelInferRequest(model_name="digits-cnn")
    unpaired.raw_input_contents.append(b"\0" * 256)
    cases.append((unpaired, grpc.StatusCode.INVALID_ARGUMENT, "1 buffers for 0 inputs"))
    fp16_typed = pb.ModelInferRequest(model_name="digits-cnn")
    fp16_typed.inputs.add(name="image", datatype="FP16", shape=[1])
    cases.append((fp16_typed, grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents"))
    unknown = pb.ModelInferRequest(model_name="nope")
    cases.append((unknown, grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"))
    for request, code, message in cases:
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelInfer(request, timeout=30)
        assert error.value.code() == code
        assert message in error.value.details()


def test_management_is_refused_and_unimplemented_rpcs_say_so(
    client: triton.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException, match="PERMISSION_DENIED"):
        client.load_model("digits-cnn")
    with pytest.raises(InferenceServerException, match="UNIMPLEMENTED"):
        client.get_system_shared_memory_status()


@pytest.mark.parametrize("model", ["digits-cnn", "minilm"])
def test_model_config_is_tritons_message_and_the_http_view(
    client: triton.InferenceServerClient, zoo_server: BackgroundServer, model: str
) -> None:
    # tritonclient decodes it with Triton's own model_config.proto: field numbers must match
    config = client.get_model_config(model).config
    http = httpx.get(f"http://{zoo_server.http_url}/v2/models/{model}/config").json()
    assert http.pop("inferopt")  # our settings: no field for them in Triton's message
    assert config == ParseDict(http, model_config_pb2.ModelConfig())
    assert config.max_batch_size == http["max_batch_size"] > 0
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    first = config.input[0]
    expected = ("input_ids", model_config_pb2.TYPE_INT64, [-1])
    if model == "digits-cnn":
        expected = ("image", model_config_pb2.TYPE_FP32, [1, 8, 8])
    assert (first.name, first.data_type, list(first.dims)) == expected
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_model_config("nope")
