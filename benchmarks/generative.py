"""Issue: generator variants side by side. In one run on the zoo's `smollm2-135m` (batch 1,
held-out text): fp32 as exported, int8-weight, int4-weight (rtn, rtn-float, mixed int4/int8
by measured sensitivity), W8A8 (dynamic int8 activations and weights), and ORT GenAI's own
model builder at int4; decode and prefill speed, the bandwidth roofline, fidelity to fp32
with 95% intervals, size and build time, and the targets they meet.

    .venv/bin/python benchmarks/generative.py            # writes results/generative.json
    .venv/bin/python benchmarks/generative.py --quick    # a short check that it runs
    .venv/bin/python benchmarks/render.py                # regenerates docs/benchmarks.md

Timing: every candidate is loaded once; each round runs each of them, in an order rotated per
round, over the same held-out token ids: a 128-token prompt as one prefill (time to first
token: the prefill and the argmax), then 64 one-token steps, each timed (the ids are fed,
not the picks, so every candidate does the same work and EOS cannot end it early). Figures
are medians over rounds; ratios to fp32 are medians of per-round ratios with their IQR.
Memory bandwidth (ORT ReduceSum over 256 MiB, as inferopt.measure.roofline) is measured
right before and right after the timing rounds: decode is bandwidth bound, so the int4/fp32
ratio moves with what other processes leave of it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).parent))
from common import contention, save, table

from inferopt import hardware, zoo
from inferopt.generative import fidelity as fid_
from inferopt.generative.export import (
    _cap_context,
    _fix_head_dim,
    export_causal_lm,
    layout_of,
    read_config,
)
from inferopt.generative.fidelity import FidelityConfig, ReferenceRun, measure_fidelity
from inferopt.generative.generate import Generator, _BoundCache
from inferopt.generative.kv import DEFAULT_MAX_CONTEXT, KvLayout
from inferopt.generative.profile import weight_traffic
from inferopt.generative.weightonly import WeightOnly
from inferopt.measure.roofline import machine_peaks

MODEL = "smollm2-135m"
PROMPT_TOKENS = 128
DECODE_TOKENS = 64
BUSY_SHARE = 0.05  # other processes' share of the CPUs while timing above which it warns
FP32 = "fp32 (our export)"
INT8 = "int8-weight rtn"
INT4 = "int4-weight rtn"
INT8_FP32 = "int8-weight rtn, fp32 compute"
INT4_FLOAT = "int4-weight rtn-float"
INT4_FLOAT_HEAD = "int4-weight rtn-float, lm_head fp32 compute"
INT4_FLOAT_FP32 = "int4-weight rtn-float, fp32 compute (GGUF grids kept exactly)"
MIXED = "int4-weight rtn, mixed int8"
W8A8_ROW = "W8A8 (dynamic int8)"
BUILDER = "ORT GenAI builder int4"
INT4_ROWS = (INT4, INT4_FLOAT, INT4_FLOAT_HEAD, INT4_FLOAT_FP32, MIXED, BUILDER)
INT8_ROWS = (INT8, INT8_FP32)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)
START = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - START:6.0f}s] {message}", file=sys.stderr, flush=True)


@dataclass
class Candidate:
    name: str
    folder: Path
    build_s: float
    detail: str = ""
    ttft_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)  # per round: the 64 steps' total
    step_ms: list[float] = field(default_factory=list)
    fidelity: Any = None
    last_logits: bool = True  # timed with the last-position rewrite (False: not recognised)


# -- building the candidates -------------------------------------------------------------------


def _builder_int4(hf: Path, out: Path) -> str:
    """ORT GenAI's model builder at int4 for the CPU with its defaults (what `python -m
    onnxruntime_genai.models.builder -i HF -o OUT -p int4 -e cpu` runs, in-process as
    export.py runs it for fp32), its cache axis pinned and context capped as ours is."""
    from onnxruntime_genai.models import builder

    chatter = io.StringIO()
    with (
        tempfile.TemporaryDirectory(prefix="inferopt-builder-") as cache,
        contextlib.redirect_stdout(chatter),
        contextlib.redirect_stderr(chatter),
    ):
        where = (None, str(hf), str(out), "int4", "cpu", cache)
        extra = builder.parse_extra_options(*where, None)
        builder.create_model(*where, **extra)
    config = read_config(hf)
    window = int(config.get("max_position_embeddings", DEFAULT_MAX_CONTEXT))
    context = min(DEFAULT_MAX_CONTEXT, window)
    _fix_head_dim(out / "model.onnx", layout_of(config, context))
    _cap_context(out / "genai_config.json", context)
    for name in TOKENIZER_FILES:
        if (hf / name).is_file() and not (out / name).is_file():
            shutil.copy2(hf / name, out / name)
    return _nbits_summary(out)


def _nbits_summary(folder: Path) -> str:
    """The graph's MatMul and Gather kinds: `Gather x2, MatMulNBits x151 (4-bit b32 acc4 x150,
    8-bit b32 acc4 x1)`."""
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    kinds: dict[str, int] = {}
    for node in graph.graph.node:
        if node.op_type == "MatMulNBits":
            a = {x.name: x.i for x in node.attribute}
            key = f"{a.get('bits', 4)}-bit b{a.get('block_size')} acc{a.get('accuracy_level', 0)}"
            kinds[key] = kinds.get(key, 0) + 1
    ops: dict[str, int] = {}
    for node in graph.graph.node:
        if node.op_type in (
            "MatMul",
            "MatMulNBits",
            "MatMulInteger",
            "DynamicQuantizeMatMul",
            "Gather",
            "GatherBlockQuantized",
            "DynamicQuantizeLinear",
        ):
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
    text = ", ".join(f"{op} x{n}" for op, n in sorted(ops.items()))
    if kinds:
        text += " (" + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())) + ")"
    return text


def build(work: Path, quick: bool, skipped: dict[str, str]) -> list[Candidate]:
    hf = zoo.generator_folder(MODEL)
    out: list[Candidate] = []

    def timed(name: str, make: Callable[[Path], str | None]) -> None:
        folder = work / "".join(ch if ch.isalnum() else "-" for ch in name)
        say(f"building {name}")
        start = time.perf_counter()
        try:
            detail = make(folder)
        except Exception as exc:  # a failed variant is reported, not fatal to the others
            skipped[name] = f"build failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            say(f"  {name}: {skipped[name]}")
            shutil.rmtree(folder, ignore_errors=True)
            return
        seconds = time.perf_counter() - start
        detail = detail or _nbits_summary(folder)
        out.append(Candidate(name, folder, seconds, detail))
        say(f"  {name}: {seconds:.1f} s, {_disk_mib(folder):.0f} MiB; {detail}")

    timed(FP32, lambda f: (export_causal_lm(hf, f), "builder exporter, fp32")[1])
    if not out:
        return out  # nothing to quantize or compare against
    fp32 = out[0].folder

    def pass_(p: WeightOnly) -> Callable[[Path], str]:
        return lambda f: (p.apply(fp32, f), p.describe() + "; " + _nbits_summary(f))[1]

    timed(INT8, pass_(WeightOnly(bits=8)))
    timed(INT8_FP32, pass_(WeightOnly(bits=8, accuracy_level=1)))
    timed(INT4, pass_(WeightOnly()))
    timed(INT4_FLOAT, pass_(WeightOnly(algorithm="rtn-float")))
    timed(INT4_FLOAT_HEAD, pass_(WeightOnly(algorithm="rtn-float", lm_head_accuracy_level=1)))
    timed(INT4_FLOAT_FP32, pass_(WeightOnly(algorithm="rtn-float", accuracy_level=1)))

    mixed = _optional("inferopt.generative.mixed", "choose_int8_nodes", skipped, MIXED)
    if mixed is not None:

        def make_mixed(f: Path) -> str:
            kwargs: dict[str, Any] = {"share": 0.25, "windows": 1 if quick else 4}
            if "progress" in inspect.signature(mixed).parameters:
                kwargs["progress"] = lambda m: say(f"  {m}")
            nodes = mixed(fp32, WeightOnly(), **kwargs)
            p = WeightOnly(int8_nodes=nodes)
            p.apply(fp32, f)
            return f"{p.describe()}; share 0.25 of layer groups; {_nbits_summary(f)}"

        timed(MIXED, make_mixed)

    w8a8 = _optional("inferopt.generative.w8a8", "W8A8", skipped, W8A8_ROW)
    if w8a8 is not None:
        w8 = w8a8()
        timed(W8A8_ROW, lambda f: (w8.apply(fp32, f), f"{w8!r}; {_nbits_summary(f)}")[1])
    timed(BUILDER, lambda f: _builder_int4(hf, f))
    return out


def _optional(module: str, attribute: str, skipped: dict[str, str], row: str) -> Any:
    """module.attribute, or None with the reason in `skipped` (written in parallel)."""
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        skipped[row] = f"not available: {type(exc).__name__}: {exc}"
        say(f"skipping {row}: {skipped[row]}")
        return None


def _disk_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("model.onnx*")) / 2**20


# -- timing --------------------------------------------------------------------------------------


def bandwidth() -> tuple[float, float]:
    """Memory bandwidth now, bytes/s: (ORT ReduceSum over 256 MiB of float32, the method of
    inferopt.measure.roofline; an fp32 MatMul [1, 576] x [576, 98304], 216 MiB of weights of
    this model's hidden width, streamed as a decode step streams them), all usable cores."""
    from onnx import TensorProto, helper, numpy_helper

    from inferopt.measure.roofline import _bandwidth, _best_seconds
    from inferopt.runtime import SessionConfig, create_session

    cores = hardware.probe().usable_cores
    k, n = 576, 98304
    weight = np.random.default_rng(0).standard_normal((k, n), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["Y"])],
        "gemv",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(weight, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = create_session(model, SessionConfig(intra_op_threads=cores))
    gemv = weight.nbytes / _best_seconds(session, {"A": np.ones((1, k), np.float32)})
    return _bandwidth(cores), gemv


def time_all(candidates: list[Candidate], rounds: int) -> dict[str, Any]:
    # Last-position logits, as `inferopt generate` and the server run them: TTFT is theirs.
    gens = {c.name: Generator(c.folder, last_logits=True) for c in candidates}
    for c in candidates:
        c.last_logits = gens[c.name].last_logits
    ids = fid_.held_out_prompts(gens[FP32].tokenizer, 1, PROMPT_TOKENS + DECODE_TOKENS)[0]
    prompt, steps = ids[:PROMPT_TOKENS], ids[PROMPT_TOKENS:]

    def once(gen: Generator) -> tuple[float, list[float]]:
        positions = "position_ids" in {i.name for i in gen.session.get_inputs()}
        # An untimed prefill first: a session that runs right after another is up to 2x slower
        # for ~70 ms (inferopt.measure.latency.SETTLE_S), which the timed TTFT would carry.
        _BoundCache(gen.session, gen.layout, positions).run(prompt)
        cache = _BoundCache(gen.session, gen.layout, positions)
        start = time.perf_counter()
        int(np.argmax(cache.run(prompt)))
        ttft = time.perf_counter() - start
        times = []
        for i in range(DECODE_TOKENS):
            start = time.perf_counter()
            int(np.argmax(cache.run(steps[i : i + 1])))
            times.append(time.perf_counter() - start)
        return ttft, times

    say("timing: warm-up")
    for gen in gens.values():
        once(gen)
    load_before = list(os.getloadavg())
    say("timing: bandwidth before")
    bw_before, gemv_before = bandwidth()
    by_name = {c.name: c for c in candidates}
    names = list(gens)
    with contention() as others:
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                ttft, times = once(gens[name])
                c = by_name[name]
                c.ttft_s.append(ttft)
                c.decode_s.append(sum(times))
                c.step_ms.extend(t * 1e3 for t in times)
            fp = by_name[FP32]
            say(f"timing: round {r + 1}/{rounds}, fp32 {DECODE_TOKENS / fp.decode_s[-1]:.1f} tok/s")
    if others["other_share"] > BUSY_SHARE:
        say(f"warning: other processes took {others['other_share']:.0%} of the CPUs while timing; "
            "int4 decode is compute-bound here and loses more to them than fp32 does")  # fmt: skip
    say("timing: bandwidth after")
    bw_after, gemv_after = bandwidth()
    del gens
    return {
        "bandwidth_before": bw_before,
        "bandwidth_after": bw_after,
        "gemv_bandwidth_before": gemv_before,
        "gemv_bandwidth_after": gemv_after,
        "load_average_before_timing": load_before,
        "load_average_after_timing": list(os.getloadavg()),
        "other_cpu_share": others["other_share"],
        "steal_share": others["steal_share"],
    }


def _last_logits(candidates: list[Candidate]) -> str:
    """Which candidates' graphs the last-position rewrite did not recognise (all logits)."""
    whole = [c.name for c in candidates if not c.last_logits]
    return f" (every position's for {', '.join(whole)}: graph not recognised)" if whole else ""


def _contention(timing: dict[str, Any]) -> str:
    """What else ran while timing, as a sentence fragment (older results lack the figures)."""
    if "other_cpu_share" not in timing:
        return "other processes' CPU share not recorded"
    return (
        f"other processes took {timing['other_cpu_share']:.1%} of the CPUs while timing and the "
        f"hypervisor {timing['steal_share']:.1%} (benchmarks/common.contention)"
    )


def _ratio(c: Candidate, base: Candidate, what: str) -> tuple[float, float, float, float]:
    """(median, q25, q75, min) of per-round base/candidate time ratios (>1: faster)."""
    r = np.array(getattr(base, what)) / np.array(getattr(c, what))
    q25, q50, q75 = np.percentile(r, [25, 50, 75])
    return float(q50), float(q25), float(q75), float(r.min())


# -- report ----------------------------------------------------------------------------------


def _iv(interval: Any, point: float, scale: float = 1.0, digits: int = 3) -> str:
    if interval is None or not np.isfinite(point):
        return "inf (non-finite logits)"
    return (
        f"{point * scale:.{digits}f} [{interval.low * scale:.{digits}f}, "
        f"{interval.high * scale:.{digits}f}]"
    )


def report(
    candidates: list[Candidate], timing: dict[str, Any], skipped: dict[str, str], cfg: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    base = next(c for c in candidates if c.name == FP32)
    bw = (timing["bandwidth_before"] + timing["bandwidth_after"]) / 2
    gemv = (timing["gemv_bandwidth_before"] + timing["gemv_bandwidth_after"]) / 2
    quiet = machine_peaks(hardware.probe()).bandwidth_bytes_per_s
    speed_rows, fid_rows, figures = [], [], {}
    for c in candidates:
        graph = onnx.load(str(c.folder / "model.onnx"), load_external_data=False)
        traffic = weight_traffic(graph)
        layout = KvLayout.of(graph)
        mean_context = PROMPT_TOKENS + (DECODE_TOKENS + 1) / 2
        per_token = traffic.bytes_per_token + layout.bytes_per_token() * mean_context
        roof = bw / per_token
        decode = DECODE_TOKENS / float(np.median(c.decode_s))
        ttft = float(np.median(c.ttft_s))
        d_ratio = _ratio(c, base, "decode_s")
        p_ratio = _ratio(c, base, "ttft_s")
        figures[c.name] = {
            "folder_detail": c.detail,
            "build_s": c.build_s,
            "disk_mib": _disk_mib(c.folder),
            "decode_tokens_per_s": decode,
            "decode_rounds_s": c.decode_s,
            "decode_ms_p50": float(np.median(c.step_ms)),
            "decode_ms_p90": float(np.percentile(c.step_ms, 90)),
            "decode_vs_fp32": d_ratio,
            "ttft_s": ttft,
            "ttft_rounds_s": c.ttft_s,
            "prefill_tokens_per_s": PROMPT_TOKENS / ttft,
            "prefill_vs_fp32": p_ratio,
            "weight_bytes_per_token": traffic.bytes_per_token,
            "bytes_per_decoded_token": per_token,
            "roof_tokens_per_s": roof,
            "roof_fraction": decode / roof,
            "fidelity": c.fidelity.to_json() if c.fidelity is not None else None,
        }
        speed_rows.append(
            [
                c.name,
                round(decode, 1),
                f"{d_ratio[0]:.2f}x [{d_ratio[1]:.2f}, {d_ratio[2]:.2f}]",
                round(ttft * 1e3, 1),
                round(PROMPT_TOKENS / ttft),
                f"{p_ratio[0]:.2f}x (min {p_ratio[3]:.2f})",
                round(traffic.bytes_per_token / 1e6, 1),
                round(roof, 1),
                f"{decode / roof:.0%}",
                round(_disk_mib(c.folder), 1),
                round(c.build_s, 1),
            ]
        )
        f = c.fidelity
        if c.name == FP32:
            fid_rows.append(
                [c.name, f"{cfg['perplexity_reference']:.3f} (reference)", "0", "0", "1", "1"]
            )
        elif f is not None:
            fid_rows.append(
                [
                    c.name,
                    f"{f.perplexity:.3f}",
                    _iv(f.perplexity_change, f.perplexity_change_point, 100, 2),
                    _iv(f.kl, f.kl_point, 1, 4),
                    _iv(f.same_top1, f.same_top1_point),
                    _iv(f.greedy_agreement, f.greedy_agreement_point),
                ]
            )
    f32 = figures[FP32]
    fp32_gemv = f32["decode_tokens_per_s"] * f32["bytes_per_decoded_token"] / gemv
    f32["roof_fraction_gemv"] = fp32_gemv
    for name, why in skipped.items():
        speed_rows.append([name, f"not run: {why}", *[""] * 9])
    rounds = len(base.decode_s)
    speed = table(
        f"{MODEL}, batch 1, {PROMPT_TOKENS}-token held-out prompt then {DECODE_TOKENS} decode "
        f"steps, {rounds} interleaved rounds",
        [
            "candidate",
            "decode tok/s",
            "decode vs fp32 [IQR]",
            f"TTFT {PROMPT_TOKENS} ms",
            "prefill tok/s",
            "prefill vs fp32 (worst round)",
            "weight MB / token",
            "roof tok/s",
            "of roof",
            "MiB on disk",
            "build s",
        ],
        speed_rows,
        f"Memory bandwidth in this run: {timing['bandwidth_before'] / 1e9:.1f} GB/s before the "
        f"timing rounds, {timing['bandwidth_after'] / 1e9:.1f} GB/s after (ORT ReduceSum over "
        f"256 MiB, all cores; this machine's cached quiet-time peak {quiet / 1e9:.1f} GB/s); "
        f"the roof uses their mean, {bw / 1e9:.1f} GB/s. An fp32 MatMul [1, 576] x [576, 98304] "
        f"(216 MiB of weights at this model's width) streamed "
        f"{timing['gemv_bandwidth_before'] / 1e9:.1f} and "
        f"{timing['gemv_bandwidth_after'] / 1e9:.1f} GB/s before and after: against their mean "
        f"fp32 decode reaches {fp32_gemv:.0%}. Roof tok/s = bandwidth / (weight "
        f"bytes per token + fp32 KV cache read at the mean decode context of "
        f"{PROMPT_TOKENS + (DECODE_TOKENS + 1) / 2:g} tokens). Weight bytes per token: "
        f"profile.weight_traffic, stored sizes (packed blocks + scales + zero points), one "
        f"embedding row unless tied to the lm_head. Decode tok/s: {DECODE_TOKENS} / the "
        f"median round's step total; ratios: median of per-round ratios to fp32 [IQR], the "
        f"prefill ratio with its worst round; each timed prefill comes right after an untimed "
        f"one of the same candidate and computes the last position's logits only, as "
        f"`inferopt generate` and the server do{_last_logits(candidates)}. Build s: export "
        f"(fp32) or quantization of the fp32 artifact, wall time, mixed including its "
        f"sensitivity search. Load average "
        f"{timing['load_average_before_timing'][0]:.2f} before and "
        f"{timing['load_average_after_timing'][0]:.2f} after the timing rounds (2 cores); "
        f"{_contention(timing)}. " + " ".join(f"{c.name}: {c.detail}." for c in candidates),
    )
    fidelity = table(
        f"{MODEL}, fidelity to fp32 on held-out text (95% bootstrap intervals)",
        [
            "candidate",
            "perplexity",
            "perplexity change % [95%]",
            "KL nats/token [95%]",
            "same top-1 [95%]",
            "greedy agreement [95%]",
        ],
        fid_rows,
        f"Teacher-forced over {cfg['windows']} windows of {cfg['window_tokens']} held-out "
        f"tokens ({cfg['tokens']} scored positions), each a prefill on an empty cache; greedy "
        f"agreement: identical greedy prefix / {cfg['greedy_tokens']} tokens over "
        f"{cfg['greedy_prompts']} held-out prompts of {cfg['prompt_tokens']} tokens. Intervals: "
        f"percentile bootstrap over windows or prompts, paired with fp32 "
        f"(inferopt.generative.fidelity).",
    )
    return [speed, fidelity, targets(figures)], figures


def targets(fig: dict[str, dict[str, Any]]) -> dict[str, Any]:
    rows: list[list[str]] = []

    def add(target: str, figure: str, met: bool) -> None:
        rows.append([target, figure, "met" if met else "not met"])

    if FP32 in fig:
        f = fig[FP32]
        add(
            "fp32 decode >= 60% of the bandwidth roof",
            f"{f['roof_fraction']:.0%} ({f['decode_tokens_per_s']:.1f} of "
            f"{f['roof_tokens_per_s']:.1f} tok/s; {f['roof_fraction_gemv']:.0%} against the "
            "MatMul-streamed bandwidth)",
            f["roof_fraction"] >= 0.6,
        )
        add(
            f"fp32 TTFT for {PROMPT_TOKENS} tokens <= 0.5 s",
            f"{f['ttft_s']:.3f} s",
            f["ttft_s"] <= 0.5,
        )
    for name in INT4_ROWS:
        if name not in fig:
            continue
        f = fig[name]
        speed, fd = f["decode_vs_fp32"][0], f["fidelity"] or {}
        ppl = fd.get("perplexity_change_point")
        top1 = fd.get("same_top1_point")
        ok = speed >= 2.5 and ppl is not None and ppl <= 0.05 and (top1 or 0) >= 0.9
        ppl_text = "inf" if ppl is None else f"{ppl:+.2%}"
        top1_text = "?" if top1 is None else f"{top1:.3f}"
        add(
            f"{name}: decode >= 2.5x fp32, perplexity <= +5%, same top-1 >= 0.90",
            f"{speed:.2f}x, {ppl_text}, {top1_text}",
            ok,
        )
    for name in INT8_ROWS:
        if name not in fig:
            continue
        fd = fig[name]["fidelity"] or {}
        ppl, top1 = fd.get("perplexity_change_point"), fd.get("same_top1_point") or 0
        add(
            f"{name}: perplexity within 1%, same top-1 >= 0.97",
            f"{'inf' if ppl is None else f'{ppl:+.2%}'}, {top1:.3f}",
            ppl is not None and abs(ppl) <= 0.01 and top1 >= 0.97,
        )
    for name in INT4_ROWS:
        if name in fig:
            median, _, _, worst = fig[name]["prefill_vs_fp32"]
            add(
                f"{name}: prefill never slower than fp32",
                f"{median:.3f}x median, worst round {worst:.2f}x",
                median >= 1.0,
            )
    return table(
        "Targets",
        ["target", "measured", "verdict"],
        rows,
        "Judged on the point figures (median ratios; full-sample fidelity); the intervals are "
        "in the tables above. 'Never slower on prefill' is judged on the median per-round "
        "ratio; the worst round is shown because single rounds on a shared 2-core machine "
        "swing either way.",
    )


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds, 4 fidelity windows")
    parser.add_argument("--keep", type=Path, help="build in this folder and keep it")
    args = parser.parse_args()
    logging.disable(logging.INFO)  # ORT's quantizers log per node, some on the root logger
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    load_start = list(os.getloadavg())
    rounds = 2 if args.quick else 7
    config = (
        FidelityConfig(windows=4, greedy_prompts=2, greedy_tokens=16)
        if args.quick
        else FidelityConfig()
    )
    # The fp32 reference's teacher-forced logits (24 x 128 x 49152 float32, 600 MB) are kept
    # across the candidates instead of recomputed for each: memory is ample here.
    fid_.CACHE_BYTES = 1 << 30
    skipped: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        if args.keep:
            work = args.keep
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="inferopt-gen-")))
        candidates = build(work, args.quick, skipped)
        if not candidates or candidates[0].name != FP32:
            raise SystemExit("the fp32 export failed; nothing to compare against")
        timing = time_all(candidates, rounds)
        say("fidelity: fp32 reference run")
        reference = ReferenceRun.of(candidates[0].folder, config)
        for c in candidates[1:]:
            say(f"fidelity: {c.name}")
            c.fidelity = measure_fidelity(c.folder, reference)
            say(
                f"  perplexity change {c.fidelity.perplexity_change_point:+.2%}, "
                f"same top-1 {c.fidelity.same_top1_point:.3f}"
            )
        first = next((c.fidelity for c in candidates[1:] if c.fidelity is not None), None)
        cfg = {
            **{
                k: getattr(config, k)
                for k in (
                    "windows",
                    "window_tokens",
                    "greedy_prompts",
                    "prompt_tokens",
                    "greedy_tokens",
                )
            },
            "tokens": first.tokens if first else 0,
            "perplexity_reference": first.perplexity_reference if first else float("nan"),
        }
        tables, figures = report(candidates, timing, skipped, cfg)
    command = "python benchmarks/generative.py" + (" --quick" if args.quick else "")
    path = save(
        "generative",
        {
            "command": command,
            "machine": {"load_average": load_start},  # at start, as render.py says
            "load_average_after": list(os.getloadavg()),
            "wall_s": time.perf_counter() - START,
            "rounds": rounds,
            "fidelity_config": cfg,
            "timing": timing,
            "skipped": skipped,
            "candidates": figures,
            "tables": tables,
        },
    )
    say(f"wrote {path} in {time.perf_counter() - START:.0f} s")
    for t in tables:
        print(json.dumps(t, indent=1))


if __name__ == "__main__":
    main()
