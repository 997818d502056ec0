"""The machine a measurement ran on: CPU, ISA features, cores, memory, container limits, GPUs,
onnxruntime providers and library versions.

Linux x86-64 is the main target, but the probe must never crash elsewhere (macOS, arm64, a
container without /proc or /sys): anything it cannot read becomes None or empty. The parsers are
pure functions of file text so they can be tested on sample texts from other machines.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
from rich.table import Table

CPUINFO = Path("/proc/cpuinfo")
CGROUP_ROOT = Path("/sys/fs/cgroup")
RAPL_ENERGY = Path("/sys/class/powercap/intel-rapl:0/energy_uj")
NVIDIA_SMI_TIMEOUT_S = 5.0

# Features that decide which kernels onnxruntime/torch pick; order here is the reported order, so
# the fingerprint does not depend on the order the kernel lists flags in.
RELEVANT_FEATURES = (
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
    "neon", "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2",
)  # fmt: skip

LIBRARIES = ("onnx", "onnxruntime", "onnxscript", "onnx_ir", "numpy", "torch", "transformers")
# onnxruntime may be installed under a GPU or OpenVINO build's distribution name.
_ORT_DISTS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino")

# cgroup v1 reports "unlimited" as a huge page-rounded number rather than "max".
_UNLIMITED_BYTES = 1 << 60


@dataclass(frozen=True)
class HardwareInfo:
    """What a measurement needs to record about the machine. Unknown fields are None."""

    cpu_model: str | None
    architecture: str
    physical_cores: int | None
    logical_cores: int
    usable_cores: int
    cpu_features: tuple[str, ...]
    memory_bytes: int
    available_memory_bytes: int
    cgroup_memory_limit_bytes: int | None
    cgroup_cpu_limit: float | None
    ort_providers: tuple[str, ...]
    gpus: tuple[str, ...]
    os: str
    python: str
    # Excluded from hash (dicts are unhashable) but still compared.
    libraries: dict[str, str] = field(default_factory=dict, hash=False)
    rapl_available: bool = False

    @property
    def has_vnni(self) -> bool:
        return "avx512_vnni" in self.cpu_features or "avx_vnni" in self.cpu_features

    @property
    def int8_fast_path(self) -> str:
        """How int8 matmuls run here, in one line."""
        features = set(self.cpu_features)
        for flag, path in (
            ("amx_int8", "AMX"),
            ("avx512_vnni", "AVX-512 VNNI"),
            ("avx_vnni", "AVX-VNNI"),
            ("avx2", "AVX2 (no VNNI: u8s8 products can saturate; prefer u8u8 or reduce_range)"),
            ("i8mm", "Arm I8MM"),
            ("asimddp", "Arm dot product (asimddp)"),
        ):
            if flag in features:
                return path
        return "none"

    @property
    def fp16_fast_path(self) -> bool:
        return "avx512_fp16" in self.cpu_features

    @property
    def bf16_fast_path(self) -> bool:
        return "avx512_bf16" in self.cpu_features or "amx_bf16" in self.cpu_features

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict (tuples become lists)."""
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """A short hash of what affects performance; equal fingerprints mean comparable runs."""
        keys = (
            "cpu_model", "architecture", "physical_cores", "logical_cores", "usable_cores",
            "cpu_features", "memory_bytes", "cgroup_memory_limit_bytes", "cgroup_cpu_limit",
            "ort_providers", "gpus", "libraries",
        )  # fmt: skip
        data = self.to_json()
        blob = json.dumps({k: data[k] for k in keys}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def parse_cpuinfo(text: str) -> tuple[str | None, tuple[str, ...], int | None]:
    """(model name, relevant features present, physical cores) from /proc/cpuinfo text."""
    model: str | None = None
    flags: set[str] = set()
    cores: set[tuple[str, str]] = set()
    physical_id = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "model name" and model is None:
            model = value
        elif key in ("flags", "Features"):  # x86 says flags, arm says Features
            flags.update(value.split())
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            cores.add((physical_id, value))
    features = tuple(f for f in RELEVANT_FEATURES if f in flags)
    return model, features, len(cores) or None


def parse_cgroup_cpu_max(text: str) -> float | None:
    """CPUs allowed by cgroup v2 cpu.max ("quota period"); None for "max", malformed or <= 0."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = float(parts[0]), float(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def parse_cgroup_memory_limit(text: str) -> int | None:
    """Bytes from memory.max / memory.limit_in_bytes; None for "max", v1's huge value or junk."""
    try:
        value = int(text.strip())
    except ValueError:
        return None
    return value if 0 < value < _UNLIMITED_BYTES else None


def parse_nvidia_smi(text: str) -> tuple[str, ...]:
    """GPUs from `nvidia-smi --query-gpu=name,memory.total --format=csv,noheader`."""
    gpus = []
    for line in text.splitlines():
        name, _, memory = (p.strip() for p in line.partition(","))
        if name:
            gpus.append(f"{name} ({memory})" if memory else name)
    return tuple(gpus)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def read_cgroup_memory_limit(root: Path) -> int | None:
    """The container's memory limit under a cgroup mount (v2 first, then v1), None if unlimited."""
    for path in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        text = _read(path)
        if text is not None:
            return parse_cgroup_memory_limit(text)
    return None


def read_cgroup_cpu_limit(root: Path) -> float | None:
    """The container's CPU quota in CPUs under a cgroup mount (v2 first, then v1), or None."""
    text = _read(root / "cpu.max")
    if text is not None:
        return parse_cgroup_cpu_max(text)
    quota, period = (_read(root / "cpu" / f"cpu.cfs_{k}_us") for k in ("quota", "period"))
    return parse_cgroup_cpu_max(f"{quota} {period}") if quota and period else None


def _gpus() -> tuple[str, ...]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ()
    cmd = [exe, "--query-gpu=name,memory.total", "--format=csv,noheader"]
    try:  # a wedged driver can make nvidia-smi hang; the timeout kills it
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return ()
    return parse_nvidia_smi(done.stdout) if done.returncode == 0 else ()


def _ort_providers() -> tuple[str, ...]:
    try:
        import onnxruntime
    except ImportError:
        return ()
    return tuple(onnxruntime.get_available_providers())


def _libraries() -> dict[str, str]:
    # Metadata only: importing torch or transformers would cost seconds.
    found = {}
    for name in LIBRARIES:
        for dist in _ORT_DISTS if name == "onnxruntime" else (name,):
            try:
                found[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return found


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):  # Linux only; containers often pin fewer CPUs
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def probe() -> HardwareInfo:
    """Probe this machine once per process (it reads /proc and may run nvidia-smi)."""
    model, features, physical = parse_cpuinfo(_read(CPUINFO) or "")
    memory = psutil.virtual_memory()
    return HardwareInfo(
        cpu_model=model,
        architecture=platform.machine(),
        physical_cores=physical or psutil.cpu_count(logical=False),
        logical_cores=os.cpu_count() or 1,
        usable_cores=_usable_cores(),
        cpu_features=features,
        memory_bytes=int(memory.total),
        available_memory_bytes=int(memory.available),
        cgroup_memory_limit_bytes=read_cgroup_memory_limit(CGROUP_ROOT),
        cgroup_cpu_limit=read_cgroup_cpu_limit(CGROUP_ROOT),
        ort_providers=_ort_providers(),
        gpus=_gpus(),
        os=platform.platform(),
        python=platform.python_version(),
        libraries=_libraries(),
        # Try reading rather than checking permissions: it is root-only on many kernels.
        rapl_available=_read(RAPL_ENERGY) is not None,
    )


def _gib(n: int | None) -> str:
    return "unlimited" if n is None else f"{n / 2**30:.1f} GiB"


def table(info: HardwareInfo) -> Table:
    """The probe as a two-column table for humans."""
    cpus = "unlimited" if info.cgroup_cpu_limit is None else f"{info.cgroup_cpu_limit:g} CPUs"
    cores = f"{info.physical_cores or '?'} physical, {info.logical_cores} logical"
    rows = (
        ("CPU", f"{info.cpu_model or 'unknown'} ({info.architecture})"),
        ("Cores", f"{cores}, {info.usable_cores} usable"),
        ("Features", " ".join(info.cpu_features) or "none detected"),
        ("int8 fast path", info.int8_fast_path),
        ("fp16 / bf16 fast path", f"{info.fp16_fast_path} / {info.bf16_fast_path}"),
        ("Memory", f"{_gib(info.memory_bytes)} ({_gib(info.available_memory_bytes)} available)"),
        ("cgroup limits", f"memory {_gib(info.cgroup_memory_limit_bytes)}, cpu {cpus}"),
        ("ORT providers", ", ".join(info.ort_providers) or "none"),
        ("GPUs", ", ".join(info.gpus) or "none"),
        ("OS", info.os),
        ("Python", info.python),
        ("Libraries", ", ".join(f"{k} {v}" for k, v in info.libraries.items())),
        ("RAPL energy", "readable" if info.rapl_available else "not readable"),
        ("Fingerprint", info.fingerprint()),
    )
    result = Table(title="Hardware", show_header=False)
    result.add_column("field", style="bold")
    result.add_column("value")
    for name, value in rows:
        result.add_row(name, value)
    return result
