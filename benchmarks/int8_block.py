"""Issue #15, item 4 ("INT8 that keeps BERT-like quality") and its targets: block-wise INT8
(`int8-block`, MatMulNBits 8-bit with per-row, per-block activation scales) beside dynamic
INT8 on minilm, each with and without `unpad` (row-wise work on the real tokens only).
Fidelity is the search's own judgement (nDCG@10 of fp32's neighbours, alone and in padded
batches of 8, with the upper end of its 95% bootstrap interval); speed is batch 1 and 32 x 128
tokens against ONNX Runtime fp32, all rows timed in the same rotating rounds, ORT only (no
other engine's process on the machine). A few minutes on 2 cores:

    .venv/bin/python benchmarks/int8_block.py && .venv/bin/python benchmarks/render.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import fidelity_row, interleaved, ort_runner, save, speedup_cell, speedups, table
from minilm_peers import CONFIG, Sets

from inferopt.model import Model
from inferopt.passes.base import PassContext
from inferopt.passes.recipe import Recipe
from inferopt.recipes import apply
from inferopt.search.fidelity import run_outputs
from inferopt.sources import load
from inferopt.zoo import minilm

REFERENCE = "ORT fp32 (as exported)"
RECIPES = (
    "fuse",
    "fuse,unpad",
    "fuse,unpad,int8-block:128",
    "fuse,unpad,int8-block:64",
    "fuse,unpad,int8-block:32",
    "fuse,unpad,int8-dynamic",
    "fuse,int8-block:128",
    "fuse,int8-block:64",
    "fuse,int8-block:32",
    "fuse,int8-dynamic",
    "fuse,smooth:0.75,int8-dynamic",
)
ROUNDS = {"b1": 15, "b32": 7}
BUDGET = 0.01  # the search's default for retrieval: 1% of nDCG@10


def main() -> None:
    exported = load("minilm")
    data = minilm.data()
    context = PassContext.for_model(exported, data.calibration)
    models: dict[str, Model] = {REFERENCE: exported}
    for text in RECIPES:
        models[text] = apply(Recipe.parse(text), exported, context)
    evaluation = data.evaluation.for_model(exported.io)
    reference = run_outputs(exported, evaluation)
    fidelity = {
        name: fidelity_row(m, reference, evaluation, "retrieval") for name, m in models.items()
    }
    sets = Sets(data.evaluation)
    timing: dict[str, dict[str, Any]] = {}
    for key, rounds in ROUNDS.items():
        runners = {name: ort_runner(m, sets.timing[key], CONFIG) for name, m in models.items()}
        timing[key] = speedups(interleaved(runners, rounds=rounds), REFERENCE)
        print(key, {k: round(v["speedup"], 2) for k, v in timing[key].items()}, flush=True)
    n_timed = len(sets.timing["b1"])
    rows = [_row(name, fidelity[name], timing, models[name], n_timed) for name in models]
    save(
        "int8_block",
        {
            "command": "python benchmarks/int8_block.py",
            "load_average_after": list(os.getloadavg()),
            "tables": [_table(rows, len(evaluation), n_timed)],
        },
    )


def _row(
    name: str, fid: dict[str, Any], timing: dict[str, Any], model: Model, n_timed: int
) -> list[Any]:
    within = fid["fidelity"].drop_high <= BUDGET
    return [
        name,
        speedup_cell(timing["b1"][name]),
        round(timing["b1"][name]["median_s"] * 1e3 / n_timed, 2),
        speedup_cell(timing["b32"][name]),
        fid["drop"],
        "yes" if within else "no",
        fid["cosine_alone"],
        fid["cosine_batched"],
        round(model.size_bytes / 2**20, 1),
    ]


def _table(rows: list[list[Any]], n_fidelity: int, n_timed: int) -> dict[str, Any]:
    return table(
        f"minilm: unpadding and block-wise INT8 beside dynamic INT8, {n_fidelity} held-out "
        "sentences",
        [
            "recipe",
            "speed-up batch 1 [IQR]",
            "ms / sentence, batch 1",
            "speed-up 32 x 128 [IQR]",
            "nDCG@10 drop [95% upper]",
            "within 1%",
            "cosine alone (worst)",
            "cosine in padded batches of 8 (worst)",
            "MiB",
        ],
        rows,
        f"Speed-ups against ONNX Runtime fp32 as exported, every row timed in the same rounds "
        f"in rotating order ({ROUNDS['b1']} rounds over {n_timed} held-out sentences at batch "
        f"1; {ROUNDS['b32']} rounds of 32 sentences padded to 128 tokens), each timed pass "
        "right after an untimed one of the same row, median of per-round ratios with their "
        "IQR; 2 intra-op threads. Drop: the search's fidelity rule for "
        "retrieval (search.fidelity): nDCG@10 of fp32's 10 nearest neighbours, the worse of "
        "alone and in padded batches of 8, with the upper end of its 95% bootstrap interval; "
        "the search's default budget is 1%. int8-block: MatMulNBits, 8-bit weights with one "
        "scale per block of K, accuracy_level 4 (activations quantized per row and block). "
        "unpad: the row-wise work between attention nodes on the real tokens only (the "
        "32 x 128 batches are 86% padding).",
    )


if __name__ == "__main__":
    main()
