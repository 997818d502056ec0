"""A row's answer must not depend on what it is batched with. Under concurrent load of mixed
lengths the batcher merges requests into padded batches; each request's answer must equal
its answer when sent alone: for every zoo model, and for a quantized recipe (where a fused
attention that loses its mask would attend to the padding and change the answer)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from inferopt import zoo
from inferopt.recipes import build_candidate, resolve_data
from inferopt.serve import BackgroundServer, ModelConfig, ServerConfig
from inferopt.sources import load

pytestmark = pytest.mark.slow
REQUESTS = 24  # per model: enough for several merged batches, bounded in time
QUANTIZED = "minilm-int8"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("invariance-repo")
    for name in zoo.names():
        load(name).save(root / name / "1" / "model.onnx")
    minilm = load("minilm")
    quantized = build_candidate("minilm", "fuse,int8-dynamic", resolve_data(minilm, None))
    quantized.save(root / QUANTIZED / "1" / "model.onnx")
    return root


def _requests(name: str) -> list[dict[str, np.ndarray]]:
    """Held-out inputs of the zoo model behind `name`, one row each, lengths mixed."""
    data = zoo.get("minilm" if name == QUANTIZED else name).data().evaluation
    return data.spread(REQUESTS)


def _body(feed: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": k,
                "shape": list(v.shape),
                "datatype": _datatype(v),
                "data": v.ravel().tolist(),
            }
            for k, v in feed.items()
        ]
    }


def _datatype(array: np.ndarray) -> str:
    return {"int64": "INT64", "float32": "FP32"}[array.dtype.name]


def _answers(response: httpx.Response) -> dict[str, np.ndarray]:
    response.raise_for_status()
    return {
        o["name"]: np.asarray(o["data"], dtype=np.float64).reshape(o["shape"])
        for o in response.json()["outputs"]
    }


async def _concurrently(url: str, name: str, feeds: list[dict[str, np.ndarray]]) -> list[Any]:
    async with httpx.AsyncClient(timeout=60) as client:
        calls = [client.post(f"{url}/v2/models/{name}/infer", json=_body(f)) for f in feeds]
        return [_answers(r) for r in await asyncio.gather(*calls)]


def _alone(url: str, name: str, feeds: list[dict[str, np.ndarray]]) -> list[Any]:
    with httpx.Client(timeout=60) as client:
        return [
            _answers(client.post(f"{url}/v2/models/{name}/infer", json=_body(f))) for f in feeds
        ]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[BackgroundServer]:
    """One server for every model: a long batching window, so that concurrent requests are
    merged into padded batches."""
    model_config = ModelConfig(max_queue_delay_ms=50, max_batch_size=8, max_padding=4.0)
    config = ServerConfig(host="127.0.0.1", http_port=0, grpc_port=0)
    with BackgroundServer(repo, config, model_config) as background:
        background.wait_ready()
        yield background


@pytest.mark.parametrize("name", [*zoo.names(), QUANTIZED])
def test_answers_under_mixed_length_load_equal_answers_alone(
    name: str, server: BackgroundServer, read_metric: Callable[..., float]
) -> None:
    url = f"http://{server.http_url}"
    feeds = _requests(name)
    before = read_metric(server.http_url, "inferopt_executions_total", model=name, version="1")
    batched = asyncio.run(_concurrently(url, name, feeds))
    after = read_metric(server.http_url, "inferopt_executions_total", model=name, version="1")
    alone = _alone(url, name, feeds)
    assert after - before < len(feeds), "the load should have been served in merged batches"
    cosines = []
    for together, single in zip(batched, alone, strict=True):
        for output, value in single.items():
            if name == QUANTIZED:
                cosines.append(_cosine(together[output], value))
            else:
                np.testing.assert_allclose(together[output], value, rtol=1e-3, atol=1e-4)
    if name == QUANTIZED:
        # Dynamic INT8 picks one activation scale per tensor, so a row moves a little with
        # its batch (measured worst 0.977, benchmarks/results/int8_attention.json); a lost
        # mask instead attends to the padding (mean 0.82, worst 0.26).
        assert np.mean(cosines) > 0.99 and min(cosines) > 0.95, cosines
