"""What a decoder artifact costs to run here, on batch 1 with its own session (the one
inferopt.generative.generate makes): time to first token per prompt length, decode speed
per token, KV-cache and weight bytes, peak memory, and how close decode and prefill get to
the machine's measured roofs (inferopt.measure.roofline).

Decode of one sequence reads every per-token weight once per token, so its roof is memory
bandwidth: tokens/s <= bandwidth / (weight bytes read per token + KV bytes read per token).
Prefill feeds the whole prompt in one run, so its roof is compute: FLOPs per token ~= 2 N
(N: MatMul weight parameters; Kaplan et al. 2020, "Scaling Laws for Neural Language Models",
Table 1, C_forward ~= 2N per token) plus attention 2 x 2 n_layer d_attn per attended
position (Kaplan's 2 n_layer n_ctx d_attn for QK^T, the same again for the weighted sum of
values, as Hoffmann et al. 2022, "Chinchilla", Appendix F, counts them).
"""

from __future__ import annotations

import dataclasses
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from inferopt.errors import InputError
from inferopt.generative import generate as gen_
from inferopt.generative.kv import DEFAULT_MAX_CONTEXT
from inferopt.generative.nbits import LOW_PLANE
from inferopt.hardware import HardwareInfo, probe
from inferopt.measure.memory import PeakMeter
from inferopt.measure.roofline import machine_peaks
from inferopt.runtime import SessionConfig

DEFAULT_PROMPT_LENGTHS = (16, 128, 512)
DECODE_PROMPT = 128  # tokens before the timed decode (fewer when the context is smaller)
# Ops whose constant inputs are weights read whole for every token.
MATMUL_OPS = frozenset(
    {"MatMul", "Gemm", "FusedMatMul", "MatMulNBits", "MatMulBnb4", "MatMulFpQ4", "MatMulInteger",
     "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm", "QLinearMatMul"}
)  # fmt: skip
PACKED_OPS = frozenset({"MatMulNBits", "MatMulBnb4", "MatMulFpQ4"})  # params: attributes K x N
EMBEDDING_OPS = frozenset({"Gather", "GatherBlockQuantized"})  # one row read per token
# Ops between a stored weight and its MatMul (transpose, cast, dequantize): the stored bytes count.
PASS_THROUGH = frozenset(
    {"Transpose", "Cast", "Reshape", "Identity", "Squeeze", "Unsqueeze", "DequantizeLinear"}
)
_HALF_BYTE = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4, 23}  # 23: FLOAT4E2M1
_ATTENTION_KEYS = ("num_hidden_layers", "num_attention_heads", "head_size")  # genai_config
FLAG_RATIO = 2.0  # prefill tokens/s below this times decode tokens/s: prefill is not batched


@dataclass(frozen=True)
class GeneratorProfileConfig:
    """What to measure. `prompt_lengths`: time to first token at each (tokens; the default
    ones are capped at the artifact's context, given ones past it are refused);
    `decode_tokens`: tokens timed one by one after a 128-token prompt; `repeats`: runs per
    prompt length and of the decode, interleaved; `threads`: ORT intra-op threads (None: the
    runtime's default).

    Raises:
        ValueError: no prompt length, a prompt length, decode_tokens, repeats or threads < 1.
    """

    prompt_lengths: tuple[int, ...] = DEFAULT_PROMPT_LENGTHS
    decode_tokens: int = 64
    repeats: int = 5
    threads: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt_lengths", tuple(self.prompt_lengths))
        if not self.prompt_lengths or min(self.prompt_lengths) < 1:
            raise ValueError(f"prompt lengths must be >= 1, got {list(self.prompt_lengths)}")
        for name in ("decode_tokens", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 (None: the default), got {self.threads}")


@dataclass(frozen=True)
class WeightTraffic:
    """Weight bytes from the graph, at their stored size (MatMulNBits: packed B + scales +
    zero points). Per decoded token: every constant input of a MatMul-like node, and one row
    of an embedding Gather's table unless that table is also a MatMul weight (tied)."""

    matmul_bytes: int
    embedding_row_bytes: int
    matmul_params: int  # weight parameters of MatMul-like nodes (MatMulNBits: K x N)
    total_bytes: int  # every initializer and Constant of the graph
    packed_matmuls: int  # MatMulNBits-like nodes

    @property
    def bytes_per_token(self) -> int:
        return self.matmul_bytes + self.embedding_row_bytes


@dataclass(frozen=True)
class FirstToken:
    """Time to first token (prefill of `prompt_tokens` on an empty cache, then the greedy
    pick), seconds over the repeats; prefill tokens/s = prompt_tokens / median_s."""

    prompt_tokens: int
    median_s: float
    p90_s: float
    prefill_tokens_per_s: float
    samples_s: tuple[float, ...]


@dataclass(frozen=True)
class Decode:
    """One-token steps after a `prompt_tokens` prompt, `tokens` per run over `runs` runs;
    tokens/s = steps / their total time; per-step milliseconds percentiles."""

    prompt_tokens: int
    tokens: int
    runs: int
    tokens_per_s: float
    ms_p50: float
    ms_p90: float
    ms_p99: float
    ms_mean: float


@dataclass(frozen=True)
class KvFigures:
    """Cache bytes: per token (2 x layers x kv_heads x head_dim x itemsize), at the capped
    context, and at the longest prompt + decode_tokens (capped)."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype: str
    bytes_per_token: int
    max_context: int
    bytes_at_max_context: int
    longest_tokens: int
    bytes_at_longest: int


@dataclass(frozen=True)
class Roofline:
    """Decode against memory bandwidth, prefill (longest prompt) against fp32 compute."""

    bandwidth_bytes_per_s: float
    fp32_flops_per_s: float
    weight_bytes_per_token: int
    mean_decode_context: float  # tokens in the cache, averaged over the timed steps
    kv_bytes_per_token: float  # KV read per decoded token at that mean context
    bytes_per_decoded_token: float
    decode_roof_tokens_per_s: float  # bandwidth / bytes_per_decoded_token
    decode_fraction: float  # measured decode tokens/s / decode_roof_tokens_per_s
    prefill_tokens: int
    attention_counted: bool  # genai_config.json gave layers, heads and head size
    prefill_flops_per_token: float  # 2 N + 4 layers d_attn (P + 1) / 2, lm_head once a prompt
    prefill_flops_per_s: float
    prefill_fraction_of_fp32_peak: float
    # The prefill computed the last position's logits only (as `inferopt generate` and the
    # server run it), so the lm_head's 2 x vocab x hidden FLOPs count once a prompt.
    last_logits: bool = False


@dataclass(frozen=True)
class GeneratorProfile:
    """All the figures; peak_rss_bytes is the process's high-water mark over the profile
    (loading included; memory_method: inferopt.measure.memory.PeakMeter's)."""

    folder: str
    config: GeneratorProfileConfig
    first_token: tuple[FirstToken, ...]
    decode: Decode
    kv: KvFigures
    weights: WeightTraffic
    roofline: Roofline
    peak_rss_bytes: int
    memory_method: str
    prefill_not_batched: bool
    prefill_note: str
    hardware: HardwareInfo

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GeneratorProfile:
        return typing.cast(GeneratorProfile, _build(cls, data))


def _build(cls: Any, data: Any) -> Any:
    """A dataclass from asdict() output: nested dataclasses rebuilt, lists back to tuples."""
    if isinstance(cls, type) and dataclasses.is_dataclass(cls) and isinstance(data, dict):
        hints = typing.get_type_hints(cls)
        return cls(**{k: _build(hints[k], v) for k, v in data.items()})
    if isinstance(data, list):
        args = typing.get_args(cls)
        return tuple(_build(args[0] if args else Any, v) for v in data)
    return data


def weight_traffic(model: onnx.ModelProto) -> WeightTraffic:
    """The weight bytes one decoded token reads, from the graph alone (no weights loaded)."""
    tensors = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tensors[node.output[0]] = node.attribute[0].t
    sources: dict[str, set[str]] = {name: {name} for name in tensors}  # value -> its weights
    matmul: set[str] = set()
    rows: set[str] = set()
    params = packed = 0
    for node in model.graph.node:
        if node.op_type in PASS_THROUGH:
            carried = node.input if node.op_type == "DequantizeLinear" else node.input[:1]
            if carried and all(name in sources for name in carried if name):
                sources[node.output[0]] = set().union(*(sources[n] for n in carried if n))
        elif node.op_type in MATMUL_OPS:
            found = set().union(*(sources.get(n, set()) for n in node.input))
            matmul |= found
            if node.op_type in PACKED_OPS and node.name.endswith(LOW_PLANE):
                pass  # the second 4-bit plane of one 8-bit weight (nbits.py): counted once
            elif node.op_type in PACKED_OPS:
                attrs = {a.name: a.i for a in node.attribute}
                params += attrs.get("K", 0) * attrs.get("N", 0)
                packed += 1
            else:
                params += sum(_elements(tensors[n]) for n in found if len(tensors[n].dims) >= 2)
        elif node.op_type in EMBEDDING_OPS and node.input:
            tables = (
                (node.input[0], *node.input[2:4]) if node.op_type != "Gather" else node.input[:1]
            )
            rows |= set().union(*(sources.get(n, set()) for n in tables if n))
    row_bytes = sum(
        _nbytes(tensors[n]) // max(1, tensors[n].dims[0] if tensors[n].dims else 1)
        for n in rows - matmul
    )
    return WeightTraffic(
        matmul_bytes=sum(_nbytes(tensors[n]) for n in matmul),
        embedding_row_bytes=row_bytes,
        matmul_params=params,
        total_bytes=sum(_nbytes(t) for t in tensors.values()),
        packed_matmuls=packed,
    )


def _elements(tensor: onnx.TensorProto) -> int:
    return int(np.prod(tensor.dims, dtype=np.int64))


def _nbytes(tensor: onnx.TensorProto) -> int:
    """Stored bytes from dims and type (external data is not read); 4-bit types pack two."""
    if tensor.data_type in _HALF_BYTE:
        return (_elements(tensor) + 1) // 2
    if tensor.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in tensor.string_data)
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return _elements(tensor) * int(itemsize)


def profile_generator(
    folder: str | Path,
    config: GeneratorProfileConfig = GeneratorProfileConfig(),
    *,
    progress: Callable[[str], None] | None = None,
) -> GeneratorProfile:
    """Profile the decoder artifact in `folder` (see the module docstring).

    Raises:
        ModelLoadError: not an artifact folder, or ORT cannot load it.
        InputError: not a decoder with a KV cache; a given prompt length past the context
            cap; decode_tokens leaving no room for a prompt in it.
    """
    say = progress or (lambda _message: None)
    # The context cap as Generator computes it, read first: bad lengths fail before any work.
    genai = gen_._read_json(Path(folder) / gen_.GENAI_CONFIG).get("model", {})
    cap = min(int(genai.get("context_length") or DEFAULT_MAX_CONTEXT), DEFAULT_MAX_CONTEXT)
    lengths = _prompt_lengths(config, cap)
    decode_prompt = min(DECODE_PROMPT, cap - config.decode_tokens)
    if decode_prompt < 1:
        raise InputError(
            f"decode tokens {config.decode_tokens} leave no room for a prompt in the context "
            f"cap of {cap} tokens; ask for at most {cap - 1}"
        )
    hw = probe()
    say("machine peaks (measured once per machine, then cached)")
    peaks = machine_peaks(hw)  # before the meter is reset: its 256 MiB buffer is not ours
    meter = PeakMeter()
    meter.reset_peak()
    say("loading the artifact")
    threads = SessionConfig(intra_op_threads=config.threads or 0)
    # Last-position logits, as `inferopt generate` and the server run them: TTFT is theirs.
    gen = gen_.Generator(folder, max_context=cap, session_config=threads, last_logits=True)
    layout, vocab = gen.layout, max(2, int(gen.genai.get("vocab_size") or 2))
    positions = "position_ids" in {i.name for i in gen.session.get_inputs()}
    ids = np.random.default_rng(0).integers(1, vocab, size=cap, dtype=np.int64)  # fixed ids

    def first_token(tokens: int) -> float:
        start = time.perf_counter()
        cache = gen_._BoundCache(gen.session, layout, positions)
        int(np.argmax(cache.run(ids[:tokens])))
        return time.perf_counter() - start

    def decode(steps: int) -> list[float]:
        cache = gen_._BoundCache(gen.session, layout, positions)
        cache.run(ids[:decode_prompt])
        times = []
        for i in range(steps):  # fixed ids are fed, not the pick: EOS cannot end it early
            start = time.perf_counter()
            int(np.argmax(cache.run(ids[decode_prompt + i : decode_prompt + i + 1])))
            times.append(time.perf_counter() - start)
        return times

    say("warm-up")
    for tokens in lengths:
        first_token(tokens)
    decode(min(4, config.decode_tokens))
    ttft: dict[int, list[float]] = {n: [] for n in lengths}
    steps: list[float] = []
    for r in range(config.repeats):  # interleaved: a slow spell hits every figure alike
        for tokens in lengths:
            say(f"round {r + 1}/{config.repeats}: first token after {tokens} prompt tokens")
            ttft[tokens].append(first_token(tokens))
        say(f"round {r + 1}/{config.repeats}: decode {config.decode_tokens} tokens")
        steps.extend(decode(config.decode_tokens))
    peak_rss = meter.peak()
    firsts = tuple(_first(n, ttft[n]) for n in lengths)
    ms = np.asarray(steps) * 1e3
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    dec = Decode(decode_prompt, config.decode_tokens, config.repeats,
                 len(steps) / sum(steps), p50, p90, p99, float(ms.mean()))  # fmt: skip
    graph = onnx.load(str(Path(folder) / gen_.MODEL_FILE), load_external_data=False)
    weights = weight_traffic(graph)
    per_token = layout.bytes_per_token()
    longest = min(cap, lengths[-1] + config.decode_tokens)
    kv = KvFigures(layout.layers, layout.kv_heads, layout.head_dim, layout.dtype, per_token,
                   cap, per_token * cap, longest, per_token * longest)  # fmt: skip
    decoder = gen.genai.get("decoder", {})
    head = vocab * int(decoder.get("hidden_size") or 0) if gen.last_logits else 0
    roof = _roofline(peaks.bandwidth_bytes_per_s, peaks.fp32_flops_per_s, weights, kv, dec,
                     firsts[-1], decoder, head)  # fmt: skip
    slow = firsts[-1].prefill_tokens_per_s < FLAG_RATIO * dec.tokens_per_s
    note = (
        f"prefill ({firsts[-1].prefill_tokens_per_s:.0f} tokens/s at {firsts[-1].prompt_tokens} "
        f"tokens) is {'under' if slow else 'over'} {FLAG_RATIO:g}x decode "
        f"({dec.tokens_per_s:.0f} tokens/s): "
        + ("the prompt is not processed as a batch" if slow else "the prompt runs batched")
    )
    return GeneratorProfile(str(folder), config, firsts, dec, kv, weights, roof, peak_rss,
                            meter.method, slow, note, hw)  # fmt: skip


def _prompt_lengths(config: GeneratorProfileConfig, cap: int) -> list[int]:
    """Sorted distinct lengths; the default ones capped at `cap`, given ones checked."""
    if config.prompt_lengths == DEFAULT_PROMPT_LENGTHS:
        return sorted({min(n, cap) for n in config.prompt_lengths})
    past = [n for n in config.prompt_lengths if n > cap]
    if past:
        raise InputError(
            f"prompt length {past[0]} is past the context cap of {cap} tokens; "
            f"use prompt lengths of at most {cap}"
        )
    return sorted(set(config.prompt_lengths))


def _first(tokens: int, samples: list[float]) -> FirstToken:
    median, p90 = (float(v) for v in np.percentile(samples, [50, 90]))
    return FirstToken(tokens, median, p90, tokens / median, tuple(samples))


def _roofline(
    bandwidth: float,
    fp32_peak: float,
    weights: WeightTraffic,
    kv: KvFigures,
    dec: Decode,
    prefill: FirstToken,
    decoder: dict[str, Any],
    head_params: int = 0,
) -> Roofline:
    """Decode: bytes/token = weights per token + KV bytes/token x mean context, where step i
    (0-based) after a P-token prompt holds P + i + 1 tokens, so the mean is P + (T + 1) / 2.
    Prefill of P tokens: FLOPs/token = 2 N + 4 n_layer d_attn (P + 1) / 2 (causal: token j
    attends to j positions, mean (P + 1) / 2), d_attn = heads x head size; `head_params`
    (vocab x hidden, when only the last position's logits are computed) count once a prompt:
    2 (N - H) + 2 H / P instead of 2 N."""
    mean_context = dec.prompt_tokens + (dec.tokens + 1) / 2
    kv_read = kv.bytes_per_token * mean_context
    per_token = weights.bytes_per_token + kv_read
    roof = bandwidth / per_token
    layers, heads, size = (int(decoder.get(k) or 0) for k in _ATTENTION_KEYS)
    attention = 4 * layers * heads * size * (prefill.prompt_tokens + 1) / 2
    matmul = 2 * (weights.matmul_params - head_params) + 2 * head_params / prefill.prompt_tokens
    flops = matmul + attention
    achieved = flops * prefill.prompt_tokens / prefill.median_s
    return Roofline(
        bandwidth, fp32_peak, weights.bytes_per_token, mean_context, kv_read, per_token, roof,
        dec.tokens_per_s / roof, prefill.prompt_tokens, attention > 0, flops, achieved,
        achieved / fp32_peak, head_params > 0,
    )  # fmt: skip
