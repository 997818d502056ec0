"""Issue #15 "Targets": MiniLM (all-MiniLM-L6-v2, zoo `minilm`) optimized by inferopt beside
what its peers do with the same model: ONNX Runtime fp32 as exported (the reference), ORT's
quantize_dynamic with its defaults, ORT's transformer optimizer then quantize_dynamic,
OpenVINO fp32 and OpenVINO + NNCF post-training INT8 (transformer preset, 300 training-side
sentences), and inferopt recipes (plus the artifact at optimized/minilm, if one is there).
Per row: batch-1 latency and 32 x 128-token throughput speed-ups over ORT fp32 (every engine
at 2 threads, timed in the same interleaved rounds, medians with IQR of per-round ratios), the
mean and worst cosine to fp32 of held-out sentences embedded in padded batches of 8, and the
nDCG@10 of fp32's nearest neighbours. OpenVINO runs in its own venv, as a subprocess
(benchmarks/minilm_peers_openvino.py) answering one request per timed pass over a pipe, so
inferopt's venv never imports it. Make that venv once, then run (a few minutes on 2 cores):

    python3.11 -m venv build/openvino-venv
    build/openvino-venv/bin/pip install openvino nncf onnx numpy
    nice -n 5 .venv/bin/python benchmarks/minilm_peers.py   # writes results/minilm_peers.json
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import quantize_dynamic

sys.path.insert(0, str(Path(__file__).parent))
from common import Runner, interleaved, ort_runner, save, speedup_cell, speedups, table

from inferopt.data import Dataset
from inferopt.measure import fidelity as fidelity_mod
from inferopt.model import Model, Provenance, from_proto, load_onnx
from inferopt.passes.base import PassContext
from inferopt.passes.recipe import Recipe
from inferopt.recipes import apply
from inferopt.runtime import SessionConfig
from inferopt.sources import load
from inferopt.zoo import minilm

ROOT = Path(__file__).resolve().parents[1]
OV_PYTHON = ROOT / "build" / "openvino-venv" / "bin" / "python"
OV_WORKER = Path(__file__).parent / "minilm_peers_openvino.py"
SEARCH_ARTIFACT = ROOT / "optimized" / "minilm"
THREADS = 2
CONFIG = SessionConfig(intra_op_threads=THREADS)
LATENCY_SENTENCES = 32
BIG_BATCH, BIG_TOKENS = 32, 128
BATCH_ROWS = 8  # rows per padded batch in the fidelity check
CALIBRATION_SENTENCES = 300  # for NNCF
ROUNDS_B1, ROUNDS_B32 = 11, 7
RECIPES = (
    "fuse,unpad",
    "fuse,unpad,int8-block:64",
    "fuse,unpad,int8-block",
    "fuse,smooth:0.75,int8-dynamic",
    "fuse,int8-dynamic",
    "fuse,fp16",
    "fuse,bf16",
)
REFERENCE = "ORT fp32 (as exported)"


def unchecked(proto: onnx.ModelProto, like: Model, label: str) -> Model:
    return from_proto(proto, Provenance(label, "candidate"), verify=False).with_io(like.io)


def ort_quantized(proto: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime.quantization.quantize_dynamic with every option at its default."""
    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "q.onnx"
        quantize_dynamic(proto, out)
        return onnx.load(str(out))


def ort_transformer_optimized(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """ORT's BERT optimizer (12 heads, 384 wide), and the fusions it reports."""
    from onnxruntime.transformers.optimizer import optimize_model

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fp32.onnx"
        onnx.save_model(proto, str(path))
        optimized = optimize_model(str(path), model_type="bert", num_heads=12, hidden_size=384)
        fused = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
        return optimized.model, fused


def ort_candidates(
    exported: Model, calibration: Dataset
) -> tuple[dict[str, Model], dict[str, Any]]:
    """Every ONNX Runtime row's model, and notes on how each was made."""
    models = {REFERENCE: exported}
    notes: dict[str, Any] = {}
    models["ORT quantize_dynamic (defaults)"] = unchecked(
        ort_quantized(exported.proto), exported, "ort-dynamic"
    )
    optimized, fused = ort_transformer_optimized(exported.proto)
    notes["ort_transformer_optimizer_fusions"] = fused
    models["ORT transformer optimizer + quantize_dynamic"] = unchecked(
        ort_quantized(optimized), exported, "ort-opt-dynamic"
    )
    context = PassContext.for_model(exported, calibration)
    for text in RECIPES:
        models[f"inferopt {text}"] = apply(Recipe.parse(text), exported, context)
    notes["search_artifact"] = "absent: no optimized/minilm/model.onnx when this ran"
    if (SEARCH_ARTIFACT / "model.onnx").is_file():
        manifest = json.loads((SEARCH_ARTIFACT / "inferopt.json").read_text())
        notes["search_artifact"] = {k: manifest.get(k) for k in ("status", "recipe_text")}
        # The artifact is whatever the last `inferopt optimize minilm` left: say which.
        recipe = manifest.get("recipe_text") or "the original"
        label = f"inferopt search artifact ({manifest.get('status')}: {recipe})"
        models[label] = load_onnx(SEARCH_ARTIFACT / "model.onnx").with_io(exported.io)
    return models, notes


class OpenVino:
    """The OpenVINO worker subprocess: one JSON request per line, one reply per line."""

    def __init__(self) -> None:
        if not OV_PYTHON.is_file():
            raise SystemExit(f"{OV_PYTHON} is missing: make the OpenVINO venv (see the docstring)")
        self.proc = subprocess.Popen(
            [str(OV_PYTHON), str(OV_WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.versions = self._reply()

    def _reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the OpenVINO worker exited (code {self.proc.wait()})")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise SystemExit(f"OpenVINO worker: {reply['error']}")
        return reply

    def ask(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def runner(self, model: str, feeds: str) -> Runner:
        """One timed pass is one request; the pipe's round trip (well under a millisecond)
        is part of the round the parent times."""

        def run() -> None:
            self.ask("time", model=model, feeds=feeds)

        return run

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def save_feeds(feeds: list[dict[str, np.ndarray]], path: Path) -> str:
    np.savez(path, **{f"{i}/{k}": v for i, f in enumerate(feeds) for k, v in f.items()})  # type: ignore[arg-type]
    return str(path)


def padded_groups(n: int, seed: int = 0) -> list[list[int]]:
    """Held-out sentences shuffled into batches of BATCH_ROWS (mixed lengths: real padding)."""
    order = np.random.default_rng(seed).permutation(n)
    return [order[i : i + BATCH_ROWS].tolist() for i in range(0, n, BATCH_ROWS)]


def big_batch(data: Dataset, indices: list[int]) -> dict[str, np.ndarray]:
    """The sentences at `indices` as one batch padded to BIG_TOKENS (pad id 0, mask 0)."""
    feed = {k: np.zeros((len(indices), BIG_TOKENS), np.int64) for k in data.input_names}
    for row, i in enumerate(indices):
        for name, value in data.samples[i].items():
            feed[name][row, : value.shape[1]] = value[0]
    return feed


def scatter(outputs: list[np.ndarray], groups: list[list[int]], n: int) -> np.ndarray:
    """Rows of the batched outputs back in data order, as (n, 384) float64."""
    rows = np.zeros((n, outputs[0].shape[-1]), np.float64)
    for out, group in zip(outputs, groups, strict=True):
        rows[group] = out.reshape(len(group), -1)
    return rows


def unit(x: np.ndarray) -> np.ndarray:
    rows: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return rows


def local_ndcg10(reference: np.ndarray, candidate: np.ndarray, k: int = 10) -> float:
    """Each row a query against all the others: the candidate's top k by its own cosine,
    graded by fp32 cosine (clipped at 0) against fp32's own top k; mean nDCG@k."""
    ref, cand = unit(reference), unit(candidate)
    ref_sim, cand_sim = ref @ ref.T, cand @ cand.T
    np.fill_diagonal(ref_sim, -np.inf)
    np.fill_diagonal(cand_sim, -np.inf)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.clip(-np.sort(-ref_sim, axis=1)[:, :k], 0, None) @ discount
    top = np.argsort(-cand_sim, axis=1, kind="stable")[:, :k]
    got = np.clip(np.take_along_axis(ref_sim, top, 1), 0, None) @ discount
    return float(np.mean(got / ideal))


def ndcg10(reference: np.ndarray, candidate: np.ndarray) -> float:
    shared = getattr(fidelity_mod, "retrieval_scores", None)
    if shared is not None:
        return float(np.mean(shared(reference, candidate)["ndcg@10"]))
    return local_ndcg10(reference, candidate)


NDCG_SOURCE = (
    "mean of inferopt.measure.fidelity.retrieval_scores(fp32, candidate)['ndcg@10'] (each "
    "held-out sentence a query against the others; fp32's top 10 relevant, gain 11 - rank)"
    if hasattr(fidelity_mod, "retrieval_scores")
    else "local: each held-out sentence a query against the others; ideal = fp32's top 10 by "
    "cosine; gain = fp32 cosine (clipped at 0); candidate ranked by its own cosine"
)


def quality(reference: np.ndarray, batched: np.ndarray) -> dict[str, float]:
    cosines = (unit(reference) * unit(batched)).sum(1)
    return {
        "cosine_mean": float(cosines.mean()),
        "cosine_worst": float(cosines.min()),
        "ndcg@10": ndcg10(reference, batched),
    }


class Sets:
    """The held-out feeds every row runs: padded groups (fidelity), batch 1 and 32 x 128."""

    def __init__(self, evaluation: Dataset) -> None:
        n = len(evaluation)
        self.n = n
        self.groups = padded_groups(n)
        self.group_feeds = [evaluation.batch(g) for g in self.groups]
        spread = np.linspace(0, n - 1, num=LATENCY_SENTENCES).astype(int).tolist()
        self.timing = {
            "b1": [evaluation.batch([i]) for i in spread],
            "b32": [big_batch(evaluation, spread)],
        }


def ort_rows(
    models: dict[str, Model], sets: Sets, evaluation: Dataset
) -> tuple[np.ndarray, dict[str, dict[str, Any]]]:
    """fp32 alone on every held-out sentence (the reference, float64 [n, 384]) and each ORT
    row's fidelity on the padded groups."""
    sessions = {name: m.session(CONFIG) for name, m in models.items()}
    alone = [sessions[REFERENCE].run(None, evaluation.batch([i]))[0] for i in range(sets.n)]
    reference = np.concatenate(alone).astype(np.float64)
    results: dict[str, dict[str, Any]] = {}
    for name, session in sessions.items():
        outs = [session.run(None, f)[0] for f in sets.group_feeds]
        results[name] = {**quality(reference, scatter(outs, sets.groups, sets.n))}
        results[name].update(engine="onnxruntime", size_mb=models[name].size_bytes / 1e6)
        print(name, results[name], flush=True)
    return reference, results


def openvino_rows(
    ov: OpenVino,
    exported: Model,
    calibration: Dataset,
    sets: Sets,
    reference: np.ndarray,
    tmp: Path,
) -> tuple[list[str], dict[str, dict[str, Any]], dict[str, Any]]:
    """NNCF's INT8 model made in the worker, every OpenVINO row compiled there and its
    fidelity measured; returns the row names, their results and notes."""
    fp32_path, int8_xml = tmp / "fp32.onnx", tmp / "ov_int8.xml"
    onnx.save_model(exported.proto, str(fp32_path))
    samples = [calibration.batch([i]) for i in range(CALIBRATION_SENTENCES)]
    notes: dict[str, Any] = {"versions": ov.versions}
    notes["nncf"] = ov.ask(
        "quantize",
        onnx=str(fp32_path),
        calibration=save_feeds(samples, tmp / "calib.npz"),
        out=str(int8_xml),
    )
    ov_models = {  # name: (model file, INFERENCE_PRECISION_HINT; None = OpenVINO's default)
        "OpenVINO fp32 (precision hint f32)": (fp32_path, "f32"),
        "OpenVINO fp32 model, default precision hint": (fp32_path, None),
        "OpenVINO + NNCF INT8 (transformer), default precision hint": (int8_xml, None),
    }
    feed_sets = {"groups": sets.group_feeds, **sets.timing}
    for key, feeds in feed_sets.items():
        ov.ask("feeds", name=key, npz=save_feeds(feeds, tmp / f"{key}.npz"))
    results: dict[str, dict[str, Any]] = {}
    for name, (path, precision) in ov_models.items():
        notes[name] = ov.ask(
            "load", name=name, model=str(path), threads=THREADS, precision=precision
        )
        out = tmp / "out.npz"
        ov.ask("embed", model=name, feeds="groups", out=str(out))
        with np.load(out) as npz:
            outs = [npz[str(i)] for i in range(len(sets.groups))]
        results[name] = quality(reference, scatter(outs, sets.groups, sets.n))
        files = [path] if path.suffix == ".onnx" else [path, path.with_suffix(".bin")]
        results[name].update(engine="openvino", size_mb=sum(f.stat().st_size for f in files) / 1e6)
        print(name, results[name], flush=True)
    return list(ov_models), results, notes


def run(tmp: Path) -> dict[str, Any]:
    exported = load("minilm")
    zoo = minilm.data()
    sets = Sets(zoo.evaluation)
    models, notes = ort_candidates(exported, zoo.calibration)
    reference, results = ort_rows(models, sets, zoo.evaluation)
    ov = OpenVino()
    ov_names, ov_results, notes["openvino"] = openvino_rows(
        ov, exported, zoo.calibration, sets, reference, tmp
    )
    results.update(ov_results)
    for label, rounds in (("b1", ROUNDS_B1), ("b32", ROUNDS_B32)):
        runners: dict[str, Runner] = {
            name: ort_runner(m, sets.timing[label], CONFIG) for name, m in models.items()
        }
        runners.update({name: ov.runner(name, label) for name in ov_names})
        timing = speedups(interleaved(runners, rounds=rounds, warmup=1), REFERENCE)
        for name, t in timing.items():
            results[name][label] = t
        print(label, json.dumps(timing), flush=True)
    ov.close()
    return {"results": results, "notes": notes, "evaluation_sentences": sets.n}


def rows(results: dict[str, dict[str, Any]]) -> list[list[Any]]:
    out = []
    for name, r in results.items():
        out.append(
            [
                name,
                speedup_cell(r["b1"]),
                f"{r['b1']['median_s'] * 1e3 / LATENCY_SENTENCES:.2f}",
                speedup_cell(r["b32"]),
                f"{r['cosine_mean']:.4f} (worst {r['cosine_worst']:.3f})",
                f"{r['ndcg@10']:.4f}",
                f"{r['size_mb']:.1f}",
            ]
        )
    return out


def main() -> None:
    load_before = list(os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        measured = run(Path(tmp))
    load_after = list(os.getloadavg())
    n = measured["evaluation_sentences"]
    main_table = table(
        f"minilm beside its peers: {n} held-out sentences, {THREADS} threads everywhere",
        [
            "engine / model",
            "speed-up batch 1 [IQR]",
            "ms / sentence, batch 1",
            f"speed-up {BIG_BATCH} x {BIG_TOKENS} tokens [IQR]",
            f"cosine to fp32, padded batches of {BATCH_ROWS}: mean (worst)",
            "nDCG@10 of fp32 neighbours",
            "size MB",
        ],
        rows(measured["results"]),
        "Speed-ups against ONNX Runtime fp32 as exported, all candidates (ORT and OpenVINO) "
        f"timed in the same run in rotating order each round ({ROUNDS_B1} rounds at batch 1 over "
        f"{LATENCY_SENTENCES} held-out sentences, {ROUNDS_B32} at {BIG_BATCH} held-out sentences "
        f"padded to {BIG_TOKENS} tokens with mask 0), median of per-round ratios with their "
        f"IQR. ORT: intra_op_threads={THREADS}; OpenVINO: INFERENCE_NUM_THREADS={THREADS}, "
        "PERFORMANCE_HINT=LATENCY, each timed pass one request to its subprocess over a pipe. "
        f"Fidelity: every held-out sentence embedded in shuffled batches of {BATCH_ROWS} padded "
        "to the longest, against fp32 run alone (the zoo export mean-pools with the mask, so "
        f"each output is the sentence embedding). nDCG@10: {NDCG_SOURCE}. NNCF: "
        f"nncf.quantize, ModelType.TRANSFORMER, {CALIBRATION_SENTENCES} training-side sentences.",
    )
    path = save(
        "minilm_peers",
        {
            "command": "nice -n 5 python benchmarks/minilm_peers.py",
            "machine": {"load_average": load_before},  # at start, as render.py says
            "load_average_after": load_after,
            "threads": THREADS,
            "ndcg_source": NDCG_SOURCE,
            **measured,
            "tables": [main_table],
        },
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
