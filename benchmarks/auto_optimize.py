"""Issue: auto-optimize. In one run per model (`minilm`, `digits-cnn`), the search (`inferopt
optimize MODEL --max-drop 0.5%`, from a cold candidate cache) against what users do today:

- ONNX Runtime `quantize_dynamic` with default settings;
- minilm: ONNX Runtime's transformer optimizer plus dynamic quantization, as Optimum's
  `optimum-cli onnxruntime optimize -O2` and `quantize --avx2` do (per-tensor, uint8 weights);
- digits-cnn (the transformer optimizer does not apply to a CNN): `quantize_static` with
  default settings (QDQ, min-max, per-tensor) on the same calibration images.

Every model is timed interleaved at batch 1 on real held-out inputs (the chosen one with the
thread setting the search recommends) and compared for fidelity with the fp32 export.

    .venv/bin/python benchmarks/auto_optimize.py [minilm|digits-cnn ...]
    .venv/bin/python benchmarks/render.py
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.transformers import optimizer

sys.path.insert(0, str(Path(__file__).parent))
from common import fidelity_row, interleaved, ort_runner, save, speedup_cell, speedups, table

from inferopt.data import Dataset
from inferopt.model import Model, Provenance, from_proto
from inferopt.runtime import SessionConfig
from inferopt.search.auto import SearchConfig, optimize
from inferopt.search.evaluate import latency_feeds
from inferopt.search.fidelity import run_outputs
from inferopt.search.select import Budget
from inferopt.sources import load
from inferopt.zoo import get

OUT = Path(__file__).resolve().parents[1] / "build" / "bench-auto"
BASELINE = "ONNX Runtime fp32 (as exported)"
FEEDS = 48
MINILM_HEADS, MINILM_HIDDEN = 12, 384


def _through_files(model: Model, label: str, transform: Any) -> Model:
    logging.getLogger().setLevel(logging.ERROR)  # ORT's quantizer advises at WARNING
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model.proto, str(src))
        transform(src, dst)
        proto = onnx.load(str(dst))
    return from_proto(proto, Provenance(label, "onnx")).with_io(model.io)


def ort_dynamic_defaults(model: Model) -> Model:
    return _through_files(model, "ort-dynamic", lambda s, d: quantize_dynamic(s, d))


def optimum_like(model: Model) -> Model:
    def transform(src: Path, dst: Path) -> None:
        optimized = optimizer.optimize_model(
            str(src), "bert", MINILM_HEADS, MINILM_HIDDEN, opt_level=2
        )
        middle = src.with_name("optimized.onnx")
        optimized.save_model_to_file(str(middle))
        quantize_dynamic(middle, dst, per_channel=False, weight_type=QuantType.QUInt8)

    return _through_files(model, "ort-transformer-optimizer+dynamic", transform)


class _Reader(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, data: Dataset) -> None:
        self.feeds = iter(data.batch([i]) for i in range(len(data)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def ort_static_defaults(model: Model, calibration: Dataset) -> Model:
    return _through_files(
        model, "ort-static", lambda s, d: quantize_static(s, d, _Reader(calibration))
    )


def run_search(name: str) -> tuple[Any, float]:
    started = time.perf_counter()
    config = SearchConfig(max_drop=Budget.parse("0.5%"), time_budget_s=600, fresh=True)
    result = optimize(name, OUT / name, config=config, progress=lambda m: print(" ", m))
    return result, time.perf_counter() - started


def compare(name: str) -> list[dict[str, Any]]:
    data = get(name).data()
    baseline = load(name)
    result, wall = run_search(name)
    candidates: dict[str, tuple[Model, SessionConfig | None]] = {BASELINE: (baseline, None)}
    candidates["ORT quantize_dynamic (defaults)"] = (ort_dynamic_defaults(baseline), None)
    if name == "minilm":
        peer = "ORT transformer optimizer O2 + quantize_dynamic (Optimum-like)"
        candidates[peer] = (optimum_like(baseline), None)
    else:
        calibration = data.calibration.subset(range(min(128, len(data.calibration))))
        candidates["ORT quantize_static (defaults)"] = (
            ort_static_defaults(baseline, calibration),
            None,
        )
    if result.chosen is not None:
        chosen = load(OUT / name / "model.onnx")
        threads = result.threads.intra_op_threads if result.threads else 0
        if threads:  # how much of the gain is the thread setting alone
            label = f"{BASELINE} with {threads} intra-op thread(s)"
            candidates[label] = (baseline, SessionConfig(intra_op_threads=threads))
        label = f"inferopt search: {result.chosen.text}" + (f" ({threads} thread)" * bool(threads))
        candidates[label] = (chosen, SessionConfig(intra_op_threads=threads))
    return [results_table(name, data, candidates, result, wall), candidates_table(name, result)]


def results_table(
    name: str,
    data: Any,
    candidates: dict[str, tuple[Model, SessionConfig | None]],
    result: Any,
    wall: float,
) -> dict[str, Any]:
    evaluation = data.evaluation.for_model(candidates[BASELINE][0].io)
    feeds = latency_feeds(evaluation, FEEDS)
    runners = {label: ort_runner(m, feeds, c) for label, (m, c) in candidates.items()}
    timing = speedups(interleaved(runners), BASELINE)
    reference = run_outputs(candidates[BASELINE][0], evaluation)
    metric = "top1" if evaluation.labels is not None else "embedding"
    rows = []
    for label, (model, _) in candidates.items():
        t = timing[label]
        fid = fidelity_row(model, reference, evaluation, metric)
        rows.append(
            [
                label,
                speedup_cell(t),
                round(t["median_s"] / len(feeds) * 1e3, 3),
                _task(fid["fidelity"]),
                fid["cosine_alone"],
                fid["cosine_batched"],
                fid["drop"],
                round(model.size_bytes / 2**20, 2),
            ]
        )
    task = "top-1 % (drop in points)" if name != "minilm" else "NN agreement"
    return table(
        f"{name}: search (max drop 0.5%) vs peers, batch 1, {len(feeds)} held-out inputs timed",
        [
            "model",
            "speed-up vs fp32 [IQR]",
            "ms",
            task,
            "cosine alone (worst row)",
            "cosine in padded batches of 8 (worst row)",
            "drop [95% upper]",
            "MiB",
        ],
        rows,
        f"Search wall time {wall:.0f} s (cold cache, time budget 600 s); chosen: "
        f"{result.chosen.text if result.chosen else 'none within budget'}. Fidelity on "
        f"{len(evaluation)} held-out inputs against fp32 alone; drop: the worst of the metric "
        "and every output channel, alone and in padded batches, with the upper end of its 95% "
        "bootstrap interval (the search's rule).",
    )


def candidates_table(name: str, result: Any) -> dict[str, Any]:
    report = json.loads((OUT / name / "report.json").read_text())
    rows = []
    for c in report["candidates"]:
        fid = c["fidelity"] or {}
        status = c["failed"] or c["rejected"] or ("within budget" if c["within_budget"] else "")
        drop = "" if c["drop"] is None else f"{c['drop']:.4f} [{c['drop_high']:.4f}]"
        rows.append(
            [
                c["text"],
                drop,
                round(fid.get("cosine", float("nan")), 4) if fid else "",
                "" if not c["gain"] else f"{c['gain']:.2f}x" + ("" if c["full"] else " (probe)"),
                round(c["seconds"], 1),
                status + (" · chosen" if c["text"] == report["chosen"] else ""),
            ]
        )
    return table(
        f"{name}: every candidate the search measured",
        ["recipe", "drop [95% upper]", "cosine", "speed-up", "s to build+screen", "status"],
        rows,
        "Drop is in the model's metric (top-1 points as a fraction for digits-cnn, "
        "nearest-neighbour agreement for minilm). Skipped for time: "
        + (", ".join(report["skipped_for_time"]) or "none"),
    )


def _task(fid: Any) -> str:
    if fid.task_score is not None and fid.baseline_task_score is not None:
        drop = (fid.baseline_task_score - fid.task_score) * 100
        return f"{fid.task_score * 100:.2f} ({-drop:+.2f})"
    return f"{fid.agreement:.3f}"


if __name__ == "__main__":
    names = sys.argv[1:] or ["digits-cnn", "minilm"]
    tables = [t for name in names for t in compare(name)]
    path = save(
        "auto_optimize", {"command": "python benchmarks/auto_optimize.py", "tables": tables}
    )
    print(path.read_text())
