"""Models of the field's kinds on the real server: warm-up finds inputs they accept (a sample
rate, a state batched on axis 1), follows the model folder's `input_shapes` / `warmup_data`,
and never makes a valid model unavailable; ZipMap's map outputs are served as BYTES (one JSON
text per row); rows padded into one batch answer as they do alone, with each mask's own
padding mark."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.http as triton

from inferopt.iospec import IOSpec
from inferopt.serve import BackgroundServer, ServerConfig
from inferopt.serve.runner import RunControl, Runner

sys.path.insert(0, str(Path(__file__).parents[1] / "fixtures"))

import field_kinds as kinds

DATATYPES = {"float32": "FP32", "int64": "INT64", "bool": "BOOL"}


def _index(url: str) -> dict[str, dict[str, str]]:
    response = httpx.post(f"http://{url}/v2/repository/index", json={}, timeout=30)
    assert response.status_code == 200, response.text
    return {entry["name"]: entry for entry in response.json()}


def _infer(url: str, model: str, feeds: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """A JSON request; the outputs by name, as the server wrote them."""
    body = {
        "inputs": [
            {
                "name": name,
                "shape": list(value.shape),
                "datatype": DATATYPES[value.dtype.name],
                "data": value.ravel().tolist(),
            }
            for name, value in feeds.items()
        ]
    }
    response = httpx.post(f"http://{url}/v2/models/{model}/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return {o["name"]: o for o in response.json()["outputs"]}


def _array(output: dict[str, Any]) -> np.ndarray:
    return np.asarray(output["data"], dtype=np.float64).reshape(output["shape"])


def _direct(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    session = ort.InferenceSession(proto.SerializeToString())
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


# ---------------------------------------------------------------------- warm-up


def test_vad_like_model_is_ready_and_answers(
    serve: Callable[..., BackgroundServer], tmp_path: Path
) -> None:
    kinds.save(kinds.vad(), tmp_path / "vad.onnx")
    url = serve(tmp_path).http_url
    entry = _index(url)["vad"]
    assert entry["state"] == "READY" and "reason" not in entry  # warmed up
    feeds = kinds.vad_request(rows=1, seed=3)
    got = _infer(url, "vad", feeds)
    want = _direct(kinds.vad(), feeds)
    np.testing.assert_allclose(_array(got["output"]), want["output"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_array(got["stateN"]), want["stateN"], rtol=1e-5, atol=1e-6)


def test_a_model_warm_up_cannot_run_is_ready_with_a_reason_and_answers(
    serve: Callable[..., BackgroundServer], tmp_path: Path
) -> None:
    kinds.save(kinds.unrunnable(), tmp_path / "keyed.onnx")
    url = serve(tmp_path).http_url
    entry = _index(url)["keyed"]
    assert entry["state"] == "READY"
    assert "without warm-up" in entry["reason"] and "not finite" in entry["reason"]
    assert "\n" not in entry["reason"]
    assert httpx.get(f"http://{url}/v2/models/keyed/ready", timeout=10).status_code == 200
    feeds = kinds.unrunnable_data(rows=2, seed=4)
    got = _infer(url, "keyed", feeds)
    np.testing.assert_allclose(_array(got["y"]), feeds["x"], rtol=1e-6)


def _folder(root: Path, name: str, proto: onnx.ModelProto, settings: str) -> Path:
    folder = root / name
    kinds.save(proto, folder / "1" / "model.onnx")
    (folder / "serve.toml").write_text(settings)
    return folder


def test_model_folder_settings_steer_warm_up(
    serve: Callable[..., BackgroundServer], tmp_path: Path
) -> None:
    kinds.save(kinds.vad(window=1000), tmp_path / "window.onnx")  # no settings: not warmed
    _folder(tmp_path, "window-shaped", kinds.vad(window=1000), 'input_shapes = "input:1,1000"\n')
    data = _folder(tmp_path, "keyed-data", kinds.unrunnable(), 'warmup_data = "warm.npz"\n')
    np.savez(data / "warm.npz", **kinds.unrunnable_data(rows=3))
    url = serve(tmp_path).http_url
    index = _index(url)
    assert index["window"]["state"] == "READY" and "without warm-up" in index["window"]["reason"]
    for name in ("window-shaped", "keyed-data"):
        assert index[name]["state"] == "READY" and "reason" not in index[name], index[name]
    got = _infer(url, "window-shaped", kinds.vad_request(rows=1, window=2000))
    assert np.isfinite(_array(got["output"])).all()
    feeds = kinds.unrunnable_data(rows=1, seed=9)
    np.testing.assert_allclose(_array(_infer(url, "keyed-data", feeds)["y"]), feeds["x"])


def test_input_shapes_in_perf_analyzer_spelling_steer_warm_up(
    serve: Callable[..., BackgroundServer], tmp_path: Path
) -> None:
    """`input:1000`, the batch dim left out, as perf_analyzer's --shape writes it."""
    _folder(tmp_path, "window", kinds.vad(window=1000), 'input_shapes = "input:1000"\n')
    url = serve(tmp_path).http_url
    entry = _index(url)["window"]
    assert entry["state"] == "READY" and "reason" not in entry, entry


def test_malformed_input_shapes_never_make_a_valid_model_unavailable(
    serve: Callable[..., BackgroundServer], tmp_path: Path
) -> None:
    _folder(tmp_path, "vad", kinds.vad(), 'input_shapes = "input:1,x"\n')
    url = serve(tmp_path).http_url
    entry = _index(url)["vad"]
    assert entry["state"] == "READY", entry
    assert "input:1,x" in entry.get("reason", ""), entry
    got = _infer(url, "vad", kinds.vad_request(rows=1))
    assert np.isfinite(_array(got["output"])).all()


# ----------------------------------------------------------------------- ZipMap


def test_zipmap_classifier_serves_labels_and_probabilities_as_json_per_row(
    serve: Callable[..., BackgroundServer], tmp_path: Path
) -> None:
    kinds.save(kinds.zipmap_classifier(), tmp_path / "classifier.onnx")
    url = serve(tmp_path).http_url
    assert _index(url)["classifier"]["state"] == "READY"
    x = np.random.default_rng(5).standard_normal((3, 4)).astype(np.float32)
    got = _infer(url, "classifier", {"float_input": x})
    want = _direct(kinds.zipmap_classifier(), {"float_input": x})
    # [N] outputs of a batching model are shown and answered as Triton does: [b, 1]
    meta = httpx.get(f"http://{url}/v2/models/classifier", timeout=10).json()
    assert meta["outputs"] == [
        {"name": "output_label", "datatype": "INT64", "shape": [-1, 1]},
        {"name": "output_probability", "datatype": "BYTES", "shape": [-1, 1]},
    ]
    label = got["output_label"]
    assert label["datatype"] == "INT64" and label["shape"] == [3, 1]
    assert label["data"] == np.asarray(want["output_label"]).tolist()
    probability = got["output_probability"]
    assert probability["datatype"] == "BYTES" and probability["shape"] == [3, 1]
    rows = [json.loads(text) for text in probability["data"]]
    assert len(rows) == 3
    for row, expected in zip(rows, want["output_probability"], strict=True):
        assert sorted(row) == [str(c) for c in kinds.ZIPMAP_CLASSES]
        for label_value, p in expected.items():
            assert row[str(label_value)] == pytest.approx(p, rel=1e-5)


# ----------------------------------------------------------------- padded batches


class Gated:
    """The real runner behind a gate that can hold a batch back; records each batch's
    [rows, sequence length]."""

    def __init__(self, inner: Runner) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.batches: list[tuple[int, int]] = []

    @property
    def io(self) -> IOSpec:
        return self.inner.io

    def run(self, inputs: dict[str, np.ndarray], control: RunControl) -> dict[str, np.ndarray]:
        self.started.set()
        assert self.gate.wait(30)
        rows, length = inputs["x"].shape[:2]
        self.batches.append((int(rows), int(length)))
        return self.inner.run(inputs, control)


@pytest.fixture
def gated_server(tmp_path: Path) -> Iterator[Callable[[Path], tuple[BackgroundServer, Gated]]]:
    started: list[BackgroundServer] = []

    def start(repo: Path) -> tuple[BackgroundServer, Gated]:
        runners: list[Gated] = []

        def wrap(name: str, runner: Runner) -> Runner:
            runners.append(Gated(runner))
            return runners[-1]

        config = ServerConfig(host="127.0.0.1", http_port=0, grpc_port=0)
        server = BackgroundServer(repo, config, wrap_runner=wrap)
        server.__enter__()
        started.append(server)
        server.wait_ready()
        (runner,) = runners
        return server, runner

    yield start
    for server in started:
        server.stop()


def _encoder_inputs(name: str, feeds: dict[str, np.ndarray]) -> list[triton.InferInput]:
    tensors = []
    for key, value in feeds.items():
        tensor = triton.InferInput(key, list(value.shape), DATATYPES[value.dtype.name])
        tensor.set_data_from_numpy(value, binary_data=True)
        tensors.append(tensor)
    return tensors


@pytest.mark.parametrize(
    ("mask", "true_means_padding"),
    [("key_padding_mask", True), ("mask", False)],
)
def test_rows_of_different_lengths_padded_into_one_batch_answer_as_alone(
    gated_server: Callable[[Path], tuple[BackgroundServer, Gated]],
    tmp_path: Path,
    read_metric: Callable[..., float],
    poll: Callable[..., None],
    mask: str,
    true_means_padding: bool,
) -> None:
    proto = kinds.masked_encoder(mask, true_means_padding)
    repo = tmp_path / "repo"
    _folder(repo, "encoder", proto, "max_padding = 1.0\n")
    server, runner = gated_server(repo)
    client = triton.InferenceServerClient(server.http_url, concurrency=4)

    def request(length: int, seed: int) -> dict[str, np.ndarray]:
        feeds = kinds.encoder_request(length, seed=seed)
        keep = ~feeds.pop("key_padding_mask")
        feeds[mask] = ~keep if true_means_padding else keep
        return feeds

    blocker, short, long = request(4, 0), request(3, 1), request(6, 2)
    runner.batches.clear()
    runner.gate.clear()
    runner.started.clear()
    pending = [client.async_infer("encoder", _encoder_inputs(mask, blocker))]
    assert runner.started.wait(30)  # the blocker holds the model: the next two queue
    pending += [client.async_infer("encoder", _encoder_inputs(mask, f)) for f in (short, long)]
    labels = {"model": "encoder", "version": "1"}
    poll(lambda: read_metric(server.http_url, "inferopt_pending_requests", **labels) >= 3)
    runner.gate.set()
    results = [p.get_result(timeout=60) for p in pending]
    client.close()
    assert runner.batches == [(1, 4), (2, 6)]  # the two queued rows shared one padded batch
    for feeds, result in zip((blocker, short, long), results, strict=True):
        alone = _direct(proto, feeds)
        hidden, pooled = result.as_numpy("hidden"), result.as_numpy("pooled")
        assert hidden.shape == alone["hidden"].shape
        np.testing.assert_allclose(hidden, alone["hidden"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(pooled, alone["pooled"], rtol=1e-5, atol=1e-6)
