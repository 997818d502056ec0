"""A benchmark's result as a rich table, a JSON document (fields in docs/bench.md) and a
self-contained HTML page with plots (latency vs load, goodput vs load) in the house style of
inferopt.report.html: every plot an embedded PNG, the JSON record carried in the page. And
the verdict on a failing run: one line when nothing succeeded, a warning when most failed.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import orjson
from matplotlib.figure import Figure
from rich.table import Table

from inferopt.loadgen.run import Point
from inferopt.loadgen.stats import OUTCOMES, Summary, Tally
from inferopt.loadgen.sweep import BenchResult
from inferopt.report.html import COLORS, PAGE, figure_png

SCHEMA = "inferopt-bench/1"
MOSTLY_FAILED = 0.5  # warn when more than this share of the answers were failures


def to_json(result: BenchResult) -> dict[str, Any]:
    t, c = result.target, result.config
    return {
        "schema": SCHEMA,
        "target": {"url": t.address, "model": t.model, "protocol": t.protocol, "binary": t.binary},
        "config": {
            "window_s": c.window_s,
            "warmup_s": c.warmup_s,
            "max_duration_s": c.max_duration_s,
            "stable_windows": c.stable_windows,
            "tolerance": c.tolerance,
            "max_outstanding": c.max_outstanding,
            "slo_ms": c.slo_ms,
            "seed": c.seed,
        },
        "data": result.data,
        "notes": result.notes,
        "stopped": result.stopped,
        "answers": _tally_json(result.tally),
        "points": [_point_json(p) for p in result.points],
    }


def _tally_json(tally: Tally) -> dict[str, Any]:
    return {
        "total": tally.total,
        "ok": tally.ok,
        "failed": tally.failed,
        "by_status": dict(tally.counts.most_common()),
        "messages": tally.messages,
    }


def failure(tally: Tally) -> str | None:
    """One line when no request succeeded (the run measured nothing), else None."""
    if tally.ok:
        return None
    if not tally.total:
        return "no request was answered during the run"
    return f"0 of {tally.total} requests succeeded: {_top(tally)}"


def warning(tally: Tally) -> str | None:
    """A warning when most answers were failures (but some succeeded), else None."""
    if not tally.ok or tally.failed <= MOSTLY_FAILED * tally.total:
        return None
    return (
        f"{tally.failed} of {tally.total} requests failed ({tally.failed / tally.total:.0%}); "
        f"most often {_top(tally)}"
    )


def _top(tally: Tally) -> str:
    top = tally.top_failure()
    assert top is not None, "called only when some requests failed"
    status, count, message = top
    share = "" if count == tally.failed else f" ({count} of them)"
    return f"{status}{share} {message!r}" if message else f"{status}{share}"


def _point_json(p: Point) -> dict[str, Any]:
    server = None
    if p.server is not None:
        s = p.server
        server = {
            "requests_queued": s.requests_queued,
            "queue_ms": s.queue_ms,
            "executions": s.executions,
            "compute_ms": s.compute_ms,
            "batch_size": s.batch_size,
        }
    return {
        "mode": p.load.mode,
        "level": p.load.level,
        "arrival": p.load.arrival if p.load.mode == "open" else None,
        "stable": p.stable,
        **_summary_json(p.summary),
        "generator_cpu": p.generator_cpu,
        "server": server,
        "windows": [
            {"seconds": w.seconds, "throughput_rps": w.throughput, "p99_ms": w.p99_ms}
            for w in p.windows
        ],
    }


def _summary_json(s: Summary) -> dict[str, Any]:
    return {
        "seconds": s.seconds,
        "requests": s.requests,
        "throughput_rps": s.throughput,
        "goodput_rps": s.goodput,
        "latency_ms": {**s.percentiles_ms, "mean": s.mean_ms},
        "outcomes": s.outcomes,
    }


def write_json(result: BenchResult, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # orjson writes NaN (no answer, so no latency) as null, which JSON readers accept.
    path.write_bytes(orjson.dumps(to_json(result), option=orjson.OPT_INDENT_2))
    return path


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.1f}"


def table(result: BenchResult) -> Table:
    t = result.target
    title = f"{t.model} at {t.address} ({t.protocol}{', binary' if t.binary else ''})"
    out = Table(title=title, title_justify="left")
    heads = ["load", "stable", "req/s", "goodput/s", "p50 / p90 / p99 / p99.9 ms"]
    heads += ["refused 429/503/504", "errors other/timeout/dropped", "gen CPU"]
    heads += ["server queue / compute ms, batch"]
    for head in heads:
        out.add_column(head, justify="right")
    for p in result.points:
        s, n = p.summary, p.summary.outcomes
        out.add_row(
            p.load.label + (f" {p.load.arrival}" if p.load.mode == "open" else ""),
            "yes" if p.stable else "no",
            f"{s.throughput:,.1f}",
            f"{s.goodput:,.1f}",
            " / ".join(_ms(s.percentiles_ms[k]) for k in ("p50", "p90", "p99", "p99.9")),
            f"{n['429']}/{n['503']}/{n['504']}",
            f"{n['other']}/{n['timeout']}/{n['dropped']}",
            f"{p.generator_cpu:.0%}",
            _server_cell(p),
        )
    return out


def _server_cell(p: Point) -> str:
    s = p.server
    if s is None:
        return "-"
    return f"{_ms(s.queue_ms)} / {_ms(s.compute_ms)}, {s.batch_size:.1f}"


def plot_latency(result: BenchResult) -> Figure:
    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    levels = [p.load.level for p in result.points]
    for key, style in (("p50", "-o"), ("p99", "--s")):
        ax.plot(levels, [p.summary.percentiles_ms[key] for p in result.points], style, label=key)
    if result.config.slo_ms is not None:
        ax.axhline(result.config.slo_ms, color=COLORS[1], linestyle=":", label="SLO")
    ax.set_xlabel(_load_axis(result))
    ax.set_ylabel("latency (ms)")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def plot_goodput(result: BenchResult) -> Figure:
    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    levels = [p.load.level for p in result.points]
    ax.plot(levels, [p.summary.throughput for p in result.points], "-o", label="throughput")
    ax.plot(levels, [p.summary.goodput for p in result.points], "--s", label="goodput")
    ax.set_xlabel(_load_axis(result))
    ax.set_ylabel("requests / s")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def _load_axis(result: BenchResult) -> str:
    closed = result.points[0].load.mode == "closed"
    return "concurrency (requests outstanding)" if closed else "offered rate (requests / s)"


def render_html(result: BenchResult) -> str:
    t = result.target
    heading = f"inferopt bench: {t.model} at {t.address}"
    rows = "".join(_html_row(p) for p in result.points)
    cells = "".join(f"<th>{h}</th>" for h in ("load", "req/s", "goodput/s", "p50", "p99", "p99.9"))
    errors = "".join(f"<th>{o}</th>" for o in OUTCOMES if o != "ok")
    said = [w for w in (failure(result.tally), warning(result.tally)) if w] + result.notes
    sections = [
        f"<h1>{html.escape(heading)}</h1><p class=meta>{html.escape(result.data)}; "
        f"{html.escape(result.stopped)}</p>",
        "".join(f"<p class=meta>{html.escape(line)}</p>" for line in said),
        f"<section><h2>Figures</h2><table><thead><tr>{cells}{errors}</tr></thead>"
        f"<tbody>{rows}</tbody></table></section>",
        f"<section><h2>Latency vs load</h2>{figure_png(plot_latency(result))}</section>",
        f"<section><h2>Goodput vs load</h2>{figure_png(plot_goodput(result))}</section>",
    ]
    data = orjson.dumps(to_json(result)).decode().replace("</", "<\\/")
    return PAGE.format(title=html.escape(heading), body="\n".join(sections), data=data)


def _html_row(p: Point) -> str:
    s = p.summary
    values = [html.escape(p.load.label), f"{s.throughput:,.1f}", f"{s.goodput:,.1f}"]
    values += [_ms(s.percentiles_ms[k]) for k in ("p50", "p99", "p99.9")]
    values += [str(s.outcomes[o]) for o in OUTCOMES if o != "ok"]
    return "<tr>" + "".join(f"<td>{v}</td>" for v in values) + "</tr>"


def write_html(result: BenchResult, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(result), encoding="utf-8")
    return path
