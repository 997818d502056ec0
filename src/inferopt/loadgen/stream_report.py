"""A streaming run's result as rich tables, a JSON document (StreamResult.to_json, fields in
docs/bench.md, "Streams") and a self-contained HTML page in report.py's style: the figures,
then TTFT and ITL distributions and per-request TTFT and e2e over the run, as embedded PNGs.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import orjson
from matplotlib.figure import Figure
from rich.table import Table

from inferopt.loadgen.report import failure, warning
from inferopt.loadgen.streams import StreamResult
from inferopt.report.html import COLORS, PAGE, figure_png

LATENCIES = (("TTFT", "ttft_ms"), ("ITL", "itl_ms"), ("TPOT", "tpot_ms"), ("e2e", "e2e_ms"))
COLUMNS = ("p50", "p90", "p99", "mean")
BINS = 40


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.1f}"


def title(result: StreamResult) -> str:
    c = result.config
    load = c.load.label + (f" {c.load.arrival}" if c.load.mode == "open" else "")
    return f"{c.model} at {c.url} ({c.api}, {load}, max_tokens {c.max_tokens})"


def latency_rows(result: StreamResult) -> list[list[str]]:
    """[name, p50, p90, p99, mean] in ms for TTFT, ITL, TPOT and e2e."""
    s = result.summary
    return [[name, *(_ms(getattr(s, key)[col]) for col in COLUMNS)] for name, key in LATENCIES]


def total_rows(result: StreamResult) -> list[tuple[str, str]]:
    """(figure, value) for throughput, goodput and failures."""
    s, o = result.summary, result.config.objectives
    slo = " and ".join(
        f"{name} <= {value:g} ms"
        for name, value in (("TTFT", o.ttft_ms), ("TPOT", o.tpot_ms))
        if value is not None
    )
    share = "-" if math.isnan(s.goodput_share) else f"{s.goodput_share:.1%}"
    statuses = ", ".join(f"{k}: {n}" for k, n in s.by_status.items()) or "none"
    kinds = ", ".join(f"{k}: {n}" for k, n in s.by_kind.items() if n) or "none"
    return [
        ("requests ok / made", f"{s.ok} / {s.requests} in {s.seconds:.1f} s"),
        ("requests/s", f"{s.requests_per_s:,.2f}"),
        ("output tokens/s", f"{s.output_tokens_per_s:,.1f} ({s.output_tokens} tokens)"),
        (f"goodput ({slo or 'no SLO'})", f"{share}, {s.goodput_per_s:,.2f}/s"),
        ("refused by HTTP status", statuses),
        ("failed by kind", kinds),
    ]


def tables(result: StreamResult) -> tuple[Table, Table]:
    """The latency table (ms) and the totals table; print title(result) above them."""
    latency = Table()
    for head in ("ms", *COLUMNS):
        latency.add_column(head, justify="right")
    for row in latency_rows(result):
        latency.add_row(*row)
    totals = Table(show_header=False)
    totals.add_column(justify="left")
    totals.add_column(justify="right")
    for name, value in total_rows(result):
        totals.add_row(name, value)
    return latency, totals


def write_json(result: StreamResult, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # orjson writes NaN (nothing measured) as null, which JSON readers accept.
    path.write_bytes(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2))
    return path


def plot_distribution(values_ms: list[float], label: str, slo_ms: float | None) -> Figure:
    """A histogram of `values_ms` with p50 and p99 marked (and the objective, if any)."""
    fig = Figure(figsize=(8, 3.5))
    ax = fig.add_subplot()
    finite = np.asarray([v for v in values_ms if math.isfinite(v)], dtype=np.float64)
    if finite.size:
        ax.hist(finite, bins=BINS, color=COLORS[0], alpha=0.8)
        for q, style in ((50, "--"), (99, ":")):
            ax.axvline(float(np.percentile(finite, q)), color="k", linestyle=style, label=f"p{q}")
    if slo_ms is not None:
        ax.axvline(slo_ms, color=COLORS[1], label="SLO")
    ax.set_xlabel(f"{label} (ms)")
    ax.set_ylabel("count")
    if finite.size or slo_ms is not None:
        ax.legend()
    ax.grid(alpha=0.3)
    return fig


def plot_over_time(result: StreamResult) -> Figure:
    """TTFT and e2e of each OK request against when it was sent: a queue building up shows
    as a rising TTFT."""
    fig = Figure(figsize=(8, 3.5))
    ax = fig.add_subplot()
    ok = [t for t in result.timings if t.outcome == "ok"]
    ax.plot([t.sent for t in ok], [t.e2e * 1000.0 for t in ok], ".", label="e2e")
    ax.plot([t.sent for t in ok], [t.ttft * 1000.0 for t in ok], ".", label="TTFT")
    ax.set_xlabel("sent (s from the start)")
    ax.set_ylabel("ms")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def render_html(result: StreamResult) -> str:
    heading = f"inferopt bench: {title(result)}"
    ok = [t for t in result.timings if t.outcome == "ok"]
    said = [w for w in (failure(result.tally), warning(result.tally)) if w]
    said.append(f"prompts: {result.prompts.origin}")
    head = "".join(f"<th>{h}</th>" for h in ("ms", *COLUMNS))
    rows = "".join(_row(r) for r in latency_rows(result))
    totals = "".join(_row(list(r)) for r in total_rows(result))
    o = result.config.objectives
    ttft = plot_distribution([t.ttft * 1000.0 for t in ok], "TTFT", o.ttft_ms)
    itl = plot_distribution([g * 1000.0 for t in ok for g in t.itl], "ITL", None)
    sections = [
        f"<h1>{html.escape(heading)}</h1>",
        "".join(f"<p class=meta>{html.escape(line)}</p>" for line in said),
        f"<section><h2>Figures</h2><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody>"
        f"</table><table><tbody>{totals}</tbody></table></section>",
        f"<section><h2>TTFT distribution</h2>{figure_png(ttft)}</section>",
        f"<section><h2>ITL distribution</h2>{figure_png(itl)}</section>",
        f"<section><h2>Latency over the run</h2>{figure_png(plot_over_time(result))}</section>",
    ]
    data = orjson.dumps(result.to_json()).decode().replace("</", "<\\/")
    return PAGE.format(title=html.escape(heading), body="\n".join(sections), data=data)


def _row(values: list[str]) -> str:
    return "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in values) + "</tr>"


def write_html(result: StreamResult, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(result), encoding="utf-8")
    return path
