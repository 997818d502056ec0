"""The model repository: layouts, settings files, ready-after-warm-up, version swap under
load, failed loads, unload, and the management API's token."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from inferopt import iospec
from inferopt.serve import BackgroundServer, ConfigFile, ModelConfig, ServerConfig
from inferopt.serve.errors import BadRequest, ConfigError, NotFound
from inferopt.serve.layout import Layout

Serve = Callable[..., BackgroundServer]
X = [[1.0, 2.0, 3.0, 4.0]]
TOKEN = "s3cret-token"


def request(url: str, model: str = "m") -> httpx.Response:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": X}]}
    return httpx.post(f"http://{url}/v2/models/{model}/infer", json=body, timeout=60)


def output(response: httpx.Response) -> list[float]:
    assert response.status_code == 200, response.text
    return list(response.json()["outputs"][0]["data"])


def test_layouts_names_and_path_safety(
    tmp_path: Path, build: Callable, save_model: Callable
) -> None:
    save_model(build(1.0), tmp_path / "plain.onnx")
    save_model(build(1.0), tmp_path / "artifact" / "model.onnx")
    save_model(build(1.0), tmp_path / "triton" / "3" / "model.onnx")
    save_model(build(1.0), tmp_path / "triton" / "10" / "model.onnx")
    (tmp_path / "empty").mkdir()
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    save_model(build(1.0), outside / "model.onnx")
    (tmp_path / "escape").symlink_to(outside)
    layout = Layout(tmp_path)
    assert layout.names() == ["artifact", "plain", "triton"]
    assert layout.find("triton").version == "10"
    assert layout.find("plain").folder is None
    for bad in ("..", "../x", "a/b", ".hidden", ""):
        with pytest.raises(BadRequest, match="invalid model name"):
            layout.find(bad)
    with pytest.raises(NotFound):
        layout.find("escape")


def test_settings_layers_and_errors(tmp_path: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text("[defaults]\nmax_batch_size = 8\n[models.m]\ninstances = 2\n")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "serve.toml").write_text("max_batch_size = 4\ninstances = 3\n")
    file = ConfigFile.read(config)
    merged = file.for_model("m", ModelConfig(max_queue_delay_ms=1.0), folder)
    assert (merged.max_batch_size, merged.instances, merged.max_queue_delay_ms) == (4, 2, 1.0)
    assert file.for_model("other", ModelConfig(), None).max_batch_size == 8
    for text, message in (
        ("[defaults]\nmax_batch = 8\n", "unknown model setting 'max_batch'"),
        ("[defaults]\nmax_batch_size = -1\n", "max_batch_size must be >= 0"),
        ("[defaults]\nmax_batch_size = 'big'\n", "cannot be 'big'"),
        ("[server]\n", "unknown tables"),
        ("not toml = = 1", "not valid TOML"),
    ):
        config.write_text(text)
        with pytest.raises(ConfigError, match=message):
            ConfigFile.read(config)


def test_ready_only_after_warm_up(
    serve: Serve,
    tmp_path: Path,
    build: Callable,
    save_model: Callable,
    spin_rate: float,
    poll: Callable,
) -> None:
    model = build(1.0, spin=True)
    spec = iospec.from_onnx(model)
    trips = float(int(spin_rate * 0.3))  # every warm-up run spins ~0.3 s
    iospec.attach(model, spec.with_value_ranges({"spin": (trips, trips)}))
    save_model(model, tmp_path / "slow" / "1" / "model.onnx")
    config = ServerConfig(host="127.0.0.1", http_port=0, grpc_port=0)
    with BackgroundServer(tmp_path, config, ModelConfig(max_batch_size=4)) as server:
        url = f"http://{server.http_url}"
        assert httpx.get(f"{url}/v2/health/live").status_code == 200
        assert httpx.get(f"{url}/v2/health/ready").status_code == 503
        assert httpx.get(f"{url}/v2/models/slow/ready").status_code == 503
        assert request(server.http_url, "slow").status_code == 503
        poll(lambda: httpx.get(f"{url}/v2/health/ready").status_code == 200, timeout=120)
        stats = httpx.get(f"{url}/v2/models/slow/stats").json()["model_stats"][0]
        assert stats["inference_count"] == 0  # warm-up is not traffic


@pytest.fixture
def versioned(tmp_path: Path, build: Callable, save_model: Callable) -> Path:
    save_model(build(1.0), tmp_path / "m" / "1" / "model.onnx")
    return tmp_path


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_version_swap_under_load_fails_no_request(
    serve: Serve, versioned: Path, build: Callable, save_model: Callable, poll: Callable
) -> None:
    server = serve(versioned, management_token=TOKEN)
    url = server.http_url
    swapped = threading.Event()
    seen: list[list[float]] = []
    failures: list[str] = []

    def client() -> None:
        after = 0
        for _ in range(2000):  # bounded; stops soon after the swap
            response = request(url)
            if response.status_code != 200:
                failures.append(response.text)
            else:
                seen.append(output(response))
            after += swapped.is_set()
            if after > 20:
                return

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    poll(lambda: len(seen) >= 8)  # version 1 is answering
    save_model(build(2.0), versioned / "m" / "2" / "model.onnx")
    load = httpx.post(f"http://{url}/v2/repository/models/m/load", headers=auth(), timeout=120)
    assert load.status_code == 200, load.text
    swapped.set()
    for thread in threads:
        thread.join(120)
    assert failures == []
    assert {tuple(s) for s in seen} == {(1.0, 2.0, 3.0, 4.0), (2.0, 4.0, 6.0, 8.0)}
    assert output(request(url)) == [2.0, 4.0, 6.0, 8.0]
    assert httpx.get(f"http://{url}/v2/models/m").json()["versions"] == ["2"]
    assert httpx.post(f"http://{url}/v2/models/m/versions/1/infer", json={}).status_code == 404


def test_a_failed_load_keeps_the_old_version_serving(
    serve: Serve, versioned: Path, tmp_path: Path
) -> None:
    server = serve(versioned, management_token=TOKEN)
    broken = versioned / "m" / "2" / "model.onnx"
    broken.parent.mkdir()
    broken.write_bytes(b"not an onnx model")
    load = httpx.post(f"http://{server.http_url}/v2/repository/models/m/load", headers=auth())
    assert load.status_code == 400
    assert "failed to load 'm'" in load.json()["error"]
    assert output(request(server.http_url)) == [1.0, 2.0, 3.0, 4.0]


def test_grpc_management_needs_the_token(serve: Serve, versioned: Path) -> None:
    client = triton_grpc.InferenceServerClient(serve(versioned, management_token=TOKEN).grpc_url)
    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
        client.load_model("m")
    metadata = {"authorization": f"Bearer {TOKEN}"}  # gRPC metadata keys are lower case
    client.load_model("m", headers=metadata)
    client.unload_model("m", headers=metadata)
    assert not client.is_model_ready("m")


def test_management_token_unload_and_reload(serve: Serve, versioned: Path) -> None:
    server = serve(versioned, management_token=TOKEN)
    base = f"http://{server.http_url}/v2/repository/models/m"
    assert httpx.post(f"{base}/unload").status_code == 401
    assert httpx.post(f"{base}/unload", headers=auth("wrong")).status_code == 401
    assert httpx.post(f"{base}/unload", headers=auth()).status_code == 200
    assert request(server.http_url).status_code == 503
    assert httpx.get(f"http://{server.http_url}/v2/models/m/ready").status_code == 503
    index = httpx.post(f"http://{server.http_url}/v2/repository/index").json()
    assert index == [{"name": "m", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}]
    assert (
        httpx.post(
            f"{base}/load", headers=auth(), json={"parameters": {"config": "{}"}}
        ).status_code
        == 400
    )  # no configs or files from clients
    assert httpx.post(f"{base}/load", headers=auth()).status_code == 200
    assert output(request(server.http_url)) == [1.0, 2.0, 3.0, 4.0]
    assert (
        httpx.post(
            f"http://{server.http_url}/v2/repository/models/zz/load", headers=auth()
        ).status_code
        == 404
    )


def test_a_model_without_a_batch_axis_is_served_as_sent(
    serve: Serve, tmp_path: Path, build: Callable, save_model: Callable
) -> None:
    save_model(build(3.0, batch=False), tmp_path / "fixed.onnx")
    server = serve(tmp_path)
    body = {"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]}
    response = httpx.post(f"http://{server.http_url}/v2/models/fixed/infer", json=body)
    assert response.json()["outputs"][0]["data"] == [3.0, 6.0, 9.0]
    config = httpx.get(f"http://{server.http_url}/v2/models/fixed/config").json()
    assert config["max_batch_size"] == 0


def test_a_broken_model_at_start_keeps_the_server_not_ready(serve: Serve, versioned: Path) -> None:
    (versioned / "broken.onnx").write_bytes(onnx.ModelProto().SerializeToString())
    server = serve(versioned)
    url = f"http://{server.http_url}"
    assert httpx.get(f"{url}/v2/health/ready").status_code == 503
    assert output(request(server.http_url)) == [1.0, 2.0, 3.0, 4.0]  # the others serve
    index = {e["name"]: e for e in httpx.post(f"{url}/v2/repository/index").json()}
    assert index["broken"]["state"] == "UNAVAILABLE" and index["broken"]["reason"]


def test_a_text_model_takes_and_gives_bytes(serve: Serve, tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["t"])],
        "echo",
        [helper.make_tensor_value_info("s", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("t", TensorProto.STRING, ["batch"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "echo.onnx"))
    server = serve(tmp_path)
    url = f"http://{server.http_url}/v2/models/echo/infer"
    body = {"inputs": [{"name": "s", "shape": [2], "datatype": "BYTES", "data": ["héllo", ""]}]}
    response = httpx.post(url, json=body)
    assert response.json()["outputs"][0] == {
        "name": "t",
        "datatype": "BYTES",
        "shape": [2],
        "data": ["héllo", ""],
    }
    client = triton.InferenceServerClient(server.http_url)
    words = np.array([b"binary", "ünï".encode()], dtype=np.object_)
    tensor = triton.InferInput("s", [2], "BYTES")
    tensor.set_data_from_numpy(words, binary_data=True)
    out = triton.InferRequestedOutput("t", binary_data=True)
    assert client.infer("echo", [tensor], outputs=[out]).as_numpy("t").tolist() == words.tolist()
