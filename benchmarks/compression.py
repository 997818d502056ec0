"""Issue: train-time compression. Structured pruning, sparsity and distillation of
`digits-cnn`, then a 3-layer distilled `minilm` student, each measured against the unmodified
exported model in one run (candidates interleaved round by round).

    flock /tmp/inferopt-bench.lock .venv/bin/python benchmarks/compression.py
    .venv/bin/python benchmarks/render.py                   # regenerates docs/benchmarks.md

Trained candidates are cached (INFEROPT_CACHE, `compressed/`): a second run re-measures
without training again.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved, ort_runner, save, speedup_cell, speedups, table

from inferopt.compress.sparsity import sparse_size
from inferopt.data import Dataset
from inferopt.measure.fidelity import mean_cosine, nearest_neighbour_agreement, top1
from inferopt.measure.flops import count_compute
from inferopt.measure.graph import shaped_graph
from inferopt.measure.size import size_figures
from inferopt.model import Model
from inferopt.passes.recipe import Recipe
from inferopt.recipes import build_candidate, resolve_data
from inferopt.search.evaluate import latency_feeds
from inferopt.search.fidelity import first_matrix, run_outputs
from inferopt.sources import load

CNN_RECIPES = (
    "prune:0.5",
    "prune:0.5:criterion=taylor",
    "distill:width=16",
    "sparsify:0.5",
    "sparsify:pattern=2of4",
    "fuse,int8-static",
    "prune:0.5,fuse,int8-static",
)
MINILM_RECIPES = (
    "distill:layers=3",
    "distill:layers=3,fuse,int8-dynamic",
    "distill:layers=4",
    "fuse,int8-dynamic",
)
LATENCY_SENTENCES = 48
BASELINE = "as exported (fp32)"


def build(
    source: str, recipes: tuple[str, ...]
) -> tuple[Model, Any, dict[str, Model], dict[str, float]]:
    baseline = load(source)
    data = resolve_data(baseline, None)
    candidates, seconds = {BASELINE: baseline}, {}
    for text in recipes:
        started = time.perf_counter()
        candidates[text] = build_candidate(source, Recipe.parse(text), data, baseline=baseline)
        seconds[text] = time.perf_counter() - started
        print(f"{source}: built {text} in {seconds[text]:.1f} s", flush=True)
    return baseline, data, candidates, seconds


def macs(model: Model, batch: int = 1, seq: int | None = None) -> int:
    return count_compute(shaped_graph(model, batch, seq), batch, seq).total_macs


def float_macs(name: str, candidates: dict[str, Model], seq: int | None = None) -> int:
    """MACs of the model before its ONNX passes: dynamic INT8 ops (MatMulInteger, QAttention)
    have no MAC count, and a precision change does not change the MACs anyway."""
    torch_part = [s for s in name.split(",") if s.split(":")[0] in ("prune", "sparsify", "distill")]
    prefix = ",".join(torch_part) or BASELINE
    return macs(candidates.get(prefix, candidates[name]), 1, seq)


def layers_kept(model: Model) -> str:
    for step in model.provenance.steps:
        if "layers_kept" in step["report"]:
            return ", ".join(str(i + 1) for i in step["report"]["layers_kept"])
    return "?"


def timing(candidates: dict[str, Model], feeds: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    runners = {name: ort_runner(m, feeds) for name, m in candidates.items()}
    return speedups(interleaved(runners, rounds=11), BASELINE)


def train_note(model: Model) -> str:
    steps = [s for s in model.provenance.steps if s["pass"] in ("prune", "sparsify", "distill")]
    return ", ".join(f"{s['report'].get('train_seconds', 0):.0f} s" for s in steps)


def digits_cnn() -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    baseline, data, candidates, _ = build("digits-cnn", CNN_RECIPES)
    evaluation = data.evaluation
    labels = evaluation.labels
    assert labels is not None
    base_macs = macs(baseline)
    speed = {}
    for batch in (1, 64):
        feeds = [evaluation.batch(range(i, min(i + batch, 448))) for i in range(0, 448, batch)]
        speed[batch] = timing(candidates, feeds)
    rows, sparse_rows = [], []
    base_top1 = top1(_first(baseline, evaluation), labels)
    for name, model in candidates.items():
        acc = top1(_first(model, evaluation), labels)
        m = macs(model)
        rows.append(
            [
                name,
                f"{1 - m / base_macs:.0%}",
                f"{size_figures(model).parameters:,}",
                round(base_top1 * 100, 2),
                round(acc * 100, 2),
                round((base_top1 - acc) * 100, 2),
                speedup_cell(speed[1][name]),
                speedup_cell(speed[64][name]),
                round(model.size_bytes / 2**10, 1),
                train_note(model),
            ]
        )
        if name.startswith("sparsify"):
            pattern = "2of4" if "2of4" in name else "unstructured"
            sparse = sparse_size(model, pattern)
            sparse_rows.append(
                [
                    name,
                    f"{sparse.weight_sparsity:.0%}",
                    round(sparse.dense_bytes / 2**10, 1),
                    round(sparse.sparse_bytes / 2**10, 1),
                    round(acc * 100, 2),
                    f"{speed[1][name]['speedup']:.2f}x",
                    f"{speed[64][name]['speedup']:.2f}x",
                ]
            )
    return [
        table(
            f"digits-cnn: structured pruning, distillation, sparsity ({len(evaluation)} held-out "
            "images)",
            [
                "candidate",
                "MACs removed",
                "params",
                "top-1 % before",
                "top-1 % after",
                "drop (points)",
                "speed-up batch 1 [IQR]",
                "speed-up batch 64 [IQR]",
                "KiB",
                "training",
            ],
            rows,
            "Speed-ups are against the unpruned model as exported, ONNX Runtime CPU, interleaved "
            "over 11 rounds (batch 1: 448 single images per round; batch 64: 7 batches). "
            "Training: seconds spent training, one thread. "
            "Targets: >= 50% of MACs removed, top-1 drop <= 1 point, >= 1.5x. "
            "`prune:0.5` removes half the channels of every conv (widths 16/32/32/64/64, rounded "
            "to multiples of 8) and fine-tunes 12 epochs with the unpruned model as teacher; "
            "`distill:width=16` trains a freshly initialised half-width DigitsCNN on the "
            "teacher's soft labels.",
        ),
        table(
            "digits-cnn: sparsity, stored size and measured latency",
            [
                "candidate",
                "weight sparsity",
                "ONNX file KiB (dense)",
                "KiB stored sparse",
                "top-1 %",
                "speed-up batch 1",
                "speed-up batch 64",
            ],
            sparse_rows,
            "Stored sparse: CSR (values, 16-bit column indices, 32-bit row offsets) for "
            "unstructured; kept values plus 2 bits of position each for 2:4. ONNX Runtime's CPU "
            "kernels run these as dense tensors with zeros, so latency does not change (ratios "
            "near 1.0x are noise); the gain is storage, and speed only on hardware or kernels "
            "that skip zeros (2:4 sparse tensor cores).",
        ),
    ]


def minilm() -> list[dict[str, Any]]:
    baseline, data, candidates, _ = build("minilm", MINILM_RECIPES)
    evaluation = data.evaluation
    reference = _first(baseline, evaluation)
    torch.set_num_threads(2)
    feeds = latency_feeds(evaluation, LATENCY_SENTENCES)
    speed = timing(candidates, feeds)
    base_macs = macs(baseline, 1, 32)
    kept = layers_kept(candidates["distill:layers=3"])
    rows = []
    for name, model in candidates.items():
        got = _first(model, evaluation)
        t = speed[name]
        rows.append(
            [
                name,
                round(t["median_s"] / len(feeds) * 1e3, 2),
                speedup_cell(t),
                round(mean_cosine(reference, got), 4),
                round(nearest_neighbour_agreement(reference, got), 3),
                f"{1 - float_macs(name, candidates, 32) / base_macs:.0%}",
                round(model.size_bytes / 2**20, 1),
                train_note(model),
            ]
        )
    return [
        table(
            f"minilm: 3-layer distilled student vs the 6-layer teacher, batch 1, {len(feeds)} "
            f"held-out sentences timed, {len(evaluation)} for fidelity",
            [
                "candidate",
                "ms / sentence",
                "speed-up [IQR]",
                "mean cosine to teacher",
                "NN agreement",
                "MACs removed (seq 32)",
                "MiB",
                "training",
            ],
            rows,
            f"The 3-layer student keeps teacher layers {kept} (1-based; weights copied; the subset "
            "whose untrained student starts closest to the teacher) and is trained to match the "
            "teacher's sentence embeddings (1 - cosine) on the documentation sentences of the "
            "corpus's training side; the held-out sentences are never trained on. Latency at "
            "2 threads. Target: mean cosine >= 0.95.",
        )
    ]


if __name__ == "__main__":
    tables = digits_cnn() + minilm()
    path = save(
        "compression",
        {
            "command": "flock /tmp/inferopt-bench.lock .venv/bin/python benchmarks/compression.py",
            "tables": tables,
        },
    )
    print(path.read_text())


def _first(model: Model, data: Dataset) -> np.ndarray:
    """The first output of every sample run alone, one row each."""
    matrix = first_matrix(run_outputs(model, data, batched=False).alone, model.io.output_names[0])
    assert matrix is not None
    return matrix
