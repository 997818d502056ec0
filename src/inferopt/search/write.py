"""The search's artifact folder: model.onnx, inferopt.json (the manifest: recipe, provenance,
session settings, every measurement, the machine and library versions), report.json,
report.html and report.md; written atomically (see `inferopt.artifact`).

While the search runs, the folder holds the best candidate so far, with `"status":
"in-progress"`, so an interrupted search still leaves its best model. When no candidate is
within budget there is no model.onnx at the top: the closest candidates are written under
closest/ with their figures, and the status says so."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inferopt import artifact, hardware
from inferopt.model import Model
from inferopt.search import report
from inferopt.search.select import ORIGINAL
from inferopt.search.store import Outcome, Store

if TYPE_CHECKING:
    from inferopt.search.auto import SearchResult

COMPLETE = "complete"
IN_PROGRESS = "in-progress"
NONE_WITHIN_BUDGET = "no-candidate-within-budget"
ORIGINAL_KEPT = "original-kept"  # within budget, none faster: model.onnx is the original


class BestSoFar:
    """Keeps the folder at --out holding the best candidate within budget found so far."""

    def __init__(self, out: Path | None, result: SearchResult) -> None:
        self.out = out
        self.result = result
        self.best: Outcome | None = None
        self.gain = 0.0

    def offer(self, outcome: Outcome, model: Callable[[], Model]) -> None:
        """`model` is called only when the candidate is written: a new best within budget."""
        from inferopt.search.auto import gain, within_budget

        result = self.result
        if not within_budget(result, outcome):
            return
        value = gain(outcome, result.config.objective, result.baseline)
        if self.best is not None and value <= self.gain:
            return
        self.best, self.gain = outcome, value
        if self.out is not None:
            built = model()
            info = manifest(result, outcome, IN_PROGRESS, built)
            artifact.write(self.out, built, info, report.markdown(result))

    def summary(self) -> str:
        if self.best is None:
            return "none within budget yet"
        return f"best so far {self.best.text} ({self.gain:.2f}x)"


def manifest(
    result: SearchResult, chosen: Outcome | None, status: str, model: Model | None = None
) -> dict[str, Any]:
    probe = hardware.probe()
    threads = result.threads
    return {
        "kind": "search",
        "status": status,
        "source": result.source,
        # The original kept is the empty recipe: --recipe-from reproduces it too.
        "recipe": chosen.recipe if chosen else ([] if result.kept_original else None),
        "recipe_text": chosen.text if chosen else (ORIGINAL if result.kept_original else None),
        "provenance": model.provenance.to_json() if model is not None else None,
        "session": {"intra_op_threads": threads.intra_op_threads if threads else 0},
        "threads": dataclasses.asdict(threads) if threads else None,
        "objective": result.config.objective,
        "max_drop": {
            "value": result.config.budget.value,
            "relative": result.config.budget.relative,
            "rule": result.config.budget.rule,
        },
        "metric": result.metric,
        "data": result.data_origin,
        "checks": {**result.checks, "hardware_fingerprint": hardware.probe().fingerprint()},
        "fidelity_notes": report.honesty(result),
        "baseline": report.baseline_json(result),
        "chosen": chosen.to_json() if chosen else None,
        "objectives": report.objectives_json(result),
        "search": {"wall_s": round(result.wall_s, 1), "candidates": len(result.outcomes)},
        "hardware": probe.to_json(),
        "hardware_fingerprint": probe.fingerprint(),
    }


def final(out: Path, result: SearchResult, store: Store, chosen_model: Model | None) -> Path:
    status = COMPLETE if result.chosen is not None else NONE_WITHIN_BUDGET
    if result.kept_original:
        status = ORIGINAL_KEPT
    names = {s.name for s in result.choice.closest}
    closest = [(o, store.model(o)) for o in result.outcomes if o.text in names]

    def fill(folder: Path) -> None:
        if chosen_model is not None:
            chosen_model.save(folder / artifact.MODEL_FILE)
        for rank, (outcome, model) in enumerate(closest, 1):
            sub = folder / "closest" / f"{rank}-{_slug(outcome.text)}"
            model.save(sub / artifact.MODEL_FILE)
            artifact.write_manifest(sub, {"kind": "candidate", **outcome.to_json()})
        artifact.write_manifest(folder, manifest(result, result.chosen, status, chosen_model))
        _write_json(folder / "report.json", report.record(result))
        (folder / "report.html").write_text(report.render_html(result), encoding="utf-8")
        (folder / artifact.REPORT).write_text(report.markdown(result))

    return artifact.write_folder(out, fill)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, default=artifact.jsonable) + "\n")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in text)[:80]
