"""Rich tables of a Measurement or Comparison for the terminal."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from inferopt.report.schema import Comparison, Measurement, PointResult

TOP_OPS = 8
POINT_COLUMNS = (
    *("batch x seq", "p50", "p90", "p99", "median 95% CI", "runs", "throughput/s", "FLOP/s"),
    *("fp32 / int8 peak", "peak RSS added", "J / inference", "cost / 1M"),
)


def fmt_ms(ms: float) -> str:
    return f"{ms * 1e3:.1f} µs" if ms < 0.1 else f"{ms:.3g} ms" if ms < 100 else f"{ms:.0f} ms"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def fmt_count(n: float, unit: str = "") -> str:
    for prefix, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {prefix}{unit}"
    return f"{n:.3g} {unit}".strip()


def shape(point: PointResult) -> str:
    return f"{point.batch}" + (f" x {point.seq}" if point.seq is not None else "")


def measurement(m: Measurement) -> RenderableType:
    """Everything about one model: summary, points, top ops, thread sweep, warnings."""
    parts: list[RenderableType] = [summary(m), latency(m), costs(m), top_ops(m), thread_sweep(m)]
    parts += [Text(f"! {w}", style="yellow") for w in m.warnings]
    return Group(*parts)


def summary(m: Measurement) -> Table:
    table = Table(title=f"{m.model.name}: what it costs to run", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in summary_rows(m):
        table.add_row(key, Text(value))
    return table


def summary_rows(m: Measurement) -> list[tuple[str, str]]:
    compute, peaks, size, best = m.compute, m.peaks, m.size, m.best_throughput
    ref = where(compute.batch, compute.seq)
    uncounted = ", ".join(f"{op} x{n}" for op, n in compute.not_counted.items()) or "none"
    dtypes = ", ".join(f"{k} {fmt_count(v)}" for k, v in size.parameters_by_dtype.items())
    flops = f"{fmt_count(compute.total_flops, 'FLOP')} ({fmt_count(compute.total_macs, 'MAC')})"
    cached = "cached" if peaks.from_cache else "measured now"
    return [
        ("machine", f"{m.machine.hardware.get('cpu_model')}, {m.machine.usable_cores} usable "
                    f"cores, fingerprint {m.machine.fingerprint}"),
        ("size", f"{fmt_bytes(size.serialized_bytes)}, {fmt_count(size.parameters)} "
                 f"parameters ({dtypes})"),
        ("compute", f"{flops} at {ref}; not counted: {uncounted}"),
        ("best throughput", f"{best.throughput_per_s:,.1f} /s at {where(best.batch, best.seq)}"),
        ("threads", f"best {m.threads.best_threads} of "
                    f"{', '.join(str(t.threads) for t in m.threads.trials)} at {ref}"),
        ("memory to load", _load_memory(m)),
        ("machine peaks", f"fp32 {fmt_count(peaks.fp32_flops_per_s, 'FLOP/s')}, int8 "
                          f"{fmt_count(peaks.int8_ops_per_s, 'OP/s')}, memory "
                          f"{fmt_bytes(peaks.bandwidth_bytes_per_s)}/s ({cached})"),
        ("energy", m.cost.energy_note),
        ("cost basis", f"{m.cost.price_per_hour:g} per machine-hour"),
    ]  # fmt: skip


def where(batch: int, seq: int | None) -> str:
    return f"batch {batch}" + (f", seq {seq}" if seq is not None else "")


def _load_memory(m: Measurement) -> str:
    if m.memory is None:
        return "not measured"
    return (
        f"+{fmt_bytes(m.memory.load_retained_bytes)} RSS "
        f"(peak +{fmt_bytes(m.memory.load_peak_bytes)} while loading)"
    )


def latency(m: Measurement) -> Table:
    table = Table(title="latency of one run, warm-up excluded")
    for column in ("batch x seq", "p50", "p90", "p99", "mean", "median 95% CI", "runs"):
        table.add_column(column, justify="right")
    for p in m.points:
        lat = p.latency
        bounds = f"{fmt_ms(lat.ci95_low_ms)} - {fmt_ms(lat.ci95_high_ms)}"
        ci = f"{bounds} (±{lat.ci95_halfwidth_pct:.1f}%)"
        table.add_row(
            shape(p),
            fmt_ms(lat.p50_ms),
            fmt_ms(lat.p90_ms),
            fmt_ms(lat.p99_ms),
            fmt_ms(lat.mean_ms),
            Text(ci, style="" if lat.stable else "yellow"),
            str(lat.runs),
        )
    return table


def costs(m: Measurement) -> Table:
    table = Table(title="throughput, compute, memory, energy and cost (at the median)")
    for column in ("batch x seq", "items/s", "FLOP/s", "of fp32 / int8 peak", "peak RSS added",
                   "J / item", "cost / 1M"):  # fmt: skip
        table.add_column(column, justify="right")
    for p in m.points:
        roof = p.roofline
        table.add_row(
            shape(p),
            f"{p.throughput_per_s:,.1f}",
            fmt_count(roof.achieved_flops_per_s),
            f"{roof.fraction_of_fp32_peak:.1%} / {roof.fraction_of_int8_peak:.1%}",
            fmt_bytes(p.memory.peak_added_bytes) if p.memory else "-",
            f"{p.energy.joules_per_inference:.3g}",
            f"{p.energy.cost_per_million:.3g}",
        )
    return table


def top_ops(m: Measurement, limit: int = TOP_OPS) -> Table:
    ops = m.ops
    table = Table(
        title=f"where the time goes (ONNX Runtime profiler, {where(ops.batch, ops.seq)}, "
        f"{ops.threads} threads, "
        f"{ops.runs} runs, optimized graph)"
    )
    for column in ("op type", "ms / run", "share", "calls / run"):
        table.add_column(column, justify="right" if column != "op type" else "left")
    for op in ops.ops[:limit]:
        table.add_row(
            op.op_type, f"{op.ms_per_run:.3f}", f"{op.share:.1%}", f"{op.calls_per_run:g}"
        )
    return table


def thread_sweep(m: Measurement) -> Table:
    sweep = m.threads
    table = Table(title=f"intra-op threads ({sweep.usable_cores} usable cores)")
    for column in ("threads", "p50", "95% CI", "runs", ""):
        table.add_column(column, justify="right")
    for t in sweep.trials:
        notes = ["best"] if t.threads == sweep.best_threads else []
        notes += ["oversubscribed"] if t.oversubscribed else []
        ci = f"{fmt_ms(t.ci95_low_ms)} - {fmt_ms(t.ci95_high_ms)}"
        table.add_row(str(t.threads), fmt_ms(t.p50_ms), ci, str(t.runs), ", ".join(notes))
    return table


def comparison(c: Comparison) -> RenderableType:
    """Both models' tables, then the ratios measured interleaved."""
    a, b = c.measurements
    return Group(measurement(a), measurement(b), ratios(c))


def ratios(c: Comparison) -> Table:
    a, b = c.measurements
    table = Table(
        title=f"{b.model.name} / {a.model.name} (runs interleaved; < 1 means {b.model.name} is "
        f"lower). Size {c.size_ratio:.3g}x, FLOPs {c.flops_ratio:.3g}x"
    )
    columns = ("batch x seq", f"p50 {a.model.name}", f"p50 {b.model.name}", "p50 ratio")
    for column in (*columns, "95% bounds", "throughput ratio", "peak RSS ratio"):
        table.add_column(column, justify="right")
    for r, pa, pb in zip(c.ratios, a.points, b.points, strict=True):
        table.add_row(
            shape(pa),
            fmt_ms(pa.latency.p50_ms),
            fmt_ms(pb.latency.p50_ms),
            f"{r.p50_ratio:.3f}",
            f"{r.p50_ratio_low:.3f} - {r.p50_ratio_high:.3f}",
            f"{r.throughput_ratio:.3f}",
            f"{r.peak_memory_ratio:.3f}" if r.peak_memory_ratio is not None else "-",
        )
    return table


def render(record: Measurement | Comparison) -> RenderableType:
    return comparison(record) if isinstance(record, Comparison) else measurement(record)
