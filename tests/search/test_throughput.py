"""The throughput objective at a stated shape: batches of real held-out samples, each cut or
padded with the model's own padding (mask 0) to exactly the stated tokens; and the chosen
model's speed reported at batch 1 and at that shape, whichever objective was searched for."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).parents[1] / "fixtures"))
from damage import detection_head, pooled_encoder

from inferopt.data import Dataset
from inferopt.errors import InputError
from inferopt.model import Provenance, from_proto
from inferopt.search.auto import Clock, SearchConfig, optimize, prepare
from inferopt.search.screen import Bench, ThroughputShape, both_objectives
from inferopt.search.view import speed_rows


def _npz(folder: Path, lengths: list[int], width: int = 160) -> Path:
    """Sentences of the given real lengths, stored right-padded to `width` (mask 0)."""
    rng = np.random.default_rng(0)
    mask = (np.arange(width)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    ids = rng.integers(1, 50, (len(lengths), width)).astype(np.int64) * mask
    path = folder / "sentences.npz"
    np.savez(path, input_ids=ids, attention_mask=mask)
    return path


def _bench(tmp_path: Path, model: object, data: Path, shape: ThroughputShape) -> Bench:
    path = tmp_path / "model.onnx"
    model.save(path)  # type: ignore[attr-defined]
    config = SearchConfig(objective="throughput", throughput=shape, training=False)
    bench, _ = prepare(str(path), str(data), config, Clock(300))
    return bench


def test_a_stated_length_cuts_and_pads_with_the_models_padding() -> None:
    rows = [
        {"ids": np.arange(1, 6)[None], "mask": np.ones((1, 5), np.int64)},
        {"ids": np.arange(1, 11)[None], "mask": np.ones((1, 10), np.int64)},
    ]
    data = Dataset(tuple(rows), seq_axis=1)
    stacked = data.stacking.stack(rows, length=8)
    assert stacked["mask"].tolist() == [[1] * 5 + [0] * 3, [1] * 8]
    assert stacked["ids"].tolist() == [[1, 2, 3, 4, 5, 0, 0, 0], list(range(1, 9))]
    assert data.stacking.stack(rows)["mask"].shape == (2, 10)  # no length: the longest


@pytest.mark.slow
def test_throughput_batches_are_held_out_samples_at_exactly_the_stated_shape(
    tmp_path: Path,
) -> None:
    lengths = [5 + (i * 7) % 150 for i in range(200)]  # some longer than 128 tokens
    bench = _bench(tmp_path, pooled_encoder(), _npz(tmp_path, lengths), ThroughputShape(32, 128))
    feeds = bench.feeds(16)  # two batches, as the probe takes them
    assert len(feeds) == 2 and bench.timed_at() == "batch 32 x 128 tokens"
    held_out = bench.data.evaluation.samples
    for k, feed in enumerate(feeds):
        assert {name: a.shape for name, a in feed.items()} == {
            "input_ids": (32, 128), "attention_mask": (32, 128),
        }  # fmt: skip
        for row in range(32):
            sample = held_out[(32 * k + row) % len(held_out)]
            real = min(int(sample["attention_mask"].sum()), 128)
            assert feed["attention_mask"][row].tolist() == [1] * real + [0] * (128 - real)
            cut = sample["input_ids"][0, :real]
            assert np.array_equal(feed["input_ids"][row, :real], cut)
            assert not feed["input_ids"][row, real:].any()  # padded with the pad id, 0
    assert any(int(s["attention_mask"].sum()) > 128 for s in held_out[:64])  # cut as well


@pytest.mark.slow
def test_a_model_without_a_sequence_axis_is_timed_at_the_batch_alone(tmp_path: Path) -> None:
    data = tmp_path / "x.npz"
    np.savez(data, x=np.random.default_rng(3).random((100, 8), dtype=np.float32))
    bench = _bench(tmp_path, detection_head(), data, ThroughputShape(16, 128))
    (feed,) = bench.feeds(8)
    assert feed["x"].shape == (16, 8) and bench.timed_at() == "batch 16"


@pytest.mark.slow
def test_both_speeds_are_measured_interleaved_whichever_objective(tmp_path: Path) -> None:
    lengths = [5 + i % 20 for i in range(100)]
    bench = _bench(tmp_path, pooled_encoder(), _npz(tmp_path, lengths), ThroughputShape(8, 32))
    found = both_objectives(bench, bench.baseline, None)
    assert set(found) == {"latency", "throughput"}
    # The same model against itself: both ratios near 1, each from its own rounds.
    assert all(0.5 < c.speedup < 2 and c.rounds == 5 for c in found.values())
    assert found["latency"].samples > found["throughput"].samples == 1  # one batch a round
    # The objective's own full comparison is reused, not measured again.
    again = both_objectives(bench, bench.baseline, found["latency"])
    assert again["throughput"] is found["latency"]  # this bench's objective is throughput


def test_the_table_shows_batch_1_latency_and_throughput_in_samples_per_second() -> None:
    from types import SimpleNamespace

    from inferopt.search.evaluate import LatencyComparison

    latency = LatencyComparison(8.0, 4.0, 2.0, 0.01, 7, 48)
    batches = LatencyComparison(400.0, 250.0, 1.6, 0.02, 5, 1)  # ms per batch of 32
    result = SimpleNamespace(
        objectives={"latency": latency, "throughput": batches},
        timed_at={"latency": "batch 1", "throughput": "batch 32 x 128 tokens"},
        config=SearchConfig(),
    )
    rows = speed_rows(result, None)  # type: ignore[arg-type]
    assert rows == [
        ("latency, batch 1", "8.00 ms", "4.00 ms (2.00x)"),
        ("throughput, batch 32 x 128 tokens", "80 samples/s", "128 samples/s (1.60x)"),
    ]


@pytest.mark.parametrize(
    ("text", "shape"), [("32x128", (32, 128)), ("8", (8, 128)), ("4X16", (4, 16))]
)
def test_throughput_shapes_parse(text: str, shape: tuple[int, int]) -> None:
    parsed = ThroughputShape.parse(text)
    assert (parsed.batch, parsed.tokens) == shape


@pytest.mark.slow
def test_a_model_with_a_fixed_batch_is_refused_for_throughput_only(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "fixed", [x], [y])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = from_proto(proto, Provenance(source="fixed.onnx", kind="onnx"))
    data = tmp_path / "x.npz"
    np.savez(data, x=np.random.default_rng(3).random((50, 8), dtype=np.float32))
    with pytest.raises(InputError, match="take no batch of 32"):
        _bench(tmp_path, model, data, ThroughputShape())
    path = tmp_path / "model.onnx"  # saved by _bench
    config = SearchConfig(time_budget_s=60, training=False, shortlist=1)
    result = optimize(str(path), None, data=str(data), config=config)
    assert "throughput" not in result.objectives  # the latency search is not stopped by it
