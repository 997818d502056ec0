"""The search's result on the console: the before/after table a user reads first, then every
candidate with its figures (the Pareto set marked)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from inferopt.search.auto import SearchResult
from inferopt.search.fidelity import FIGURE_NAMES
from inferopt.search.report import honesty, timed_rows
from inferopt.search.select import ORIGINAL, pareto
from inferopt.search.store import Outcome


def show(result: SearchResult, console: Console) -> None:
    console.print(candidates_table(result))
    if result.chosen is not None:
        console.print(before_after(result, result.chosen))
    elif result.kept_original:
        console.print(f"[bold]{original_kept(result)}[/]")
    elif not result.outcomes:
        console.print(
            f"[bold red]no candidate was tried[/]: loading and measuring the baseline took "
            f"{result.baseline.seconds:.0f} s of the {result.config.time_budget_s:.0f} s time "
            "budget, and the rest is held back for confirming and timing one; a larger "
            "--time-budget tries them"
        )
    else:
        console.print(
            f"[bold red]no candidate is within the budget[/] (max drop "
            f"{result.config.budget.text()} in {result.metric}); the closest: "
            + ", ".join(s.name for s in result.choice.closest)
        )
    for line in honesty(result):
        console.print(Text(line))
    if result.skipped:
        console.print(f"left out for lack of time: {', '.join(result.skipped)}")
    console.print(f"search took {result.wall_s:.0f} s")
    if result.out is not None:  # last: the line a user copies
        console.print(f"wrote {result.out}/ (model.onnx, inferopt.json, report.json, report.md)")
        console.print(f"report: {result.out / 'report.html'}", soft_wrap=True)


def original_kept(result: SearchResult) -> str:
    """Why the original is the answer: the fastest within budget, and that it is no faster."""
    feasible = [s for s in result.choice.feasible if s.name != ORIGINAL]
    best = (
        f" (the best within budget: {feasible[0].name} at {feasible[0].gain:.2f}x)"
        if feasible
        else ""
    )
    return (
        f"no candidate within the budget beats the original on {result.config.objective}{best}: "
        "model.onnx is the original, unchanged"
    )


def before_after(result: SearchResult, chosen: Outcome) -> Table:
    table = Table(title=f"before / after: {chosen.text}", title_justify="left")
    table.add_column("")
    table.add_column("baseline", justify="right")
    table.add_column("chosen", justify="right")
    for row in speed_rows(result, chosen):
        table.add_row(*row)
    fid = chosen.fidelity
    table.add_row(
        "size",
        f"{result.baseline.size_bytes / 2**20:.1f} MiB",
        f"{chosen.size_bytes / 2**20:.1f} MiB",
    )
    if fid is not None:
        if fid.task_score is not None and fid.baseline_task_score is not None:
            table.add_row(result.metric, f"{fid.baseline_task_score:.4f}", f"{fid.task_score:.4f}")
        if not fid.figures:
            table.add_row("agreement with baseline", "1", f"{fid.agreement:.4f}")
        for name, value in fid.figures.items():  # embeddings: the retrieval figures, alone
            if name != "cosine":
                table.add_row(FIGURE_NAMES.get(name, name), "1", f"{value:.4f}")
        table.add_row("mean cosine to baseline", "1", f"{fid.cosine:.4f}")
        table.add_row("drop [95% upper]", "0", f"{fid.drop:.4f} [{fid.drop_high:.4f}]")
        table.add_row("worst figure", "", Text(fid.decided_by()))
    threads = result.threads.intra_op_threads if result.threads else 0
    table.add_row("intra-op threads", "default", str(threads or "default"))
    return table


def speed_rows(result: SearchResult, chosen: Outcome) -> list[tuple[str, str, str]]:
    """Batch-1 latency and throughput at the stated shape, baseline and chosen, each from its
    own interleaved comparison (the search's probe alone when those were not made)."""
    timed = dict(result.objectives)
    if not timed:
        latency = result.threads.against_baseline if result.threads else None
        latency = latency or chosen.full or chosen.probe
        objective = "throughput" if result.config.objective == "throughput" else "latency"
        timed = {objective: latency} if latency is not None else {}
    rows = []
    if (latency := timed.get("latency")) is not None:
        rows.append((
            "latency, batch 1",
            f"{latency.baseline_ms:.2f} ms",
            f"{latency.candidate_ms:.2f} ms ({latency.speedup:.2f}x)",
        ))  # fmt: skip
    if (batches := timed.get("throughput")) is not None:
        size = result.config.throughput.batch
        shape = result.timed_at.get("throughput", f"batch {size}")
        rows.append((
            f"throughput, {shape}",
            f"{size * 1e3 / batches.baseline_ms:.0f} samples/s",
            f"{size * 1e3 / batches.candidate_ms:.0f} samples/s ({batches.speedup:.2f}x)",
        ))  # fmt: skip
    return rows


def candidates_table(result: SearchResult) -> Table:
    rows = result.scored()
    front = {s.name for s in pareto(timed_rows(result))}
    table = Table(title=f"candidates ({result.config.objective})", title_justify="left")
    table.add_column("recipe", overflow="fold")
    for column in ("drop [95% up]", "gain", "size", "s", ""):
        table.add_column(column, justify="right")
    budget = result.config.budget
    for row, outcome in zip(rows, result.outcomes, strict=True):
        if outcome.failed:
            why = f"failed: {outcome.failed}"
            table.add_row(Text(outcome.text), Text(why), "", "", f"{outcome.seconds:.0f}", "")
            continue
        marks = []
        if budget.admits(row, result.baseline.score):
            marks.append("within budget")
        if row.name in front:
            marks.append("pareto")
        if result.chosen is not None and outcome.text == result.chosen.text:
            marks.append("CHOSEN")
        if outcome.rejected:
            marks.append("screened out (proxy sample)")
        table.add_row(
            Text(outcome.text),
            f"{row.drop:.4f} [{row.drop_high:.4f}]",
            f"{row.gain:.2f}x" + ("" if outcome.full else "*"),
            f"{row.size_ratio:.2f}",
            f"{outcome.seconds:.0f}" + (" (cached)" if outcome.cached else ""),
            ", ".join(marks),
        )
    table.caption = "* short probe only; the shortlist gets the full interleaved comparison"
    return table
