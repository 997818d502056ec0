"""`Measurement`: what one model costs to run on one machine, as a typed, versioned record.

The dataclasses below are the schema. `to_json` / `from_json` convert to and from plain JSON, and
`json_schema()` derives the JSON Schema (draft 2020-12) from the same classes, so the record, its
JSON and its published schema cannot drift apart. Units are in the field names (`_ms`, `_bytes`,
`_per_s`). docs/measurement-schema.md explains every field.

Regenerate the published schema file after changing a class (and bump SCHEMA_VERSION):
    python -m inferopt.report.schema > src/inferopt/report/measurement.schema.json
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

# Major: a field removed or changed in meaning; minor: a field added. Readers check the major.
SCHEMA_VERSION = "1.0"
SCHEMA_FILE = Path(__file__).with_name("measurement.schema.json")

StopReason = Literal["ci-target", "time-cap", "max-runs"]
EnergyMethod = Literal["rapl", "cpu-time-estimate"]
MemoryMethod = Literal["vmhwm", "rss-after-run"]


@dataclass(frozen=True)
class LatencyStats:
    """Wall-clock time of one `session.run` call, warm-up excluded."""

    runs: int
    warmup_runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    ci95_low_ms: float  # distribution-free 95% confidence interval of the median
    ci95_high_ms: float
    ci95_halfwidth_pct: float  # half the CI's width, in % of the median
    stable: bool  # the CI is within the target (ProfileConfig.target_ci_pct)
    stop_reason: StopReason
    measured_s: float
    samples_ms: tuple[float, ...] = ()


@dataclass(frozen=True)
class RooflinePoint:
    achieved_flops_per_s: float
    fraction_of_fp32_peak: float
    fraction_of_int8_peak: float
    compute_floor_fp32_ms: float  # latency if every FLOP ran at the fp32 GEMM peak
    compute_floor_int8_ms: float  # ... at the int8 GEMM peak
    memory_floor_ms: float  # latency if the estimated traffic ran at the measured bandwidth
    intensity_flops_per_byte: float


@dataclass(frozen=True)
class EnergyFigures:
    method: EnergyMethod
    joules_per_inference: float
    cpu_seconds_per_inference: float
    cost_per_million: float  # at Measurement.cost.price_per_hour, machine running this alone


@dataclass(frozen=True)
class PointMemory:
    peak_added_bytes: int  # peak RSS while running, above the RSS after loading
    retained_bytes: int  # RSS after the runs, above the RSS after loading (arena and caches)
    peak_added_no_arena_bytes: int | None  # the same with ONNX Runtime's CPU arena disabled
    estimated_activation_bytes: int  # from shapes: the most bytes alive at once, no reuse


@dataclass(frozen=True)
class PointResult:
    """One (batch size, sequence length) point."""

    batch: int
    seq: int | None
    threads: int
    latency: LatencyStats
    throughput_per_s: float  # inferences (batch items) per second at the median latency
    flops: int
    roofline: RooflinePoint
    energy: EnergyFigures
    memory: PointMemory | None


@dataclass(frozen=True)
class ThreadTrial:
    threads: int
    p50_ms: float
    ci95_low_ms: float
    ci95_high_ms: float
    runs: int
    oversubscribed: bool


@dataclass(frozen=True)
class ThreadSweep:
    batch: int
    seq: int | None
    trials: tuple[ThreadTrial, ...]
    best_threads: int
    usable_cores: int
    concurrent_sessions: int
    ort_default_threads: int | None  # what intra_op_num_threads=0 starts
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class OpCount:
    op_type: str
    nodes: int
    flops: int
    macs: int


@dataclass(frozen=True)
class Compute:
    batch: int
    seq: int | None
    total_flops: int
    total_macs: int
    float_macs: int
    int_macs: int
    traffic_bytes: int  # estimate: weights read once, every tensor written once and read once
    by_op_type: tuple[OpCount, ...]
    not_counted: dict[str, int]  # op type -> nodes whose FLOPs are unknown (no formula or shape)


@dataclass(frozen=True)
class OpTime:
    op_type: str
    calls_per_run: float
    ms_per_run: float  # median over the profiled runs of this op type's kernel time in a run
    share: float  # of kernel_ms_per_run


@dataclass(frozen=True)
class OpBreakdown:
    batch: int
    seq: int | None
    threads: int
    runs: int
    kernel_ms_per_run: float  # sum over op types of their median time per run
    ops: tuple[OpTime, ...]
    arena_held_bytes: int | None  # ONNX Runtime's own arena counters, when it reports them
    arena_peak_in_use_bytes: int | None


@dataclass(frozen=True)
class MemoryFigures:
    method: MemoryMethod
    load_peak_bytes: int  # peak RSS while creating the session, above the process before it
    load_retained_bytes: int  # RSS after creating the session, above the process before it
    points: tuple[PointMemory, ...]  # in the order of Measurement.points


@dataclass(frozen=True)
class SizeFigures:
    serialized_bytes: int
    parameters: int
    parameters_by_dtype: dict[str, int]
    bytes_by_dtype: dict[str, int]


@dataclass(frozen=True)
class MachinePeaks:
    fp32_flops_per_s: float
    int8_ops_per_s: float
    bandwidth_bytes_per_s: float
    fingerprint: str
    measured_at: str
    from_cache: bool
    method: str


@dataclass(frozen=True)
class ModelInfo:
    name: str
    source: str
    kind: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    batch_axis: int | None
    seq_axis: int | None


@dataclass(frozen=True)
class MachineInfo:
    fingerprint: str
    usable_cores: int
    load_average_1m: float | None
    hardware: dict[str, Any]


@dataclass(frozen=True)
class BestThroughput:
    batch: int
    seq: int | None
    throughput_per_s: float


@dataclass(frozen=True)
class CostBasis:
    price_per_hour: float
    watts_per_core: float  # used only by the cpu-time energy estimate
    energy_method: EnergyMethod
    energy_note: str


@dataclass(frozen=True)
class Measurement:
    model: ModelInfo
    machine: MachineInfo
    config: dict[str, Any]
    size: SizeFigures
    points: tuple[PointResult, ...]
    best_throughput: BestThroughput
    compute: Compute
    threads: ThreadSweep
    ops: OpBreakdown
    memory: MemoryFigures | None
    peaks: MachinePeaks
    cost: CostBasis
    warnings: tuple[str, ...]
    created_at: str
    schema: Literal["inferopt.measurement"] = "inferopt.measurement"
    schema_version: str = SCHEMA_VERSION

    def point(self, batch: int, seq: int | None) -> PointResult:
        for p in self.points:
            if (p.batch, p.seq) == (batch, seq):
                return p
        raise KeyError(f"no point at batch {batch}, seq {seq}")


@dataclass(frozen=True)
class PointRatio:
    """Second model over first, from runs interleaved A, B, A, B... at one point."""

    batch: int
    seq: int | None
    p50_ratio: float
    p50_ratio_low: float  # conservative bounds from the two medians' 95% CIs
    p50_ratio_high: float
    throughput_ratio: float
    peak_memory_ratio: float | None


@dataclass(frozen=True)
class Comparison:
    measurements: tuple[Measurement, Measurement]
    ratios: tuple[PointRatio, ...]
    size_ratio: float
    flops_ratio: float
    schema: Literal["inferopt.comparison"] = "inferopt.comparison"
    schema_version: str = SCHEMA_VERSION


Record = Measurement | Comparison


def to_json(record: Record) -> dict[str, Any]:
    return dataclasses.asdict(record)


def dumps(record: Record) -> str:
    # allow_nan=False: NaN and infinity are not JSON; a bug that makes one must fail loudly here.
    return json.dumps(to_json(record), indent=1, allow_nan=False)


def from_json(data: dict[str, Any]) -> Record:
    """A Measurement or Comparison from its JSON; ValueError on another schema or major."""
    kinds: dict[str, type[Measurement] | type[Comparison]] = {
        "inferopt.measurement": Measurement,
        "inferopt.comparison": Comparison,
    }
    kind = kinds.get(data.get("schema", ""))
    if kind is None:
        raise ValueError(f"schema must be one of {sorted(kinds)}, got {data.get('schema')!r}")
    major = str(data.get("schema_version", "")).split(".")[0]
    if major != SCHEMA_VERSION.split(".")[0]:
        raise ValueError(f"schema_version {data.get('schema_version')!r} is not {SCHEMA_VERSION}")
    record: Record = _build(kind, data)
    return record


# Hand-written rather than a library (pydantic, cattrs, dacite): the walk is ~40 lines and keeps
# inferopt's dependencies to what the runtime needs.
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, vars(sys.modules[__name__]))


def _build(tp: Any, value: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = _hints(tp)
        return tp(**{f.name: _build(hints[f.name], value[f.name]) for f in _fields(tp, value)})
    if origin in (types.UnionType, typing.Union):
        if value is None:
            return None
        return _build(next(a for a in args if a is not type(None)), value)
    if origin is tuple and args[-1] is Ellipsis:
        return tuple(_build(args[0], v) for v in value)
    if origin is tuple:
        return tuple(_build(a, v) for a, v in zip(args, value, strict=True))
    if origin is dict:
        return {k: _build(args[1], v) for k, v in value.items()}
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def _fields(cls: type, value: dict[str, Any]) -> list[dataclasses.Field[Any]]:
    # Fields added in a later minor version are absent from older files: their defaults apply.
    return [f for f in dataclasses.fields(cls) if f.name in value]


def json_schema() -> dict[str, Any]:
    """The JSON Schema of both documents, derived from the dataclasses."""
    defs: dict[str, Any] = {}
    measurement, comparison = _schema_of(Measurement, defs), _schema_of(Comparison, defs)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://inferopt.dev/schemas/measurement.schema.json",
        "title": f"inferopt measurement and comparison, schema_version {SCHEMA_VERSION}",
        # Dispatch on the "schema" field, so a validator reports the errors of the right kind.
        "if": {"properties": {"schema": {"const": "inferopt.comparison"}}, "required": ["schema"]},
        "then": comparison,
        "else": measurement,
        "$defs": defs,
    }


def _schema_of(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if tp.__name__ not in defs:
            defs[tp.__name__] = {}  # reserve first: recursion must not define it twice
            defs[tp.__name__] = _object_schema(tp, defs)
        return {"$ref": f"#/$defs/{tp.__name__}"}
    if origin in (types.UnionType, typing.Union):
        return {"anyOf": [_schema_of(a, defs) for a in args]}
    if origin is Literal:
        return {"enum": list(args)}
    if origin is tuple and args[-1] is Ellipsis:
        return {"type": "array", "items": _schema_of(args[0], defs)}
    if origin is tuple:
        items = [_schema_of(a, defs) for a in args]
        return {"type": "array", "prefixItems": items, "minItems": len(args), "maxItems": len(args)}
    if origin is dict:
        return {"type": "object", "additionalProperties": _schema_of(args[1], defs)}
    simple = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}
    if tp in simple:
        return {"type": simple[tp]}
    return {}  # Any


def _object_schema(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    hints = _hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    required = [f.name for f in fields if _has_no_default(f)]
    props = {f.name: _schema_of(hints[f.name], defs) for f in fields}
    for name in ("schema", "schema_version"):  # pin the document kind and major version
        if name in props:
            required.append(name)
    if "schema_version" in props:
        props["schema_version"] = {
            "type": "string",
            "pattern": rf"^{SCHEMA_VERSION.split('.')[0]}\.",
        }
    return {"type": "object", "properties": props, "required": required,
            "additionalProperties": False}  # fmt: skip


def _has_no_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


if __name__ == "__main__":
    print(json.dumps(json_schema(), indent=1))
