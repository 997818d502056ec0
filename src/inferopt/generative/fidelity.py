"""How closely a candidate decoder artifact (quantized, pruned, re-exported) follows a reference
(fp32) artifact of the same model, on held-out text, with bootstrap intervals.

Teacher-forced metrics run fixed windows of the held-out text (corpus.split()[1], never trained
on), each as one prefill on an empty cache, through both artifacts: the perplexity change, the
mean KL(reference || candidate) per token and the top-1 agreement, all from per-window sums.
Greedy agreement decodes held-out prompts with both and scores the identical prefix. Intervals
are percentile bootstraps (inferopt.measure.interval) resampling windows or prompts, paired.
Non-finite candidate logits never raise: they are counted and make the metrics worst-case.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inferopt.errors import InputError
from inferopt.generative.generate import TOKENIZER_FILE, Generator, _BoundCache
from inferopt.measure.interval import Interval, bootstrap_sums, ratio, resample_counts
from inferopt.runtime import SessionConfig
from inferopt.zoo import corpus

EOS_MARK, NONFINITE_MARK = -1, -2  # greedy sequences: after EOS, and at a non-finite step
CACHE_BYTES = 256 * 2**20  # reference logits are kept for reuse only when they fit in this
_ENCODE_CHUNK = 256  # sentences tokenized per call
_INF = math.inf


@dataclass(frozen=True)
class FidelityConfig:
    """What `measure_fidelity` runs: `windows` windows of `window_tokens` tokens of held-out
    text, teacher-forced `batch` windows per ONNX Runtime run; `greedy_prompts` prompts of
    `prompt_tokens` tokens, each continued greedily for `greedy_tokens` tokens; bootstrap `seed`.

    Raises:
        ValueError: a value below 1, window_tokens below 2 (no next token to score) or a
            negative seed.
    """

    windows: int = 24
    window_tokens: int = 128
    greedy_prompts: int = 8
    prompt_tokens: int = 32
    greedy_tokens: int = 32
    batch: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            least = {"window_tokens": 2, "seed": 0}.get(f.name, 1)
            if getattr(self, f.name) < least:
                raise ValueError(f"{f.name} must be >= {least}, got {getattr(self, f.name)}")


@dataclass(frozen=True)
class GeneratorFidelity:
    """A candidate against a reference. Perplexities are exp(mean NLL in nats) over `tokens`
    teacher-forced positions of `windows` windows; `perplexity_change` is candidate/reference
    - 1 (0.05: 5% worse); `kl` the mean KL(reference || candidate) in nats per token;
    `same_top1` the fraction of positions whose argmax agrees; `greedy_agreement` the mean over
    prompts of (identical greedy prefix length / greedy_tokens). Each interval is a 95%
    percentile bootstrap, its `_point` the full-sample figure. `nonfinite` counts NaN/inf
    candidate logits read; when > 0 the perplexity, its change and kl are +inf and a position
    or greedy step with one counts as a disagreement."""

    perplexity_reference: float
    perplexity: float
    perplexity_change: Interval
    perplexity_change_point: float
    kl: Interval
    kl_point: float
    same_top1: Interval
    same_top1_point: float
    greedy_agreement: Interval
    greedy_agreement_point: float
    tokens: int
    windows: int
    nonfinite: int

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict of every field; an infinite figure becomes null."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {
            k: v.to_json() if isinstance(v, Interval) else None if v in (_INF, -_INF) else v
            for k, v in out.items()
        }


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens: a `tokenizers.Tokenizer` or a transformers
    tokenizer."""
    if hasattr(tokenizer, "encode_batch"):
        return [list(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _sentences(tokenizer: Any, sentences: Sequence[str]) -> Iterator[tuple[list[int], list[int]]]:
    """(ids of the sentence, ids of " " + sentence), in order: joined by spaces, sentences
    make the concatenated text (byte-level BPE splits at spaces, so the ids concatenate)."""
    for start in range(0, len(sentences), _ENCODE_CHUNK):
        chunk = list(sentences[start : start + _ENCODE_CHUNK])
        plain, spaced = _encode(tokenizer, chunk), _encode(tokenizer, [" " + s for s in chunk])
        yield from zip(plain, spaced, strict=True)


def _halves() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Held-out sentences: the first half for windows, the second for prompts (disjoint)."""
    held_out = corpus.split()[1]
    return held_out[: len(held_out) // 2], held_out[len(held_out) // 2 :]


def held_out_windows(tokenizer: Any, count: int, length: int) -> npt.NDArray[np.int64]:
    """`count` consecutive windows of `length` tokens of the first half of the held-out
    sentences joined by spaces, no special tokens: int64 [count, length], the same on every
    call. Raises InputError when that text has fewer than count * length tokens."""
    need, ids = count * length, []
    for i, (plain, spaced) in enumerate(_sentences(tokenizer, _halves()[0])):
        ids += spaced if i else plain
        if len(ids) >= need:
            return np.asarray(ids[:need], dtype=np.int64).reshape(count, length)
    raise InputError(
        f"the held-out text has {len(ids)} tokens, fewer than {count} windows x {length} "
        f"tokens = {need}; ask for fewer or shorter windows"
    )


def held_out_prompts(tokenizer: Any, count: int, length: int) -> npt.NDArray[np.int64]:
    """`count` prompts of `length` tokens, each from the start of a sentence of the second half
    of the held-out sentences (and the following ones, joined by spaces, when it is short), so
    disjoint from `held_out_windows`' text: int64 [count, length], deterministic. Raises
    InputError when the sentences run out."""
    prompts: list[list[int]] = []
    current: list[int] = []
    for plain, spaced in _sentences(tokenizer, _halves()[1]):
        current += spaced if current else plain
        if len(current) >= length:
            prompts.append(current[:length])
            current = []
            if len(prompts) == count:
                return np.asarray(prompts, dtype=np.int64)
    raise InputError(
        f"the held-out text gives {len(prompts)} prompts of {length} tokens, fewer than {count}"
    )


def _check_same_tokenizer(reference: Generator, candidate: Generator) -> None:
    """Raises InputError naming both folders when their tokenizer.json or vocab sizes differ."""
    files = [g.folder / TOKENIZER_FILE for g in (reference, candidate)]
    texts = [f.read_bytes() for f in files]
    if texts[0] != texts[1] and json.loads(texts[0]) != json.loads(texts[1]):
        raise InputError(
            f"the candidate {candidate.folder} and the reference {reference.folder} do not "
            f"share a tokenizer: {files[1]} differs from {files[0]}"
        )
    vocabs = [g.genai.get("vocab_size") for g in (reference, candidate)]
    if None not in vocabs and vocabs[0] != vocabs[1]:
        raise InputError(
            f"the candidate {candidate.folder} has a vocabulary of {vocabs[1]} tokens, "
            f"the reference {reference.folder} {vocabs[0]}"
        )


def _check_fits(generator: Generator, config: FidelityConfig) -> None:
    """Raises InputError when a window or a prompt and its continuation exceed the context."""
    if (cap := generator.layout.max_context) < config.window_tokens:
        raise InputError(f"{generator.folder}: {config.window_tokens}-token windows exceed {cap}")
    generator.check_length(config.prompt_tokens, config.greedy_tokens)


def _prefill(generator: Generator, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    """Logits float32 [b, T, vocab] of windows ids int64 [b, T], each from an empty cache."""
    b, t = ids.shape
    layout = generator.layout
    empty = np.zeros((b, layout.kv_heads, 0, layout.head_dim), dtype=layout.dtype)
    feed: dict[str, np.ndarray] = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if "position_ids" in {i.name for i in generator.session.get_inputs()}:
        feed["position_ids"] = np.broadcast_to(np.arange(t, dtype=np.int64), (b, t)).copy()
    feed |= dict.fromkeys(layout.past_names(), empty)
    logits: npt.NDArray[np.float32] = generator.session.run(["logits"], feed)[0]
    return logits


def _greedy(
    generator: Generator, prompt: npt.NDArray[np.int64], steps: int, expect: Sequence[int] = ()
) -> tuple[list[int], int]:
    """(greedy ids, non-finite logits seen): the first of equal maxima at each step, as
    Generator.token_ids at temperature 0, on the same IO-bound cache. An EOS ends the sequence
    as EOS_MARK, non-finite logits as NONFINITE_MARK; with `expect`, the first id that differs
    from it ends it too (nothing after a divergence counts)."""
    positions = "position_ids" in {i.name for i in generator.session.get_inputs()}
    cache = _BoundCache(generator.session, generator.layout, positions)
    logits = cache.run(prompt)
    out: list[int] = []
    for step in range(steps):
        bad = int(np.size(logits) - np.count_nonzero(np.isfinite(logits)))
        token = NONFINITE_MARK if bad else int(np.argmax(logits))
        token = EOS_MARK if token in generator.eos_ids else token
        out.append(token)
        if token < 0 or (expect and token != expect[step]):
            return out, bad
        if step + 1 < steps:
            logits = cache.run(np.asarray([token], dtype=np.int64))
    return out, 0


def _agreement(reference: Sequence[int], candidate: Sequence[int], steps: int) -> float:
    """Identical prefix length / steps, each sequence padded after its EOS with EOS_MARK."""
    pad = [EOS_MARK] * steps
    pairs = zip([*reference, *pad][:steps], [*candidate, *pad][:steps], strict=True)
    diverge = (i for i, (r, c) in enumerate(pairs) if r != c or r == NONFINITE_MARK)
    return next(diverge, steps) / steps


@dataclass(eq=False)
class ReferenceRun:
    """What the reference artifact gives on the held-out text, made once (`of`) and reused for
    many candidates: its Generator, the windows (int64 [windows, window_tokens]), the prompts
    (int64 [greedy_prompts, prompt_tokens]) and its greedy continuations (ids, EOS_MARK at an
    EOS). Its teacher-forced logits are kept after the first candidate only when they fit in
    CACHE_BYTES (not SmolLM2's defaults: 600 MB); otherwise each batch is run again."""

    generator: Generator
    config: FidelityConfig
    windows: npt.NDArray[np.int64]
    prompts: npt.NDArray[np.int64]
    greedy: list[list[int]]
    _logits: list[npt.NDArray[np.float32]] | None = None

    @classmethod
    def of(
        cls,
        reference: str | Path,
        config: FidelityConfig = FidelityConfig(),
        *,
        session_config: SessionConfig | None = None,
    ) -> ReferenceRun:
        """Load the reference artifact folder, cut the held-out windows and prompts with its
        tokenizer and decode its greedy continuations. Raises ModelLoadError (not an artifact),
        InputError (text too short, past the context, non-finite reference logits)."""
        generator = Generator(reference, session_config=session_config)
        _check_fits(generator, config)
        windows = held_out_windows(generator.tokenizer, config.windows, config.window_tokens)
        prompts = held_out_prompts(generator.tokenizer, config.greedy_prompts, config.prompt_tokens)
        greedy = [_greedy(generator, prompt, config.greedy_tokens) for prompt in prompts]
        if any(bad for _, bad in greedy):
            raise InputError(f"the reference {generator.folder} gives non-finite logits")
        return cls(generator, config, windows, prompts, [ids for ids, _ in greedy])

    def batches(self) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
        """(window ids int64 [b, T], reference logits float32 [b, T, vocab]) per batch."""
        starts = range(0, len(self.windows), self.config.batch)
        keep = []
        for n, start in enumerate(starts):
            ids = self.windows[start : start + self.config.batch]
            logits = self._logits[n] if self._logits else _prefill(self.generator, ids)
            if logits.nbytes * len(starts) <= CACHE_BYTES:
                keep.append(logits)
            yield ids, logits
        if len(keep) == len(starts):
            self._logits = keep


def _log_softmax(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    shifted = x - x.max(axis=-1, keepdims=True)
    out: npt.NDArray[np.float64] = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


def _window_sums(
    ids: npt.NDArray[np.int64], ref: npt.NDArray[np.float32], cand: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.float64], int]:
    """Per window [b, 5]: (reference NLL, candidate NLL, KL, same argmax, positions) sums over
    positions 0..T-2 predicting tokens 1..T-1 (float64 nats); and the non-finite count of
    `cand`. One window at a time in float64 to bound memory."""
    out = np.zeros((len(ids), 5))
    nonfinite = int(cand.size - np.count_nonzero(np.isfinite(cand)))
    for i, window in enumerate(ids):
        if not np.isfinite(ref[i]).all():
            raise InputError("the reference gives non-finite logits on a held-out window")
        target, rows = window[1:], np.arange(len(window) - 1)
        lr = _log_softmax(ref[i, :-1].astype(np.float64))
        c = cand[i, :-1]
        bad = ~np.isfinite(c).all(axis=-1)
        same = (ref[i, :-1].argmax(axis=-1) == c.argmax(axis=-1)) & ~bad
        if bad.any():
            nll_c, kl = _INF, _INF
        else:
            lc = _log_softmax(c.astype(np.float64))
            nll_c = float(-lc[rows, target].sum())
            kl = max(float((np.exp(lr) * (lr - lc)).sum()), 0.0)  # >= 0 but for rounding
        out[i] = (-lr[rows, target].sum(), nll_c, kl, same.sum(), len(rows))
    return out, nonfinite


def _interval(
    statistic: Any, *per_sample: npt.NDArray[np.float64], counts: npt.NDArray[np.float64]
) -> Interval:
    low, high = bootstrap_sums(statistic, *per_sample, counts=counts)
    return Interval(float(low), float(high))


def _exp(x: float) -> float:
    return math.exp(x) if x < 709.0 else _INF  # math.exp raises OverflowError beyond


def _change(nll_c: np.ndarray, nll_r: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Perplexity ratio - 1 from NLL sums and position counts: exp((c - r) / n) - 1."""
    with np.errstate(over="ignore"):
        out: np.ndarray = np.expm1(ratio(nll_c - nll_r, n))
    return out


def measure_fidelity(
    candidate: str | Path,
    reference: ReferenceRun | str | Path,
    config: FidelityConfig = FidelityConfig(),
    *,
    session_config: SessionConfig | None = None,
) -> GeneratorFidelity:
    """The candidate artifact folder against the reference (a folder, or a ReferenceRun to
    reuse across candidates: its own config then governs, and a `config` other than the
    default or that one raises ValueError). `session_config` is used for both sessions
    (for the candidate only with a ReferenceRun).

    Raises:
        InputError: the two do not share tokenizer.json or vocabulary size, the held-out text
            is too short, windows or prompts exceed a context, the reference's logits are
            non-finite. Never for non-finite candidate logits (see GeneratorFidelity).
        ModelLoadError: a folder is not a loadable decoder artifact.
        ValueError: a ReferenceRun built with another config.
    """
    if isinstance(reference, ReferenceRun):
        if config not in (FidelityConfig(), reference.config):
            raise ValueError(
                f"the reference run was made with {asdict(reference.config)}, not {asdict(config)}"
            )
        run = reference
    else:
        run = ReferenceRun.of(reference, config, session_config=session_config)
    config = run.config
    generator = Generator(candidate, session_config=session_config)
    _check_same_tokenizer(run.generator, generator)
    _check_fits(generator, config)
    sums, nonfinite = [], 0
    for ids, ref_logits in run.batches():
        cand_logits = _prefill(generator, ids)
        if cand_logits.shape != ref_logits.shape:
            raise InputError(
                f"the candidate {generator.folder} gives logits {list(cand_logits.shape)}, "
                f"the reference {run.generator.folder} {list(ref_logits.shape)}"
            )
        found, bad = _window_sums(ids, ref_logits, cand_logits)
        sums.append(found)
        nonfinite += bad
    nll_r, nll_c, kl, same, n = np.concatenate(sums).T
    agreement = []
    for prompt, expect in zip(run.prompts, run.greedy, strict=True):
        decoded, bad = _greedy(generator, prompt, config.greedy_tokens, expect)
        agreement.append(_agreement(expect, decoded, config.greedy_tokens))
        nonfinite += bad
    greedy = np.asarray(agreement)
    windows = resample_counts(len(n), seed=config.seed)
    prompts = resample_counts(len(greedy), seed=config.seed)
    tokens, broken = float(n.sum()), nonfinite > 0 or not np.isfinite(nll_c).all()
    change = _change(np.asarray(nll_c.sum()), np.asarray(nll_r.sum()), np.asarray(tokens))
    worst = Interval(_INF, _INF)
    return GeneratorFidelity(
        perplexity_reference=_exp(nll_r.sum() / tokens),
        perplexity=_INF if broken else _exp(nll_c.sum() / tokens),
        perplexity_change=worst if broken else _interval(_change, nll_c, nll_r, n, counts=windows),
        perplexity_change_point=_INF if broken else float(change),
        kl=worst if broken else _interval(ratio, kl, n, counts=windows),
        kl_point=_INF if broken else float(kl.sum() / tokens),
        same_top1=_interval(ratio, same, n, counts=windows),
        same_top1_point=float(same.sum() / tokens),
        greedy_agreement=_interval(lambda a: a / len(greedy), greedy, counts=prompts),
        greedy_agreement_point=float(greedy.mean()),
        tokens=int(tokens),
        windows=len(n),
        nonfinite=nonfinite,
    )
