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
from common import interleaved, ort_runner, save, speedup_cell, speedups, table

from inferopt.data import Dataset
from inferopt.measure.fidelity import mean_cosine, nearest_neighbour_agreement, top1
from inferopt.model import Model, Provenance, from_proto
from inferopt.passes.base import PassContext
from inferopt.passes.recipe import Recipe
from inferopt.recipes import apply
from inferopt.search.evaluate import latency_feeds, outputs
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
    reference = outputs(baseline, data.evaluation)
    module = entry.build().module.eval()
    torch.set_num_threads(2)
    feeds = latency_feeds(data.evaluation, LATENCY_SENTENCES)
    runners = {"PyTorch eager fp32": torch_runner(module, feeds)}
    runners.update({name: ort_runner(m, feeds) for name, m in candidates.items()})
    timing = speedups(interleaved(runners), "ONNX Runtime fp32 (as exported)")
    rows = []
    torch_out = torch_outputs(module, data.evaluation)
    for name in runners:
        got = (
            torch_out if name.startswith("PyTorch") else outputs(candidates[name], data.evaluation)
        )
        t = timing[name]
        rows.append(
            [
                name,
                round(t["median_s"] / len(feeds) * 1e3, 2),
                speedup_cell(t),
                round(mean_cosine(reference, got), 4),
                round(nearest_neighbour_agreement(reference, got), 3),
                round(candidates[name].size_bytes / 2**20, 1) if name in candidates else "",
            ]
        )
    return [
        table(
            f"minilm, batch 1, {len(feeds)} held-out sentences timed, "
            f"{len(data.evaluation)} for fidelity",
            [
                "candidate",
                "ms / sentence",
                "speed-up vs ORT fp32 [IQR]",
                "mean cosine",
                "NN agreement",
                "MiB",
            ],
            rows,
            "Fidelity is against ONNX Runtime fp32 as exported (identical to PyTorch to 1e-6). "
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
    labels = data.evaluation.labels
    assert labels is not None
    base_top1 = top1(outputs(baseline, data.evaluation), labels)
    rows_by_batch = {}
    for batch in (1, 32):
        feeds = [data.evaluation.batch(range(i, i + batch)) for i in range(0, 320, batch)]
        timing = speedups(
            interleaved({n: ort_runner(m, feeds) for n, m in candidates.items()}),
            "ONNX Runtime fp32",
        )
        rows_by_batch[batch] = timing
    rows = []
    for name, model in candidates.items():
        acc = top1(outputs(model, data.evaluation), labels)
        rows.append(
            [
                name,
                round(acc * 100, 2),
                round((base_top1 - acc) * 100, 2),
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
                "drop (points)",
                "speed-up batch 1",
                "speed-up batch 32",
                "KiB",
            ],
            rows,
            "Target: top-1 drop <= 0.5 points.",
        )
    ]


if __name__ == "__main__":
    tables = minilm() + digits_cnn()
    path = save(
        "post_training", {"command": "python benchmarks/post_training.py", "tables": tables}
    )
    print(path.read_text())
