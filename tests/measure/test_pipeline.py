"""profile() and compare() end to end on tiny models, and on minilm once (slow)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import pytest

from inferopt.errors import InputError
from inferopt.measure import ProfileConfig, compare, profile
from inferopt.model import Model
from inferopt.report.schema import dumps

MLP_FLOPS_PER_SAMPLE = 1024 + 32 + 32 + 512  # Gemm + bias, Relu, MatMul (see conftest)


def test_profile_reports_every_figure(mlp: Model, fast: ProfileConfig) -> None:
    stages: list[str] = []
    m = profile(mlp, fast, progress=lambda stage, done, total, detail="": stages.append(stage))
    assert [(p.batch, p.seq) for p in m.points] == [(1, None), (4, None)]
    for p in m.points:
        lat = p.latency
        assert lat.runs >= fast.min_runs and lat.warmup_runs >= fast.warmup_runs
        assert lat.min_ms <= lat.ci95_low_ms <= lat.p50_ms <= lat.ci95_high_ms <= lat.max_ms
        assert lat.p50_ms <= lat.p90_ms <= lat.p99_ms and len(lat.samples_ms) == lat.runs
        assert p.throughput_per_s == pytest.approx(p.batch / (lat.p50_ms / 1e3))
        assert p.flops == MLP_FLOPS_PER_SAMPLE * p.batch
        assert p.roofline.fraction_of_fp32_peak > 0 and p.energy.joules_per_inference > 0
        assert p.energy.cost_per_million > 0 and p.threads == m.threads.best_threads
        assert p.memory is not None and p.memory.estimated_activation_bytes > 0
    assert m.best_throughput.throughput_per_s == max(p.throughput_per_s for p in m.points)
    assert (m.compute.batch, m.compute.total_flops) == (1, MLP_FLOPS_PER_SAMPLE)
    assert m.size.parameters == 16 * 32 + 32 + 32 * 8
    assert [t.threads for t in m.threads.trials] == [1, 2]
    assert m.ops.ops and m.ops.runs == fast.op_profile_runs
    assert m.memory is not None and m.memory.load_retained_bytes > 0
    assert m.cost.energy_method in ("rapl", "cpu-time-estimate")
    assert {"latency", "memory (fresh processes)"} <= set(stages)
    assert json.loads(dumps(m))["schema"] == "inferopt.measurement"


def test_compare_interleaves_and_reports_ratios(
    make_model: Callable[..., Model], fast: ProfileConfig
) -> None:
    small, wide = make_model("mlp", name="small"), make_model("mlp", name="wide", hidden=512)
    config = dataclasses.replace(fast, memory=False, threads=(1,))
    c = compare(small, wide, config)
    a, b = c.measurements
    assert (a.model.name, b.model.name) == ("small", "wide")
    # wide: Gemm 16x512 (8192 MACs) + bias 512 + Relu 512 + MatMul 512x8 (4096 MACs).
    assert c.flops_ratio == pytest.approx((2 * 8192 + 1024 + 2 * 4096) / MLP_FLOPS_PER_SAMPLE)
    assert len(c.ratios) == 2
    for r, pa, pb in zip(c.ratios, a.points, b.points, strict=True):
        assert r.p50_ratio == pytest.approx(pb.latency.p50_ms / pa.latency.p50_ms)
        assert r.p50_ratio_low <= r.p50_ratio <= r.p50_ratio_high
        assert r.peak_memory_ratio is None  # memory was off
    # Interleaved in turns of equal length: both models ran about as long at each point.
    for pa, pb in zip(a.points, b.points, strict=True):
        spent = [sum(p.latency.samples_ms) for p in (pa, pb)]
        assert 0.5 < spent[0] / spent[1] < 2, spent


def test_sequence_model_counts_flops_per_point(seq_model: Model, fast: ProfileConfig) -> None:
    config = dataclasses.replace(fast, batch_sizes=(2,), seq_lens=(4, 16), memory=False)
    m = profile(seq_model, config)
    # MatMul: b*s*8 outputs x K=8 -> 128 b s FLOPs; Softmax: 5 x b*s*8 = 40 b s.
    assert [(p.seq, p.flops) for p in m.points] == [(4, 168 * 2 * 4), (16, 168 * 2 * 16)]
    assert (m.compute.batch, m.compute.seq) == (2, 16)


def test_a_sequence_length_the_model_rejects_names_the_flag(
    make_model: Callable[..., Model], fast: ProfileConfig
) -> None:
    model = make_model("seq", fixed_seq=4)  # adds a 4-position table: only seq 4 (or 1) runs
    config = dataclasses.replace(fast, seq_lens=(4, 5), memory=False)
    with pytest.raises(InputError, match=r"^--seq-lens 5 \(seq at batch 1, seq 5\): the model"):
        profile(model, config)


def test_a_batch_too_big_for_memory_is_refused_before_running(
    mlp: Model, fast: ProfileConfig
) -> None:
    config = dataclasses.replace(fast, batch_sizes=(1, 10**10))
    with pytest.raises(InputError, match=r"^--batch-sizes 10000000000: mlp needs an estimated"):
        profile(mlp, config, progress=_fail_if_measuring)


def _fail_if_measuring(stage: str, done: int, total: int, detail: str = "") -> None:
    assert not stage.startswith(("latency", "thread", "checking")), "refusal came too late"


@pytest.mark.slow
def test_minilm_at_batch_1_seq_16() -> None:
    from inferopt.sources import load

    config = ProfileConfig(
        batch_sizes=(1,), seq_lens=(16,), threads=(1,), min_time_per_point_s=0.0,
        max_time_per_point_s=1.0, sweep_time_s=0.5, op_profile_runs=2, memory_runs=1,
    )  # fmt: skip
    m = profile(load("minilm"), config)
    # 6 layers x (4 projections 16x384x384 + FFN 2 x 16x384x1536 + attention 2 x 12x16x16x32).
    assert m.compute.total_macs == 6 * (
        4 * 16 * 384 * 384 + 2 * 16 * 384 * 1536 + 2 * 12 * 16 * 16 * 32
    )
    assert m.compute.not_counted == {}
    assert m.ops.ops[0].op_type in ("MatMul", "FusedMatMul", "Attention")
    assert m.memory is not None and m.memory.load_retained_bytes > 80 * 2**20  # 87 MiB of weights
    assert m.points[0].latency.runs >= 10
