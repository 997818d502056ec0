"""Issue: post-training passes. In one run on `minilm` (batch 1, real held-out sentences):
PyTorch eager fp32, ONNX Runtime fp32 as exported, ONNX Runtime `quantize_dynamic` with default
settings, and inferopt's recipes; then static INT8 on `digits-cnn`.

    .venv/bin/python benchmarks/post_training.py            # writes results/post_training.json
    .venv/bin/python benchmarks/render.py                   # regenerates docs/benchmarks.md
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnxruntime.quantization import quantize_dynamic

sys.path.insert(0, str(Path(__file__).parent))
from common import fidelity_row, interleaved, ort_runner, save, speedup_cell, speedups, table

from inferopt.data import Dataset
from inferopt.measure.fidelity import mean_cosine, nearest_neighbour_agreement
from inferopt.model import Model, Provenance, from_proto
from inferopt.passes.base import PassContext
from inferopt.passes.recipe import Recipe
from inferopt.recipes import apply
from inferopt.search.evaluate import latency_feeds
from inferopt.search.fidelity import first_matrix, run_outputs
from inferopt.sources import load
from inferopt.zoo import get

MINILM_RECIPES = (
    "fuse,int8-dynamic",
    "fuse,smooth:0.75,int8-dynamic",
    "fuse,smooth:0.75,int8-dynamic:fallback=0.999",
)
CNN_RECIPES = ("fuse,int8-static:minmax", "fuse,int8-static:percentile", "fuse,int8-static:entropy")
LATENCY_SENTENCES = 48


def ort_default_dynamic(model: Model) -> Model:
    """What a user gets from `quantize_dynamic(in, out)` with no options."""
    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model.proto, str(src))
        quantize_dynamic(src, dst)
        return from_proto(onnx.load(str(dst)), Provenance("ort-quantize-dynamic", "onnx")).with_io(
            model.io
        )


def torch_runner(module: torch.nn.Module, feeds: list[dict[str, np.ndarray]]):  # type: ignore[no-untyped-def]
    tensors = [{k: torch.from_numpy(v) for k, v in f.items()} for f in feeds]

    def run() -> None:
        with torch.inference_mode():
            for t in tensors:
                module(**t)

    return run


def minilm() -> list[dict[str, Any]]:
    entry = get("minilm")
    data = entry.data()
    baseline = load("minilm")
    context = PassContext.for_model(baseline, data.calibration)
    candidates: dict[str, Model] = {"ONNX Runtime fp32 (as exported)": baseline}
    candidates["ONNX Runtime quantize_dynamic (defaults)"] = ort_default_dynamic(baseline)
    for text in MINILM_RECIPES:
        candidates[f"inferopt {text}"] = apply(Recipe.parse(text), baseline, context)
    evaluation = data.evaluation.for_model(baseline.io)
    reference = run_outputs(baseline, evaluation)
    reference_matrix = first_matrix(reference.alone, baseline.io.output_names[0])
    module = entry.build().module.eval()
    torch.set_num_threads(2)
    feeds = latency_feeds(evaluation, LATENCY_SENTENCES)
    runners = {"PyTorch eager fp32": torch_runner(module, feeds)}
    runners.update({name: ort_runner(m, feeds) for name, m in candidates.items()})
    timing = speedups(interleaved(runners), "ONNX Runtime fp32 (as exported)")
    rows = []
    torch_out = torch_outputs(module, evaluation)
    for name in runners:
        t = timing[name]
        cells = [name, round(t["median_s"] / len(feeds) * 1e3, 2), speedup_cell(t)]
        if name.startswith("PyTorch"):
            cells += [
                f"{mean_cosine(reference_matrix, torch_out):.4f}",
                "",
                f"{nearest_neighbour_agreement(reference_matrix, torch_out):.3f}",
                "",
                "",
            ]
        else:
            fid = fidelity_row(candidates[name], reference, evaluation, "embedding")
            cells += [
                fid["cosine_alone"],
                fid["cosine_batched"],
                f"{fid['fidelity'].agreement:.3f}",
                fid["drop"],
                fid["decided_by"],
            ]
        cells.append(round(candidates[name].size_bytes / 2**20, 1) if name in candidates else "")
        rows.append(cells)
    return [
        table(
            f"minilm, batch 1, {len(feeds)} held-out sentences timed, "
            f"{len(evaluation)} for fidelity (alone and in padded batches of 8)",
            [
                "candidate",
                "ms / sentence",
                "speed-up vs ORT fp32 [IQR]",
                "cosine alone (worst row)",
                "cosine in padded batches (worst row)",
                "NN agreement",
                "drop [95% upper]",
                "worst figure",
                "MiB",
            ],
            rows,
            "Fidelity is against ONNX Runtime fp32 as exported, each sentence run alone "
            "(identical to PyTorch to 1e-6). 'In padded batches': each sentence run in a batch "
            "of 8 held-out sentences padded to the longest, cut back out, compared with fp32 "
            "alone. Drop: search.fidelity's worst of the metric (NN agreement) and every "
            "channel, alone and batched, with the upper end of its 95% bootstrap interval. "
            "Target for inferopt: cosine >= 0.995, NN agreement >= 0.95, >= 1.8x.",
        )
    ]


def torch_outputs(module: torch.nn.Module, data: Dataset) -> np.ndarray:
    rows = []
    with torch.inference_mode():
        for feed in data.batches(1):
            rows.append(module(**{k: torch.from_numpy(v) for k, v in feed.items()}).numpy())
    return np.concatenate(rows)


def digits_cnn() -> list[dict[str, Any]]:
    data = get("digits-cnn").data()
    baseline = load("digits-cnn")
    context = PassContext.for_model(baseline, data.calibration)
    candidates = {"ONNX Runtime fp32": baseline}
    for text in CNN_RECIPES:
        candidates[f"inferopt {text}"] = apply(Recipe.parse(text), baseline, context)
    evaluation = data.evaluation.for_model(baseline.io)
    reference = run_outputs(baseline, evaluation)
    rows_by_batch = {}
    for batch in (1, 32):
        feeds = [evaluation.batch(range(i, i + batch)) for i in range(0, 320, batch)]
        timing = speedups(
            interleaved({n: ort_runner(m, feeds) for n, m in candidates.items()}),
            "ONNX Runtime fp32",
        )
        rows_by_batch[batch] = timing
    rows = []
    for name, model in candidates.items():
        fid = fidelity_row(model, reference, evaluation, "top1")["fidelity"]
        metric = max(fid.conditions, key=lambda c: c.metric_drop)
        low, high = metric.metric_interval
        rows.append(
            [
                name,
                round(fid.task_score * 100, 2),
                f"{metric.metric_drop * 100:.2f} [{low * 100:.2f}, {high * 100:.2f}]",
                f"{fid.drop:.4f} [{fid.drop_high:.4f}]",
                f"{rows_by_batch[1][name]['speedup']:.2f}x",
                f"{rows_by_batch[32][name]['speedup']:.2f}x",
                round(model.size_bytes / 2**10, 1),
            ]
        )
    return [
        table(
            f"digits-cnn, static INT8, {len(data.evaluation)} held-out images",
            [
                "candidate",
                "top-1 %",
                "top-1 drop, points [95%]",
                "worst drop [95% upper]",
                "speed-up batch 1",
                "speed-up batch 32",
                "KiB",
            ],
            rows,
            "Top-1 drop: the worse of alone and in batches of 8, with its paired bootstrap "
            "interval. Worst drop: search.fidelity's worst of top-1 and every output channel. "
            "Target: top-1 drop <= 0.5 points.",
        )
    ]


if __name__ == "__main__":
    tables = minilm() + digits_cnn()
    path = save(
        "post_training", {"command": "python benchmarks/post_training.py", "tables": tables}
    )
    print(path.read_text())
