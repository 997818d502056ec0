"""The hardware probe: real probe sanity, parsers on sample texts, derived fast-path logic."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from inferopt import hardware
from inferopt.hardware import (
    HardwareInfo,
    parse_cgroup_cpu_max,
    parse_cgroup_memory_limit,
    parse_cpuinfo,
    parse_nvidia_smi,
    probe,
    read_cgroup_cpu_limit,
    read_cgroup_memory_limit,
    table,
)

INTEL_AVX512_VNNI = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse sse2 avx f16c fma avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni
bugs\t\t: spectre_v1

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse sse2 avx f16c fma avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni

processor\t: 2
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
physical id\t: 0
core id\t\t: 1
flags\t\t: fpu sse sse2 avx f16c fma avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni
"""

AMD_AVX2 = """\
processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7R32
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse sse2 fma avx f16c avx2 sha_ni

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7R32
physical id\t: 1
core id\t\t: 0
flags\t\t: fpu sse sse2 fma avx f16c avx2 sha_ni
"""

ARM64 = """\
processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp i8mm bf16
CPU implementer\t: 0x41
CPU part\t: 0xd40

processor\t: 1
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp i8mm bf16
"""


AVX2_NO_VNNI = "AVX2 (no VNNI: u8s8 products can saturate; prefer u8u8 or reduce_range)"


def _info(*features: str, **changes: object) -> HardwareInfo:
    return dataclasses.replace(probe(), cpu_features=features, **changes)  # type: ignore[arg-type]


# Real probe on this machine.


def test_probe_is_sane_here() -> None:
    info = probe()
    assert info.logical_cores >= 1
    assert 1 <= info.usable_cores <= info.logical_cores
    assert info.physical_cores is None or info.physical_cores >= 1
    assert info.memory_bytes > 0
    assert 0 < info.available_memory_bytes <= info.memory_bytes
    assert "CPUExecutionProvider" in info.ort_providers
    assert info.architecture
    assert info.python == ".".join(map(str, sys.version_info[:3]))
    assert {"onnx", "onnxruntime", "numpy"} <= info.libraries.keys()
    assert info.cgroup_cpu_limit is None or info.cgroup_cpu_limit > 0
    assert set(info.cpu_features) <= set(hardware.RELEVANT_FEATURES)


def test_probe_is_cached() -> None:
    assert probe() is probe()


def test_probe_does_not_import_torch() -> None:
    code = "import sys; from inferopt.hardware import probe; probe(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_to_json_round_trips() -> None:
    info = probe()
    data = json.loads(json.dumps(info.to_json()))
    assert data["logical_cores"] == info.logical_cores
    assert data["cpu_features"] == list(info.cpu_features)
    assert data["libraries"] == info.libraries


def test_fingerprint_is_stable_and_sensitive() -> None:
    info = probe()
    assert info.fingerprint() == probe().fingerprint()
    assert len(info.fingerprint()) == 12
    assert dataclasses.replace(info, cpu_model="other").fingerprint() != info.fingerprint()
    assert dataclasses.replace(info, gpus=("X",)).fingerprint() != info.fingerprint()
    changed = dict(info.libraries, onnxruntime="0.0.0")
    assert dataclasses.replace(info, libraries=changed).fingerprint() != info.fingerprint()


def test_fingerprint_ignores_available_memory() -> None:
    info = probe()
    other = dataclasses.replace(info, available_memory_bytes=info.available_memory_bytes // 2)
    assert other.fingerprint() == info.fingerprint()


def test_info_is_hashable() -> None:
    assert hash(probe()) == hash(probe())


def test_table_renders() -> None:
    console = Console(width=200, record=True)
    console.print(table(probe()))
    text = console.export_text()
    assert "CPUExecutionProvider" in text
    assert "GiB" in text


# Parsers on sample texts.


def test_parse_cpuinfo_intel_vnni() -> None:
    model, features, physical = parse_cpuinfo(INTEL_AVX512_VNNI)
    assert model == "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz"
    assert features == (
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512_vnni",
    )
    assert physical == 2  # hyperthreads share core id 0


def test_parse_cpuinfo_amd_without_vnni() -> None:
    model, features, physical = parse_cpuinfo(AMD_AVX2)
    assert model == "AMD EPYC 7R32"
    assert features == ("avx", "avx2", "fma", "f16c")
    assert physical == 2  # same core id on two sockets


def test_parse_cpuinfo_arm64() -> None:
    model, features, physical = parse_cpuinfo(ARM64)
    assert model is None
    assert features == ("asimd", "asimdhp", "asimddp", "i8mm", "bf16")
    assert physical is None


def test_parse_cpuinfo_empty() -> None:
    assert parse_cpuinfo("") == (None, (), None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max 100000\n", None),
        ("200000 100000\n", 2.0),
        ("50000 100000", 0.5),
        ("-1 100000", None),  # cgroup v1 "no quota"
        ("", None),
        ("garbage", None),
        ("1 0", None),
    ],
)
def test_parse_cgroup_cpu_max(text: str, expected: float | None) -> None:
    assert parse_cgroup_cpu_max(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max\n", None),
        ("9223372036854771712\n", None),  # cgroup v1 unlimited
        ("2147483648\n", 2147483648),
        ("", None),
        ("0", None),
    ],
)
def test_parse_cgroup_memory_limit(text: str, expected: int | None) -> None:
    assert parse_cgroup_memory_limit(text) == expected


def test_parse_nvidia_smi() -> None:
    text = "NVIDIA H100 80GB HBM3, 81559 MiB\nNVIDIA A10G, 23028 MiB\n\n"
    assert parse_nvidia_smi(text) == (
        "NVIDIA H100 80GB HBM3 (81559 MiB)",
        "NVIDIA A10G (23028 MiB)",
    )
    assert parse_nvidia_smi("") == ()


# Reading cgroup files: v2, v1, and none at all.


def test_cgroup_v2(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text("4294967296\n")
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert read_cgroup_memory_limit(tmp_path) == 4294967296
    assert read_cgroup_cpu_limit(tmp_path) == 1.5


def test_cgroup_v2_unlimited(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert read_cgroup_memory_limit(tmp_path) is None
    assert read_cgroup_cpu_limit(tmp_path) is None


def test_cgroup_v1(tmp_path: Path) -> None:
    (tmp_path / "memory").mkdir()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("1073741824\n")
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert read_cgroup_memory_limit(tmp_path) == 1073741824
    assert read_cgroup_cpu_limit(tmp_path) == 4.0


def test_missing_files_give_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere"
    assert read_cgroup_memory_limit(missing) is None
    assert read_cgroup_cpu_limit(missing) is None
    monkeypatch.setattr(hardware, "CPUINFO", missing / "cpuinfo")
    monkeypatch.setattr(hardware, "CGROUP_ROOT", missing)
    monkeypatch.setattr(hardware, "RAPL_ENERGY", missing / "energy_uj")
    monkeypatch.setattr("inferopt.hardware.shutil.which", lambda _: None)
    probe.cache_clear()
    try:
        info = probe()
    finally:
        probe.cache_clear()
    assert info.cpu_model is None
    assert info.cpu_features == ()
    assert info.cgroup_memory_limit_bytes is None
    assert info.cgroup_cpu_limit is None
    assert info.gpus == ()
    assert info.rapl_available is False
    assert info.logical_cores >= 1


def test_nvidia_smi_timeout_gives_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    def hang(*args: object, **kwargs: object) -> None:
        raise subprocess.TimeoutExpired(cmd="nvidia-smi", timeout=5)

    monkeypatch.setattr("inferopt.hardware.shutil.which", lambda _: "/usr/bin/nvidia-smi")
    monkeypatch.setattr("inferopt.hardware.subprocess.run", hang)
    assert hardware._gpus() == ()


# Derived fast paths.


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        (("avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"), "AMX"),
        (("avx2", "avx512f", "avx512_vnni"), "AVX-512 VNNI"),
        (("avx2", "avx_vnni"), "AVX-VNNI"),
        (("avx", "avx2", "fma"), AVX2_NO_VNNI),
        (("avx",), "none"),
        ((), "none"),
        (("asimd", "asimddp"), "Arm dot product (asimddp)"),
        (("asimd", "asimddp", "i8mm"), "Arm I8MM"),
    ],
)
def test_int8_fast_path(features: tuple[str, ...], expected: str) -> None:
    assert _info(*features).int8_fast_path == expected


def test_vnni_fp16_bf16_flags() -> None:
    assert _info("avx512_vnni").has_vnni
    assert _info("avx_vnni").has_vnni
    assert not _info("avx2").has_vnni
    assert _info("avx512_fp16").fp16_fast_path
    assert not _info("amx_bf16").fp16_fast_path
    assert _info("avx512_bf16").bf16_fast_path
    assert _info("amx_bf16").bf16_fast_path
    assert not _info("avx2", "avx512f").bf16_fast_path
