"""Issue #15 part 3: a usable distilled student of all-MiniLM-L6-v2. The 3-layer student is
built exactly as the search builds it (`build_candidate("minilm", "distill:layers=3")`: the
zoo's training corpus, the pipeline's default losses and training, its 15-minute cap) and
compared with the teacher on the held-out evaluation sentences, run in padded batches:
mean cosine, retrieval of the teacher's neighbours (nDCG@10, recall@10, Spearman), training
time and examples seen, and the batch-1 speed-up with ONNX Runtime (interleaved, medians).

    nice -n 5 .venv/bin/python benchmarks/distill_minilm.py [RECIPE ...]
    .venv/bin/python benchmarks/render.py                   # regenerates docs/benchmarks.md

Trained students are cached (INFEROPT_CACHE, `students/` and `compressed/`): a second run
re-measures without training again (the table then says the student was cached).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved, ort_runner, save, speedup_cell, speedups, table

from inferopt.data import Dataset
from inferopt.measure.fidelity import mean_cosine, retrieval_scores
from inferopt.model import Model
from inferopt.recipes import build_candidate, resolve_data
from inferopt.search.evaluate import latency_feeds
from inferopt.sources import load

RECIPES = ("distill:layers=3",)
EVAL_BATCH = 32  # padded batches, as a serving batcher would send them
LATENCY_SENTENCES = 64
ROUNDS = 9


def embed(model: Model, data: Dataset) -> np.ndarray:
    """[n, 384] float32: the model's first output for every example, in padded batches of
    EVAL_BATCH in the dataset's order (mixed lengths share a batch, so padding is real)."""
    session = model.session()
    rows = []
    for start in range(0, len(data), EVAL_BATCH):
        feed = data.batch(list(range(start, min(start + EVAL_BATCH, len(data)))))
        rows.append(np.asarray(session.run(None, feed)[0], dtype=np.float32))
    return np.concatenate(rows)


def figures(reference: np.ndarray, got: np.ndarray) -> dict[str, float]:
    scores = retrieval_scores(reference, got)
    return {
        "cosine": mean_cosine(reference, got),
        **{name: float(np.mean(values)) for name, values in scores.items()},
    }


def train_facts(model: Model) -> dict[str, Any]:
    """What the recipe's training step reported (its first step with a training report)."""
    for step in model.provenance.steps:
        report = step.get("report", {})
        if "train_seconds" in report:
            return dict(report)
    return {}


def main(recipes: tuple[str, ...]) -> None:
    baseline = load("minilm")
    data = resolve_data(baseline, None)
    evaluation = data.evaluation
    from inferopt.zoo import minilm

    corpus_size = len(minilm.training_data())
    reference = embed(baseline, evaluation)
    built: dict[str, tuple[Model, float]] = {}
    for recipe in recipes:
        start = time.perf_counter()
        model = build_candidate("minilm", recipe, data, baseline=baseline)
        built[recipe] = (model, time.perf_counter() - start)
    feeds = latency_feeds(evaluation, LATENCY_SENTENCES)
    runners = {"teacher": ort_runner(baseline, feeds)}
    runners.update({r: ort_runner(m, feeds) for r, (m, _) in built.items()})
    speed = speedups(interleaved(runners, rounds=ROUNDS), "teacher")
    rows = []
    for recipe, (model, seconds) in built.items():
        got = figures(reference, embed(model, evaluation))
        facts = train_facts(model)
        rows.append(
            [
                recipe,
                f"{got['cosine']:.4f}",
                f"{got['ndcg@10']:.4f}",
                f"{got['recall@10']:.4f}",
                f"{got['spearman']:.4f}",
                f"{facts.get('train_seconds', 0):.0f} s"
                + (" (cached)" if facts.get("cached") else ""),
                facts.get("examples_seen", "?"),
                facts.get("stopped", "?"),
                f"{seconds:.0f} s",
                speedup_cell(speed[recipe]),
            ]
        )
        print(recipe, got, facts, flush=True)
    note = (
        f"Teacher: all-MiniLM-L6-v2 (fp32 ONNX, exported by inferopt). Training corpus: "
        f"{corpus_size} tokenized sentences of `minilm.training_data()`; figures on the "
        f"{len(evaluation)} held-out evaluation sentences (never trained on), embedded in padded "
        f"batches of {EVAL_BATCH}. nDCG@10 and recall@10: the teacher's own 10 nearest "
        "neighbours of each sentence (graded gain) retrieved with the student's embeddings, "
        "the teacher scoring 1.0; Spearman: rank correlation of each query's similarities. "
        "Training seconds and examples seen are the trainer's (wall clock, on a machine shared "
        "with other jobs: see the load average); 'built' includes choosing layers and export. "
        f"Speed-up: batch 1, {LATENCY_SENTENCES} evaluation sentences per round, {ROUNDS} "
        "interleaved rounds, median [IQR] of per-round ratios."
    )
    columns = [
        "recipe",
        "mean cosine",
        "nDCG@10",
        "recall@10",
        "Spearman",
        "training",
        "examples seen",
        "stopped by",
        "built in",
        "speed-up (batch 1)",
    ]
    save(
        "distill_minilm",
        {
            "command": " ".join(
                ["nice -n 5 .venv/bin/python benchmarks/distill_minilm.py", *recipes]
            ),
            "threads_env": os.environ.get("OMP_NUM_THREADS"),
            "tables": [table("Distilled MiniLM students vs the teacher", columns, rows, note)],
        },
    )


if __name__ == "__main__":
    main(tuple(sys.argv[1:]) or RECIPES)
