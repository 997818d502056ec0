"""What a search shows: report.json (every candidate with its figures, the choice, the Pareto
sets), report.html (the same as tables plus the two Pareto plots: fidelity against speed and
against size) and a short report.md."""

from __future__ import annotations

import dataclasses
import html
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure

from inferopt.measure.interval import samples_needed
from inferopt.report.html import figure_png
from inferopt.search.fidelity import describe_checks
from inferopt.search.metric import NOISE, budget_text, budget_warnings, noise_line
from inferopt.search.select import ORIGINAL, Scored, pareto

if TYPE_CHECKING:
    from inferopt.search.auto import SearchResult

THROUGHPUT_INPUTS = (
    "consecutive held-out samples, each cut or padded to the stated tokens with the model's "
    "own padding (attention mask 0), as bulk embedding with padding='max_length' feeds it"
)
GAIN_LABEL = {
    "latency": "speed-up at batch 1 (x)",
    "throughput": "throughput ratio (x)",
    "size": "size reduction (x)",
    "memory": "memory reduction (x)",
}


def record(result: SearchResult) -> dict[str, Any]:
    rows = result.scored()
    timed = timed_rows(result)
    speed_front = {s.name for s in pareto(timed)}
    size_front = {s.name for s in pareto(timed, lambda s: 1 / s.size_ratio)}
    budget = result.config.budget
    candidates = []
    for outcome, row in zip(result.outcomes, rows, strict=True):
        measured = outcome.fidelity is not None
        candidates.append(
            {
                **outcome.to_json(),
                "cached": outcome.cached,
                "drop": row.drop if measured else None,
                "drop_high": row.drop_high if measured else None,
                "gain": row.gain if measured else None,
                "within_budget": measured and budget.admits(row, result.baseline.score),
                "pareto_speed": row.name in speed_front,
                "pareto_size": row.name in size_front,
            }
        )
    chosen = result.chosen
    return {
        "source": result.source,
        "metric": result.metric,
        "data": result.data_origin,
        "objective": result.config.objective,
        "max_drop": {**dataclasses.asdict(budget), "text": budget_text(budget, result.metric)},
        "budget_rule": budget.rule_text(),
        "checks": result.checks,
        "fidelity_notes": honesty(result),
        "time_budget_s": result.config.time_budget_s,
        "wall_s": round(result.wall_s, 1),
        "baseline": baseline_json(result),
        "chosen": chosen.text if chosen else (ORIGINAL if result.kept_original else None),
        "closest": [s.name for s in result.choice.closest],
        "threads": dataclasses.asdict(result.threads) if result.threads else None,
        "objectives": objectives_json(result),
        "skipped_for_time": result.skipped,
        "candidates": candidates,
    }


def objectives_json(result: SearchResult) -> dict[str, Any]:
    """The chosen model against the baseline on batch-1 latency and on throughput at the
    stated shape, whichever was searched for: each interleaved comparison (ms per feed: per
    sample at batch 1, per batch for throughput) with the inputs it was timed on."""
    found = {}
    for name, timed in result.objectives.items():
        entry = {**dataclasses.asdict(timed), "timed_at": result.timed_at.get(name)}
        if name == "throughput":
            size = result.config.throughput.batch
            entry["baseline_samples_per_s"] = round(size * 1e3 / timed.baseline_ms, 1)
            entry["candidate_samples_per_s"] = round(size * 1e3 / timed.candidate_ms, 1)
            if "tokens" in str(entry["timed_at"]):  # a sequence model: its stated length
                entry["inputs"] = THROUGHPUT_INPUTS
        found[name] = entry
    return found


def speed_summary(result: SearchResult) -> str:
    """One line: the chosen model's speed-up on each objective, e.g. for the report's top."""
    return "; ".join(
        f"{timed.speedup:.2f}x at {result.timed_at.get(name, name)}"
        for name, timed in result.objectives.items()
    )


def baseline_json(result: SearchResult) -> dict[str, Any]:
    base = result.baseline
    data = {k: v for k, v in vars(base).items() if k != "noise"}
    data["noise_floor"] = base.noise.to_json() if base.noise is not None else None
    return data


def honesty(result: SearchResult) -> list[str]:
    """What the figures above rest on, in lines: the budget rule, what was checked, the
    metric's noise floor, and whether the data can resolve the budget at all."""
    budget = result.config.budget
    lines = [f"budget: max drop {budget_text(budget, result.metric)}; {budget.rule_text()}"]
    if result.checks:
        lines.append(f"checked on: {describe_checks(result.checks)}")
    noise = result.baseline.noise
    if noise is not None:
        lines.append(noise_line(noise, result.metric))
    samples = result.checks.get("samples", 0) if result.checks else 0
    measured = [(NOISE, noise)] if noise is not None else []
    measured += [
        (o.text, o.fidelity) for o in result.outcomes
        if o.fidelity is not None and not o.rejected and o.fidelity.samples == samples
    ]  # fmt: skip
    lines += budget_warnings(budget, result.metric, result.baseline.score, samples, measured)
    lines += _resolution(result)
    return lines


def _resolution(result: SearchResult) -> list[str]:
    """Candidates whose interval straddles the budget: the data cannot settle them."""
    budget = result.config.budget
    limit = _absolute_budget(result)
    if limit <= 0:
        return []
    rows = [
        r for r, o in zip(result.scored(), result.outcomes, strict=True)
        if o.fidelity is not None and not o.rejected and r.drop <= limit < r.drop_high
    ]  # fmt: skip
    if not rows:
        return []
    samples = result.checks.get("samples", 0) if result.checks else 0
    widest = max(r.drop_high - r.drop for r in rows)
    margin = limit - min(r.drop for r in rows)
    names = ", ".join(r.name for r in rows)
    rule = "counted over budget" if budget.rule == "upper" else "counted within budget"
    # A drop that sits on the budget (margin a hundredth of the interval or less) is not
    # settled by any affordable number of samples: the estimate would be astronomical.
    settle = (
        f"about {samples_needed(samples, widest, margin)} samples would settle them"
        if margin > widest / 100
        else "a drop this close to the budget is not settled by more samples"
    )
    return [
        f"the budget is finer than {samples} held-out samples can resolve for {names} "
        f"(intervals straddle it; {rule}); {settle}"
    ]


def timed_rows(result: SearchResult) -> list[Scored]:
    """Candidates measured for both fidelity and speed: the ones the frontier is drawn from."""
    rows = zip(result.scored(), result.outcomes, strict=True)
    return [s for s, o in rows if o.fidelity is not None and o.latency is not None]


def markdown(result: SearchResult) -> str:
    chosen = result.chosen
    lines = [f"# inferopt optimize {result.source}", ""]
    if result.kept_original:
        lines.append(
            "No candidate within the budget is faster than the original: model.onnx is it."
        )
    elif chosen is None:
        lines.append(
            f"No candidate is within the budget (max drop {result.config.budget.text()} "
            f"in {result.metric}); the closest are in closest/."
        )
    else:
        speeds = speed_summary(result)
        against = f": {speeds} against the original." if speeds else "."
        lines.append(f"Chosen: `{chosen.text}`{against}")
    lines += [""] + [f"- {line}" for line in honesty(result)]
    lines += [
        "",
        "| recipe | drop [95% upper] | worst | gain | size | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for row, outcome in zip(result.scored(), result.outcomes, strict=True):
        if outcome.failed:
            lines.append(f"| {outcome.text} | failed: {outcome.failed} | | | | |")
            continue
        worst = outcome.fidelity.decided_by() if outcome.fidelity else ""
        lines.append(
            f"| {row.name} | {row.drop:.4f} [{row.drop_high:.4f}] | {worst} | {row.gain:.2f}x | "
            f"{row.size_ratio:.2f} | {outcome.seconds:.0f} |"
        )
    return "\n".join(lines) + "\n"


def render_html(result: SearchResult) -> str:
    measured = timed_rows(result)
    gain_label = GAIN_LABEL[result.config.objective]
    speed = plot_pareto(measured, lambda s: s.gain, gain_label, result)
    size = plot_pareto(measured, lambda s: 1 / s.size_ratio, "size reduction (x)", result)
    title = html.escape(f"inferopt optimize: {result.source}")
    speeds = speed_summary(result)
    verdict = (
        f"chosen <code>{html.escape(result.chosen.text)}</code>"
        + (f": {html.escape(speeds)} against the original (interleaved)" if speeds else "")
        if result.chosen
        else "the original, unchanged: no candidate within the budget is faster"
        if result.kept_original
        else "no candidate within the budget"
    )
    return PAGE.format(
        title=title,
        verdict=verdict,
        table=_table(result),
        speed=figure_png(speed),
        size=figure_png(size),
        budget=html.escape(f"{result.config.budget.text()} ({result.metric})"),
        wall=f"{result.wall_s:.0f}",
        notes="".join(f"<li>{html.escape(line)}</li>" for line in honesty(result)),
    )


def plot_pareto(rows: list[Scored], better: Any, label: str, result: SearchResult) -> Figure:
    """Drop (x, smaller is better) against a gain (y, larger is better); the frontier joined,
    the budget shaded, the chosen ringed."""
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    front = pareto(rows, better)
    ax.scatter([s.drop for s in rows], [better(s) for s in rows], color="#999", label="candidate")
    ax.errorbar([s.drop for s in rows], [better(s) for s in rows], fmt="none", ecolor="#bbb",
                xerr=[[0.0] * len(rows), [s.drop_high - s.drop for s in rows]],
                label="95% upper bound of the drop")  # fmt: skip
    ax.plot([s.drop for s in front], [better(s) for s in front], "o-", color="#1f77b4",
            label="Pareto frontier")  # fmt: skip
    for s in front:
        ax.annotate(s.name, (s.drop, better(s)), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")  # fmt: skip
    limit = _absolute_budget(result)
    ax.axvspan(min(0.0, *(s.drop for s in rows)) if rows else 0.0, limit, color="#2ca02c",
               alpha=0.08, label="within budget")  # fmt: skip
    if result.chosen is not None:
        chosen = next(s for s in rows if s.name == result.chosen.text)
        ax.scatter([chosen.drop], [better(chosen)], s=160, facecolors="none",
                   edgecolors="#d62728", linewidths=2, label="chosen")  # fmt: skip
    ax.axhline(1.0, color="#444", lw=0.8, ls=":")
    ax.set_xlabel(f"drop in {result.metric} against the baseline")
    ax.set_ylabel(label)
    ax.legend(fontsize=8, loc="best")
    return fig


def _absolute_budget(result: SearchResult) -> float:
    budget = result.config.budget
    return budget.value * result.baseline.score if budget.relative else budget.value


def _table(result: SearchResult) -> str:
    head = ["recipe", "drop", "95% upper", "worst", "gain", "size ratio", "within budget",
            "confirmed", "seconds"]  # fmt: skip
    body = []
    budget = result.config.budget
    for row, o in zip(result.scored(), result.outcomes, strict=True):
        if o.failed:
            cells = [o.text, f"failed: {o.failed}", "", "", "", "", "no", "", f"{o.seconds:.0f}"]
        else:
            ok = budget.admits(row, result.baseline.score)
            worst = o.fidelity.decided_by() if o.fidelity else ""
            cells = [o.text, f"{row.drop:.4f}", f"{row.drop_high:.4f}", worst,
                     f"{row.gain:.2f}x", f"{row.size_ratio:.2f}",
                     "yes" if ok else "no", o.rejected or ("yes" if o.full else "probe only"),
                     f"{o.seconds:.0f}"]  # fmt: skip
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{h}</th>" for h in head)
    return f"<table><tr>{header}</tr>{''.join(body)}</table>"


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}
</style></head><body>
<h1>{title}</h1>
<p>Result: {verdict}. Budget: max drop {budget}. Search wall time {wall} s.</p>
<ul>{notes}</ul>
<h2>Candidates</h2>{table}
<h2>Fidelity against speed (Pareto frontier)</h2>{speed}
<h2>Fidelity against size (Pareto frontier)</h2>{size}
</body></html>
"""
