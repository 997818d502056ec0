"""A self-contained HTML report of a Measurement or Comparison: tables and plots (latency
distribution, throughput vs batch size, roofline, op breakdown, thread sweep, memory), every
plot an embedded PNG, so the file opens anywhere with no network and no scripts.

matplotlib's object API (Figure, not pyplot) keeps no global state between reports.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from inferopt.report import console
from inferopt.report.schema import SCHEMA_VERSION, Comparison, Measurement, PointResult, dumps

COLORS = ("#1f77b4", "#d62728")  # first model blue, second red
DPI = 100
LOG_SCALE_SPREAD = 20  # medians spread wider than this share a plot only on a log axis
TOP_OPS = 10

Plot = Callable[[Sequence[Measurement]], Figure]


def write_html(record: Measurement | Comparison, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(record), encoding="utf-8")
    return path


def render_html(record: Measurement | Comparison) -> str:
    measurements = list(record.measurements) if isinstance(record, Comparison) else [record]
    names = " vs ".join(m.model.name for m in measurements)
    sections = [_header(measurements), _tables(record, measurements)]
    sections += [_figure_section(title, plot, measurements) for title, plot in PLOTS]
    sections.append(_notes(measurements))
    body = "\n".join(sections)
    # The record itself, so the page carries its data. Script content is raw text, not HTML:
    # only "</" needs care (it could close the tag), and "<\/" is the same string in JSON.
    data = dumps(record).replace("</", "<\\/")
    return PAGE.format(title=html.escape(f"inferopt profile: {names}"), body=body, data=data)


def figure_png(fig: Figure) -> str:
    """The figure as an <img> with the PNG inline (base64 data URI)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="">'


def _figure_section(title: str, plot: Plot, measurements: Sequence[Measurement]) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{figure_png(plot(measurements))}</section>"


def _label(p: PointResult) -> str:
    return f"b{p.batch}" + (f" s{p.seq}" if p.seq is not None else "")


def plot_latency(measurements: Sequence[Measurement]) -> Figure:
    """Box plots of every run's latency per point; whiskers at p1 and p99."""
    fig = Figure(figsize=(9, 4))
    ax = fig.add_subplot()
    width = 0.8 / len(measurements)
    for i, m in enumerate(measurements):
        positions = np.arange(len(m.points)) + (i - (len(measurements) - 1) / 2) * width
        data = [p.latency.samples_ms or (p.latency.p50_ms,) for p in m.points]
        ax.boxplot(
            data, positions=positions, widths=width * 0.9, whis=(1, 99), showfliers=False,
            patch_artist=True, boxprops={"facecolor": COLORS[i], "alpha": 0.35},
            medianprops={"color": COLORS[i]},
        )  # fmt: skip
        ax.plot([], [], color=COLORS[i], label=m.model.name)
    ax.set_xticks(np.arange(len(measurements[0].points)))
    ax.set_xticklabels([_label(p) for p in measurements[0].points])
    medians = [p.latency.p50_ms for m in measurements for p in m.points]
    logarithmic = max(medians) / min(medians) > LOG_SCALE_SPREAD
    if logarithmic:
        ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("batch size (b) and sequence length (s)")
    ax.set_ylabel("latency per run (ms" + (", log scale)" if logarithmic else ")"))
    ax.legend()
    ax.grid(True, axis="y", which="both", alpha=0.3)
    return fig


def plot_throughput(measurements: Sequence[Measurement]) -> Figure:
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for i, m in enumerate(measurements):
        for seq, style in zip(_seqs(m), ("-o", "--s", ":^", "-.v"), strict=False):
            pts = [p for p in m.points if p.seq == seq]
            label = m.model.name + (f", seq {seq}" if seq is not None else "")
            xs, ys = [p.batch for p in pts], [p.throughput_per_s for p in pts]
            ax.plot(xs, ys, style, color=COLORS[i], label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("inferences per second")
    ax.legend()
    ax.grid(True, alpha=0.3)
    return fig


def plot_roofline(measurements: Sequence[Measurement]) -> Figure:
    """Achieved FLOP/s against arithmetic intensity, under the machine's measured roofs."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    peaks = measurements[0].peaks
    intensities = [
        p.roofline.intensity_flops_per_byte
        for m in measurements
        for p in m.points
        if p.roofline.intensity_flops_per_byte > 0  # a log axis cannot show a model with no FLOPs
    ] or [1.0]
    x = np.logspace(np.log10(min(intensities) / 4), np.log10(max(intensities) * 8), 200)
    memory_roof = peaks.bandwidth_bytes_per_s * x
    bandwidth = f"{console.fmt_bytes(peaks.bandwidth_bytes_per_s)}/s"
    fp32 = f"fp32 roof: {console.fmt_count(peaks.fp32_flops_per_s, 'FLOP/s')}, {bandwidth}"
    int8 = f"int8 roof: {console.fmt_count(peaks.int8_ops_per_s, 'OP/s')}"
    ax.plot(x, np.minimum(memory_roof, peaks.fp32_flops_per_s), "k-", label=fp32)
    ax.plot(x, np.minimum(memory_roof, peaks.int8_ops_per_s), "k--", label=int8)
    for i, m in enumerate(measurements):
        shown = [p for p in m.points if p.roofline.achieved_flops_per_s > 0]
        xs = [p.roofline.intensity_flops_per_byte for p in shown]
        ys = [p.roofline.achieved_flops_per_s for p in shown]
        ax.scatter(xs, ys, color=COLORS[i], label=m.model.name, zorder=3)
        for p, px, py in zip(shown, xs, ys, strict=True):
            ax.annotate(_label(p), (px, py), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP per byte of estimated traffic)")
    ax.set_ylabel("achieved FLOP/s")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    return fig


def plot_ops(measurements: Sequence[Measurement]) -> Figure:
    fig = Figure(figsize=(9, 0.5 + 0.35 * TOP_OPS * 1.1))
    axes = fig.subplots(1, len(measurements), squeeze=False)[0]
    for i, (ax, m) in enumerate(zip(axes, measurements, strict=True)):
        ops = list(reversed(m.ops.ops[:TOP_OPS]))
        ax.barh([o.op_type for o in ops], [o.ms_per_run for o in ops], color=COLORS[i])
        ax.set_xlabel("ms per run (kernel time)")
        ax.set_title(f"{m.model.name}, {console.where(m.ops.batch, m.ops.seq)}", fontsize=10)
        for y, o in enumerate(ops):
            ax.annotate(f"{o.share:.0%}", (o.ms_per_run, y), xytext=(3, -3),
                        textcoords="offset points", fontsize=8)  # fmt: skip
    fig.tight_layout()
    return fig


def plot_threads(measurements: Sequence[Measurement]) -> Figure:
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    for i, m in enumerate(measurements):
        trials = m.threads.trials
        ys = np.array([t.p50_ms for t in trials])
        errors = [ys - [t.ci95_low_ms for t in trials], [t.ci95_high_ms for t in trials] - ys]
        ax.errorbar([t.threads for t in trials], ys, yerr=errors, fmt="-o", capsize=4,
                    color=COLORS[i], label=m.model.name)  # fmt: skip
    ax.set_xlabel("intra-op threads")
    ax.set_ylabel("p50 latency (ms) with 95% CI")
    ax.set_xticks(sorted({t.threads for m in measurements for t in m.threads.trials}))
    ax.legend()
    ax.grid(True, alpha=0.3)
    return fig


def plot_memory(measurements: Sequence[Measurement]) -> Figure:
    fig = Figure(figsize=(9, 3.8))
    ax = fig.add_subplot()
    if all(m.memory is None for m in measurements):
        ax.text(0.5, 0.5, "memory not measured", ha="center", va="center", transform=ax.transAxes)
        return fig
    width = 0.8 / (2 * len(measurements))
    for i, m in enumerate(measurements):
        if m.memory is None:
            continue
        base = np.arange(len(m.points)) + (2 * i - len(measurements) + 0.5) * width
        arena = [p.peak_added_bytes / 2**20 for p in m.memory.points]
        bare = [(p.peak_added_no_arena_bytes or 0) / 2**20 for p in m.memory.points]
        ax.bar(base, arena, width, color=COLORS[i], label=f"{m.model.name}, arena on")
        ax.bar(base + width, bare, width, color=COLORS[i], alpha=0.4, label="arena off")
    ax.set_xticks(np.arange(len(measurements[0].points)))
    ax.set_xticklabels([_label(p) for p in measurements[0].points])
    ax.set_ylabel("peak RSS added by running (MiB)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def _seqs(m: Measurement) -> list[int | None]:
    return list(dict.fromkeys(p.seq for p in m.points))


PLOTS: tuple[tuple[str, Plot], ...] = (
    (
        "Latency distribution (every run after warm-up; box: p25-p75, whiskers: p1-p99)",
        plot_latency,
    ),
    ("Throughput vs batch size", plot_throughput),
    ("Roofline: achieved FLOP/s against this machine's measured peaks", plot_roofline),
    ("Where the time goes (ONNX Runtime profiler, top op types)", plot_ops),
    ("Intra-op thread sweep", plot_threads),
    ("Memory added by running (fresh process per model)", plot_memory),
)


def _header(measurements: Sequence[Measurement]) -> str:
    m = measurements[0]
    hw = m.machine.hardware
    names = " vs ".join(html.escape(x.model.name) for x in measurements)
    return (
        f"<h1>inferopt profile: {names}</h1><p class=meta>{html.escape(str(hw.get('cpu_model')))}"
        f", {m.machine.usable_cores} usable cores, fingerprint {m.machine.fingerprint}, "
        f"{html.escape(m.created_at)}, schema {SCHEMA_VERSION}</p>"
    )


def _tables(record: Measurement | Comparison, measurements: Sequence[Measurement]) -> str:
    rows = []
    for m in measurements:
        for p in m.points:
            lat, roof = p.latency, p.roofline
            memory = console.fmt_bytes(p.memory.peak_added_bytes) if p.memory else "-"
            rows.append(
                f"<tr><td>{html.escape(m.model.name)}</td><td>{console.shape(p)}</td>"
                f"<td>{console.fmt_ms(lat.p50_ms)}</td><td>{console.fmt_ms(lat.p90_ms)}</td>"
                f"<td>{console.fmt_ms(lat.p99_ms)}</td><td>±{lat.ci95_halfwidth_pct:.1f}%</td>"
                f"<td>{lat.runs}</td><td>{p.throughput_per_s:,.1f}</td>"
                f"<td>{console.fmt_count(roof.achieved_flops_per_s)}</td>"
                f"<td>{roof.fraction_of_fp32_peak:.1%} / {roof.fraction_of_int8_peak:.1%}</td>"
                f"<td>{memory}</td><td>{p.energy.joules_per_inference:.3g}</td>"
                f"<td>{p.energy.cost_per_million:.3g}</td></tr>"
            )
    table = _table(("model", *console.POINT_COLUMNS), rows)
    if isinstance(record, Comparison):
        table += _ratio_table(record)
    return f"<section><h2>Figures</h2>{table}</section>"


def _ratio_table(c: Comparison) -> str:
    a, b = (m.model.name for m in c.measurements)
    rows = [
        f"<tr><td>{r.batch}" + (f" x {r.seq}" if r.seq else "") + f"</td><td>{r.p50_ratio:.3f}"
        f"</td><td>{r.p50_ratio_low:.3f} - {r.p50_ratio_high:.3f}</td>"
        f"<td>{r.throughput_ratio:.3f}</td></tr>"
        for r in c.ratios
    ]
    title = f"<h3>{html.escape(b)} / {html.escape(a)}, runs interleaved</h3>"
    return title + _table(("batch x seq", "p50 ratio", "95% bounds", "throughput ratio"), rows)


def _table(head: Sequence[str], rows: Sequence[str]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _notes(measurements: Sequence[Measurement]) -> str:
    items = []
    for m in measurements:
        uncounted = ", ".join(f"{k} x{v}" for k, v in m.compute.not_counted.items()) or "none"
        items.append(f"{m.model.name}: energy {m.cost.energy_note}; ops not counted: {uncounted}")
        items += [f"{m.model.name}: {w}" for w in m.warnings]
    lis = "".join(f"<li>{html.escape(i)}</li>" for i in items)
    return f"<section><h2>Notes and warnings</h2><ul>{lis}</ul></section>"


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
h1 {{ font-size: 1.5em; }} h2 {{ font-size: 1.15em; margin-top: 1.6em; }}
.meta {{ color: #666; }} img {{ max-width: 100%; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 0.3em 0.6em; text-align: right; }}
th {{ background: #f4f4f4; }}
</style></head>
<body>
{body}
<script type="application/json" id="measurement">{data}</script>
</body></html>
"""
