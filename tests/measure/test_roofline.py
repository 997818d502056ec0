"""The machine's peaks: the GEMM models compute what they claim, the cache, the arithmetic."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from inferopt.hardware import probe
from inferopt.measure import roofline
from inferopt.report.schema import Compute, MachinePeaks
from inferopt.runtime import create_session

PEAKS = MachinePeaks(
    fp32_flops_per_s=100e9, int8_ops_per_s=400e9, bandwidth_bytes_per_s=10e9,
    fingerprint="x", measured_at="now", from_cache=False, method="test",
)  # fmt: skip


@pytest.mark.parametrize("integer", [False, True])
def test_gemm_models_multiply_by_their_weight(integer: bool) -> None:
    model = roofline.gemm_model(16, integer=integer)
    weight = np.frombuffer(model.graph.initializer[0].raw_data, np.int8 if integer else np.float32)
    rng = np.random.default_rng(0)
    # uint8 below 128: AVX2 without VNNI adds pairs of u8 x s8 products in int16, which
    # saturates for larger values (hardware.int8_fast_path warns of it).
    a = rng.integers(0, 128, (16, 16), np.uint8) if integer else rng.random((16, 16), np.float32)
    (y,) = create_session(model).run(None, {"A": a})
    expected = (
        a.astype(np.int64) @ weight.reshape(16, 16).astype(np.int64)
        if integer
        else a @ weight.reshape(16, 16)
    )
    np.testing.assert_allclose(y, expected, rtol=1e-5)


def test_peaks_are_measured_once_then_read_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFEROPT_CACHE", str(tmp_path))
    calls: list[str] = []

    def counted(hw: object) -> MachinePeaks:
        calls.append("measured")
        return dataclasses.replace(PEAKS, fingerprint=probe().fingerprint())

    monkeypatch.setattr(roofline, "measure_peaks", counted)
    first = roofline.machine_peaks(probe())
    second = roofline.machine_peaks(probe())
    assert calls == ["measured"] and not first.from_cache and second.from_cache
    assert dataclasses.replace(second, from_cache=False) == first
    roofline.machine_peaks(probe(), remeasure=True)
    assert calls == ["measured", "measured"]


def test_a_damaged_cache_file_is_measured_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFEROPT_CACHE", str(tmp_path))
    monkeypatch.setattr(roofline, "measure_peaks", lambda hw: PEAKS)
    folder = tmp_path / "roofline"
    folder.mkdir()
    (folder / f"{probe().fingerprint()}-v{roofline.CACHE_VERSION}.json").write_text("{broken")
    assert roofline.machine_peaks(probe()) == PEAKS


def test_roofline_point_arithmetic() -> None:
    # 2 GFLOP in 40 ms = 50 GFLOP/s: half the fp32 peak, an eighth of int8. Floors: 20 ms at
    # fp32, 5 ms at int8; 100 MB of traffic at 10 GB/s = 10 ms; intensity 20 FLOP/B.
    compute = Compute(1, None, 2_000_000_000, 10**9, 10**9, 0, 100_000_000, (), {})
    point = roofline.roofline_point(compute, 0.040, PEAKS)
    assert point.achieved_flops_per_s == pytest.approx(50e9)
    assert (point.fraction_of_fp32_peak, point.fraction_of_int8_peak) == pytest.approx((0.5, 0.125))
    assert (point.compute_floor_fp32_ms, point.compute_floor_int8_ms) == pytest.approx((20, 5))
    assert point.memory_floor_ms == pytest.approx(10.0)
    assert point.intensity_flops_per_byte == pytest.approx(20.0)


def test_measured_peaks_are_plausible_for_a_cpu() -> None:
    # The real measurement (cached for the test session in the repo's build/test-cache).
    peaks = roofline.machine_peaks(probe())
    assert 1e9 < peaks.fp32_flops_per_s < 1e14
    assert 1e9 < peaks.int8_ops_per_s < 1e15
    assert 1e8 < peaks.bandwidth_bytes_per_s < 1e13
    assert peaks.fingerprint == probe().fingerprint()
