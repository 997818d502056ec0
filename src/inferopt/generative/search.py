"""The search on generators: build each weight-only and W8A8 variant of a decoder artifact,
measure its fidelity against the fp32 artifact (generative/fidelity.py, with intervals) and
its speed on this machine at each thread count, and keep the best on the objective within
the budget, with the Pareto set.

One straight line: variants → fidelity → timing (interleaved rounds, medians) → choice →
artifact. Finished variants are cached (folder + outcome.json) under the cache, keyed by the
source artifact's weights, the variant, the fidelity settings, the machine and inferopt's
version, so a second search measures only what changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from inferopt import cache, hardware
from inferopt.errors import InputError
from inferopt.generative.fidelity import (
    FidelityConfig,
    GeneratorFidelity,
    ReferenceRun,
    measure_fidelity,
)
from inferopt.generative.generate import MODEL_FILE, Generator, _BoundCache
from inferopt.generative.kv import DEFAULT_MAX_CONTEXT, KvLayout
from inferopt.generative.mixed import choose_int8_nodes
from inferopt.generative.w8a8 import W8A8
from inferopt.generative.weightonly import DATA_FILE, WeightOnly
from inferopt.runtime import SessionConfig

OBJECTIVES = ("decode", "ttft", "size", "memory")
METRICS = ("perplexity", "kl", "same-top1", "greedy")
# Default budget: perplexity at most 5% above fp32's, judged on the 95% interval's upper
# bound (the int4 target users hold generators to; docs/generate.md).
DEFAULT_METRIC, DEFAULT_BUDGET = "perplexity", 0.05
VARIANTS: dict[str, Callable[[], WeightOnly | W8A8 | None]] = {
    "fp32": lambda: None,
    "int8-weight": lambda: WeightOnly(bits=8),
    # int8 activations (level 4) cost SmolLM2 same-top-1 0.954; fp32 compute 0.973
    "int8-weight-fp32-compute": lambda: WeightOnly(bits=8, accuracy_level=1),
    "int4-weight": lambda: WeightOnly(),
    "int4-weight-float-zp": lambda: WeightOnly(algorithm="rtn-float"),
    # A GGUF model's own Q4_1/Q8_0 grids at fp32 compute: its logits to float rounding
    "int4-weight-float-zp-fp32-compute": lambda: WeightOnly(
        algorithm="rtn-float", accuracy_level=1
    ),
    "int4-weight-hqq": lambda: WeightOnly(algorithm="hqq"),
    "int4-weight-mixed": lambda: WeightOnly(),  # int8 layers chosen by sensitivity
    "w8a8": lambda: W8A8(),  # smoothing alpha 0.5: +16% perplexity on smollm2, none +69%
}
DEFAULT_VARIANTS = ("fp32", "int8-weight", "int8-weight-fp32-compute", "int4-weight",
                    "int4-weight-float-zp", "int4-weight-float-zp-fp32-compute",
                    "int4-weight-mixed", "w8a8")  # fmt: skip
OUTCOME = "outcome.json"
BUILD = "3"  # bump when what an outcome records changes meaning


@dataclass(frozen=True)
class GeneratorSearchConfig:
    """objective: decode (tokens/s, batch 1; default), ttft (128-token prompt), size (bytes
    on disk) or memory (weights + KV cache at the capped context). metric / budget: perplexity
    (relative increase, 0.05 = 5%), kl (nats/token), same-top1 or greedy (drop from 1); a
    variant is within budget when its 95% interval's worse bound is. threads: intra-op thread
    counts tried (each variant at each). rounds: interleaved timing rounds. mixed_share: the
    share of layers int4-weight-mixed keeps at int8.

    Raises:
        ValueError: an unknown objective, metric or variant, a negative budget, no variants,
            a thread count < 1, rounds < 1, mixed_share outside (0, 1].
    """

    objective: str = "decode"
    metric: str = DEFAULT_METRIC
    budget: float = DEFAULT_BUDGET
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    threads: tuple[int, ...] = field(default_factory=lambda: _thread_choices())
    rounds: int = 5
    decode_tokens: int = 32
    prompt_tokens: int = 128
    mixed_share: float = 0.25
    fidelity: FidelityConfig = field(default_factory=FidelityConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "variants", tuple(self.variants))
        object.__setattr__(self, "threads", tuple(self.threads))
        checks = [
            (self.objective in OBJECTIVES, f"objective must be one of {', '.join(OBJECTIVES)}"),
            (self.metric in METRICS, f"metric must be one of {', '.join(METRICS)}"),
            (self.budget >= 0, "budget must be >= 0"),
            (bool(self.variants), "at least one variant is needed"),
            (all(v in VARIANTS for v in self.variants), f"variants are {', '.join(VARIANTS)}"),
            (all(t >= 1 for t in self.threads) and bool(self.threads), "threads must be >= 1"),
            (self.rounds >= 1 and self.decode_tokens >= 1, "rounds, decode_tokens must be >= 1"),
            (self.prompt_tokens >= 1, "prompt_tokens must be >= 1"),
            (0.0 < self.mixed_share <= 1.0, "mixed_share must be in (0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message}; got {self}")


def _thread_choices() -> tuple[int, ...]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    return tuple(sorted({1, cores}))


@dataclass(frozen=True)
class Candidate:
    """One variant at one thread count, measured."""

    variant: str
    describe: str
    threads: int
    decode_tokens_per_s: float
    ttft_s: float
    size_bytes: int
    memory_bytes: int
    fidelity: dict[str, Any]
    verdict: str  # within, over or unresolved (the interval straddles the budget)
    folder: str

    def objective_value(self, objective: str) -> float:
        """Larger is better for every objective (times and bytes negated)."""
        return {"decode": self.decode_tokens_per_s, "ttft": -self.ttft_s,
                "size": -float(self.size_bytes),
                "memory": -float(self.memory_bytes)}[objective]  # fmt: skip


@dataclass(frozen=True)
class GeneratorSearchResult:
    config: dict[str, Any]
    candidates: list[Candidate]
    chosen: Candidate
    pareto: list[Candidate]
    hardware: dict[str, Any]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config, "chosen": asdict(self.chosen),
                "pareto": [asdict(c) for c in self.pareto],
                "candidates": [asdict(c) for c in self.candidates],
                "hardware": self.hardware, "seconds": self.seconds}  # fmt: skip


def search_generator(
    source: str | Path,
    config: GeneratorSearchConfig = GeneratorSearchConfig(),
    *,
    fresh: bool = False,
    progress: Callable[[str], None] = lambda line: None,
) -> GeneratorSearchResult:
    """Search `source` (an fp32 decoder artifact folder) as the module docstring says.

    Raises:
        InputError: `source` is not a decoder artifact.
    """
    start = time.monotonic()
    source = Path(source)
    if not (source / MODEL_FILE).is_file():
        raise InputError(f"{source}: not a decoder artifact, no {MODEL_FILE}")
    reference = ReferenceRun.of(source, config.fidelity)
    built = {name: _build(source, name, config, reference, fresh, progress)
             for name in config.variants}  # fmt: skip
    timings = _time(built, config, progress)
    footprints = {name: _Footprint.of(name, folder) for name, (folder, _) in built.items()}
    candidates = [
        _candidate(name, threads, folder, fid, timings[(name, threads)], footprints[name], config)
        for name, (folder, fid) in built.items()
        for threads in config.threads
    ]
    chosen = _choose(candidates, config.objective)
    return GeneratorSearchResult(
        config=_config_json(config), candidates=candidates, chosen=chosen,
        pareto=pareto(candidates, config.objective), hardware=hardware.probe().to_json(),
        seconds=time.monotonic() - start,
    )  # fmt: skip


def _build(
    source: Path,
    name: str,
    config: GeneratorSearchConfig,
    reference: ReferenceRun,
    fresh: bool,
    progress: Callable[[str], None],
) -> tuple[Path, GeneratorFidelity | None]:
    """The variant's artifact folder (cached) and its fidelity (None for fp32 itself)."""
    if name == "fp32":
        return source, None
    folder = _store(source, name, config)
    outcome = folder / OUTCOME
    if outcome.is_file() and not fresh:
        progress(f"{name}: cached")
        return folder, _fidelity_from(json.loads(outcome.read_text()))
    shutil.rmtree(folder, ignore_errors=True)
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    began = time.monotonic()
    variant = VARIANTS[name]()
    if name == "int4-weight-mixed" and isinstance(variant, WeightOnly):
        nodes = choose_int8_nodes(source, variant, share=config.mixed_share, progress=progress)
        variant = WeightOnly(int8_nodes=nodes)
    assert variant is not None
    variant.apply(source, staging)
    progress(f"{name}: built in {time.monotonic() - began:.1f} s; measuring fidelity")
    fid = measure_fidelity(staging, reference)
    record = {"variant": name, "describe": variant.describe(), "fidelity": fid.to_json(),
              "fidelity_raw": asdict(fid)}  # fmt: skip
    (staging / OUTCOME).write_text(json.dumps(record, indent=1))
    staging.rename(folder)  # an interrupted build leaves only a .partial folder
    progress(f"{name}: {_fidelity_line(fid)}")
    return folder, fid


def _store(source: Path, name: str, config: GeneratorSearchConfig) -> Path:
    data = source / DATA_FILE
    weights = data if data.is_file() else source / MODEL_FILE
    stat = weights.stat()
    key = json.dumps([str(weights.resolve()), stat.st_size, stat.st_mtime_ns, name,
                      asdict(config.fidelity), config.mixed_share, hardware.probe().fingerprint(),
                      metadata.version("inferopt"), BUILD])  # fmt: skip
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache.cache_dir("search", "generators") / f"{name}-{digest}"


def _fidelity_from(record: dict[str, Any]) -> GeneratorFidelity:
    from inferopt.measure.interval import Interval

    raw = record["fidelity_raw"]
    values: dict[str, Any] = {
        k: (Interval(**v) if isinstance(v, dict) else v) for k, v in raw.items()
    }
    return GeneratorFidelity(**values)


def _fidelity_line(fid: GeneratorFidelity) -> str:
    p = fid.perplexity_change
    return (f"perplexity {fid.perplexity_change_point:+.2%} [{p.low:+.2%}, {p.high:+.2%}], "
            f"KL {fid.kl_point:.4f}, same top-1 {fid.same_top1_point:.1%}, "
            f"greedy {fid.greedy_agreement_point:.1%}")  # fmt: skip


def verdict(fid: GeneratorFidelity | None, metric: str, budget: float) -> str:
    """within / over / unresolved for `metric` against `budget` (fp32 itself: within)."""
    if fid is None:
        return "within"
    interval = {"perplexity": fid.perplexity_change, "kl": fid.kl,
                "same-top1": fid.same_top1, "greedy": fid.greedy_agreement}[metric]  # fmt: skip
    if metric in ("perplexity", "kl"):
        worse, better = interval.high, interval.low
        return "within" if worse <= budget else "over" if better > budget else "unresolved"
    worse, better = 1.0 - interval.low, 1.0 - interval.high  # as drops from 1
    return "within" if worse <= budget else "over" if better > budget else "unresolved"


def _time(
    built: dict[str, tuple[Path, GeneratorFidelity | None]],
    config: GeneratorSearchConfig,
    progress: Callable[[str], None],
) -> dict[tuple[str, int], tuple[float, float]]:
    """(decode seconds per token, TTFT seconds) per (variant, threads): rounds interleaved
    over every pair, medians."""
    generators = {  # last-position logits, as `inferopt generate` and the server run them
        (name, threads): Generator(
            folder, session_config=SessionConfig(intra_op_threads=threads), last_logits=True
        )
        for name, (folder, _) in built.items()
        for threads in config.threads
    }
    first = next(iter(generators.values()))
    prompt = _prompt(first, config.prompt_tokens + config.decode_tokens)
    samples: dict[tuple[str, int], list[tuple[float, float]]] = {k: [] for k in generators}
    for r in range(config.rounds):
        for key, gen in generators.items():
            samples[key].append(_decode_once(gen, prompt, config))
        progress(f"timing round {r + 1}/{config.rounds}")
    return {k: (statistics.median(s[0] for s in v), statistics.median(s[1] for s in v))
            for k, v in samples.items()}  # fmt: skip


def _prompt(generator: Generator, tokens: int) -> np.ndarray:
    from inferopt.generative.fidelity import held_out_windows

    ids: np.ndarray = held_out_windows(generator.tokenizer, 1, tokens)[0]
    return ids


def _decode_once(
    gen: Generator, ids: np.ndarray, config: GeneratorSearchConfig
) -> tuple[float, float]:
    """One prefill of prompt_tokens (TTFT) then decode_tokens single-token steps (fixed
    held-out tokens, so EOS cannot end it early): (seconds per decoded token, TTFT s), after
    one untimed prefill: right after another session, a session runs up to 2x slower for
    ~70 ms (inferopt.measure.latency.SETTLE_S), which the timed one would carry."""
    positions = "position_ids" in gen._inputs
    _BoundCache(gen.session, gen.layout, positions).run(ids[: config.prompt_tokens])
    cache_ = _BoundCache(gen.session, gen.layout, positions)
    began = time.perf_counter()
    cache_.run(ids[: config.prompt_tokens])
    ttft = time.perf_counter() - began
    began = time.perf_counter()
    for i in range(config.prompt_tokens, config.prompt_tokens + config.decode_tokens):
        cache_.run(ids[i : i + 1])
    return (time.perf_counter() - began) / config.decode_tokens, ttft


@dataclass(frozen=True)
class _Footprint:
    """What a variant's artifact is, whatever the thread count: read once per variant."""

    describe: str
    size_bytes: int
    memory_bytes: int

    @classmethod
    def of(cls, name: str, folder: Path) -> _Footprint:
        size = sum(f.stat().st_size for f in folder.iterdir() if f.name.startswith(MODEL_FILE))
        layout = _layout(folder)
        outcome = folder / OUTCOME  # every built variant has one; fp32 is the source itself
        describe = json.loads(outcome.read_text())["describe"] if name != "fp32" else "fp32"
        return cls(str(describe), size, size + layout.bytes_per_token() * layout.max_context)


def _candidate(
    name: str,
    threads: int,
    folder: Path,
    fid: GeneratorFidelity | None,
    timing: tuple[float, float],
    footprint: _Footprint,
    config: GeneratorSearchConfig,
) -> Candidate:
    return Candidate(
        variant=name,
        describe=footprint.describe,
        threads=threads,
        decode_tokens_per_s=1.0 / timing[0],
        ttft_s=timing[1],
        size_bytes=footprint.size_bytes,
        memory_bytes=footprint.memory_bytes,
        fidelity={} if fid is None else fid.to_json(),
        verdict=verdict(fid, config.metric, config.budget),
        folder=str(folder),
    )


def _layout(folder: Path) -> KvLayout:
    """The artifact's cache at its capped context (as Generator caps it by default)."""
    model = onnx.load(str(folder / MODEL_FILE), load_external_data=False)
    genai = json.loads((folder / "genai_config.json").read_text()).get("model", {})
    cap = min(int(genai.get("context_length") or DEFAULT_MAX_CONTEXT), DEFAULT_MAX_CONTEXT)
    return KvLayout.of(model, max_context=cap)


def _choose(candidates: list[Candidate], objective: str) -> Candidate:
    """The best on the objective among those within budget (fp32 always is)."""
    within = [c for c in candidates if c.verdict == "within"]
    return max(within, key=lambda c: c.objective_value(objective))


def pareto(candidates: list[Candidate], objective: str) -> list[Candidate]:
    """Candidates no other beats on both the objective and the perplexity change (point)."""

    def damage(c: Candidate) -> float:
        return float(c.fidelity.get("perplexity_change_point") or 0.0) if c.fidelity else 0.0

    return [
        c
        for c in candidates
        if not any(
            o.objective_value(objective) >= c.objective_value(objective)
            and damage(o) <= damage(c)
            and (o.objective_value(objective), damage(o)) != (c.objective_value(objective),
                                                              damage(c))
            for o in candidates
        )
    ]  # fmt: skip


def _config_json(config: GeneratorSearchConfig) -> dict[str, Any]:
    data = asdict(config)
    data["fidelity"] = asdict(config.fidelity)
    return data
