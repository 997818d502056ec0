"""`ProfileConfig`: every setting of `inferopt.measure.profile`, declared once, validated with
ValueError. The CLI's `inferopt profile` flags map onto these fields one to one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

from inferopt.errors import InputError
from inferopt.iospec import IOSpec

DEFAULT_BATCH_SIZES = (1, 8, 32)
DEFAULT_SEQ_LENS = (16, 128)

Point = tuple[int, int | None]  # (batch size, sequence length or None for non-sequence models)


@dataclass(frozen=True)
class ProfileConfig:
    # Shapes. None picks defaults that fit the model: DEFAULT_BATCH_SIZES (or 1 when the model
    # has no batch axis), DEFAULT_SEQ_LENS for a model with a sequence axis.
    batch_sizes: tuple[int, ...] | None = None
    seq_lens: tuple[int, ...] | None = None
    # Threads: intra-op counts to sweep (None: 1..usable cores), and how many sessions you will
    # run side by side (serving workers), to flag counts that would oversubscribe the cores.
    threads: tuple[int, ...] | None = None
    concurrent_sessions: int = 1
    # Repeats: stop when the median's 95% CI half-width is within target_ci_pct of it, or when
    # max_time_per_point_s is spent; at least min_runs and min_time_per_point_s, at most
    # max_runs, after warm-up.
    target_ci_pct: float = 2.0
    min_time_per_point_s: float = 1.0
    max_time_per_point_s: float = 8.0
    min_runs: int = 10
    max_runs: int = 10_000
    warmup_runs: int = 3
    warmup_s: float = 0.2
    sweep_time_s: float = 4.0  # the whole thread sweep (all counts interleaved)
    op_profile_runs: int = 10
    # Memory, in fresh processes: runs per point, and a bound on each process's time.
    memory: bool = True
    memory_runs: int = 2
    memory_timeout_s: float = 180.0
    # Energy and cost.
    watts_per_core: float = (
        5.0  # used when RAPL is not readable: roughly a server CPU's TDP / cores
    )
    price_per_hour: float = 1.0  # machine price per hour, any currency
    remeasure_peaks: bool = False  # measure the machine's GEMM peaks again instead of the cache
    keep_samples: bool = True  # every run's latency in the JSON (for plots and re-analysis)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_sizes", "seq_lens", "threads"):
            object.__setattr__(self, name, _sorted_positive(name, getattr(self, name)))
        for name in ("concurrent_sessions", "min_runs", "max_runs", "op_profile_runs"):
            _require(name, getattr(self, name) >= 1, ">= 1")
        _require("memory_runs", self.memory_runs >= 1, ">= 1")
        _require("max_runs", self.max_runs >= self.min_runs, ">= min_runs")
        _require(
            "min_time_per_point_s",
            0 <= self.min_time_per_point_s <= self.max_time_per_point_s,
            "between 0 and max_time_per_point_s",
        )
        for name in ("target_ci_pct", "max_time_per_point_s", "sweep_time_s", "memory_timeout_s"):
            _require(name, getattr(self, name) > 0, "> 0")
        for name in ("warmup_runs", "warmup_s", "watts_per_core", "price_per_hour"):
            _require(name, getattr(self, name) >= 0, ">= 0")

    def to_json(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _require(name: str, ok: bool, rule: str) -> None:
    if not ok:
        raise ValueError(f"ProfileConfig.{name} must be {rule}")


def _sorted_positive(name: str, values: Sequence[int] | None) -> tuple[int, ...] | None:
    if values is None:
        return None
    if isinstance(values, int | str) or len(values) == 0:
        raise ValueError(f"ProfileConfig.{name} must be a non-empty sequence of ints or None")
    bad = [v for v in values if not isinstance(v, int) or isinstance(v, bool) or v < 1]
    if bad:
        raise ValueError(f"ProfileConfig.{name} must hold integers >= 1, got {bad}")
    return tuple(sorted(set(values)))


def plan_points(io: IOSpec, config: ProfileConfig, model_name: str) -> tuple[Point, ...]:
    """Every (batch, seq) to measure, smallest batch first; InputError names the CLI flag when
    a setting does not fit the model."""
    if io.batch_axis is None and config.batch_sizes not in (None, (1,)):
        raise InputError(f"--batch-sizes: {model_name} has no batch axis; only batch size 1 runs")
    if io.seq_axis is None and config.seq_lens is not None:
        raise InputError(f"--seq-lens: {model_name} has no sequence axis; leave it out")
    batches = config.batch_sizes or (DEFAULT_BATCH_SIZES if io.batch_axis is not None else (1,))
    seqs: tuple[int | None, ...] = (
        (config.seq_lens or DEFAULT_SEQ_LENS) if io.seq_axis is not None else (None,)
    )
    return tuple((b, s) for s in seqs for b in batches)


def reference_point(points: Sequence[Point]) -> Point:
    """Where the thread sweep, op profile and headline FLOPs are taken: the smallest batch at
    the longest sequence (a single request of realistic length)."""
    batch = min(b for b, _ in points)
    seqs = [s for _, s in points if s is not None]
    return batch, max(seqs) if seqs else None
