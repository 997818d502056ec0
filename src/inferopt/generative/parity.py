"""The generative parity check: a decoder artifact against its PyTorch fp32 source.

A single forward pass agreeing is not enough for a decoder: the cache must be written and
read back right, positions must follow the attention mask, and the first step runs with an
empty cache. Each check below runs the artifact through ONNX Runtime and the transformers
model (fp32, eager attention, `torch.no_grad`) on the same tokens:

- prefill@N: logits of an N-token prompt, empty cache, for each N in `prompt_lengths`;
- empty-cache: one token on past tensors of length 0; its logits and every present tensor
  (the keys after rotary embedding, the values) against the transformers cache;
- cache: a prefill then `steps` single-token steps, each fed the previous present tensors,
  against one full pass over the same tokens, position by position;
- padded-batch: two prompts of different lengths padded into one batch, each row's real
  positions against that prompt run alone: left-padded, prefill plus two steps; right-padded
  (graphs with ORT's GroupQueryAttention, which requires it), the prefill;
- greedy: `greedy_tokens` greedy tokens from each prompt, identical to PyTorch's.

Tolerance: max |onnx - torch| over a check's logits, divided by max |torch| (the logits'
scale), at most `rtol` (1e-4). fp32 kernels that differ only in summation order (the
builder's fused GroupQueryAttention, ORT's MatMul blocking) measure ~1e-6 on the tiny
models; a wrong cache, position or weight moves logits by a large fraction of their scale
(>=1e-2), so 1e-4 separates the two by two orders of magnitude either way, and is scale-free
so it holds for logits of any magnitude. Greedy tokens must be identical, except where
PyTorch's own top-two logits are within `rtol * scale` (a tie either side may break).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from inferopt.errors import ParityError
from inferopt.generative.kv import KvLayout
from inferopt.runtime import create_session

DEFAULT_PROMPTS = (
    "Return a new list containing all items from the iterable",
    "The socket module provides access to the BSD socket interface.",
    "def",
)


class GenerativeParityError(ParityError):
    """A decoder artifact disagrees with its PyTorch source: one line, naming the check."""


@dataclass(frozen=True)
class ParityConfig:
    """What `check_generative_parity` runs.

    Raises:
        ValueError: an empty or non-positive prompt length, steps or greedy_tokens below 1,
            or rtol not in (0, 1).
    """

    prompt_lengths: tuple[int, ...] = (1, 7, 33)
    steps: int = 4
    greedy_tokens: int = 32
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    rtol: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.prompt_lengths or min(self.prompt_lengths) < 1:
            raise ValueError(f"prompt_lengths must be >= 1, got {self.prompt_lengths}")
        if self.steps < 1 or self.greedy_tokens < 1:
            raise ValueError("steps and greedy_tokens must be >= 1")
        if not 0 < self.rtol < 1:
            raise ValueError(f"rtol must be in (0, 1), got {self.rtol}")
        if not self.prompts:
            raise ValueError("prompts must not be empty")


@dataclass(frozen=True)
class CheckFigure:
    """One check: max abs difference, the reference scale and their ratio (`rel`)."""

    name: str
    max_abs: float
    scale: float
    rel: float
    detail: str = ""


@dataclass(frozen=True)
class GenerativeParity:
    """Every check's figure, in the order run; `worst` is the largest relative figure."""

    checks: tuple[CheckFigure, ...]
    rtol: float

    @property
    def worst(self) -> CheckFigure:
        return max(self.checks, key=lambda c: c.rel)


class OnnxDecoder:
    """One ONNX Runtime session over a decoder artifact's model.onnx.

    `step(ids int64 [b, s], mask int64 [b, p+s], past)` -> (logits float32 [b, s, vocab],
    present: list of 2*layers float32 [b, kv_heads, p+s, head_dim]).
    """

    def __init__(self, artifact: Path) -> None:
        path = artifact / "model.onnx"
        graph = onnx.load(str(path), load_external_data=False)
        self.layout = KvLayout.of(graph)
        # ORT's GroupQueryAttention (the builder's graphs) takes each row's length from its
        # mask sum and assumes its real tokens come first: its batches are right-padded
        self.right_padded = any(n.op_type == "GroupQueryAttention" for n in graph.graph.node)
        self.session = create_session(path)

    def empty_past(self, batch: int) -> list[np.ndarray]:
        shape = (batch, self.layout.kv_heads, 0, self.layout.head_dim)
        return [np.zeros(shape, np.float32) for _ in self.layout.past_names()]

    def step(
        self, ids: np.ndarray, mask: np.ndarray, past: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        feed: dict[str, np.ndarray] = {"input_ids": ids, "attention_mask": mask}
        feed |= dict(zip(self.layout.past_names(), past, strict=True))
        outputs = self.session.run(["logits", *self.layout.present_names()], feed)
        return outputs[0], list(outputs[1:])


def _figure(name: str, ref: np.ndarray, got: np.ndarray, detail: str = "") -> CheckFigure:
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    max_abs = float(np.max(diff)) if diff.size else 0.0
    if not np.all(np.isfinite(got)):
        max_abs = float("inf")  # NaN/Inf never agrees
    return CheckFigure(name, max_abs, scale, max_abs / max(scale, 1e-12), detail)


class _Checker:
    """The checks, sharing one ONNX session, one torch model and the tolerance."""

    def __init__(self, decoder: OnnxDecoder, model: Any, config: ParityConfig) -> None:
        self.decoder, self.model, self.config = decoder, model, config
        self.figures: list[CheckFigure] = []

    def record(self, figure: CheckFigure) -> None:
        self.figures.append(figure)
        if not figure.rel <= self.config.rtol:
            raise GenerativeParityError(
                f"generative parity failed at {figure.name}: logits max abs diff "
                f"{figure.max_abs:.3g} is {figure.rel:.3g} of their scale {figure.scale:.3g} "
                f"(tolerance {self.config.rtol:g}){figure.detail}"
            )

    def full(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """PyTorch logits [n, vocab] of one prompt, no cache, no padding."""
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([list(ids)], dtype=torch.int64))
        logits: np.ndarray = out.logits[0].float().numpy()
        return logits

    def onnx_prefill(self, ids: Sequence[int] | np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        row = np.array([list(ids)], np.int64)
        return self.decoder.step(row, np.ones_like(row), self.decoder.empty_past(1))

    def prefill(self, tokens: np.ndarray) -> None:
        for n in self.config.prompt_lengths:
            got, _ = self.onnx_prefill(tokens[:n])
            self.record(_figure(f"prefill@{n}", self.full(tokens[:n]), got[0]))

    def empty_cache(self, tokens: np.ndarray) -> None:
        """One token on length-0 past tensors: the logits and each present tensor."""
        first = int(tokens[0])
        got, present = self.onnx_prefill([first])
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([[first]]), use_cache=True)
        self.record(_figure("empty-cache logits", out.logits[0].numpy(), got[0]))
        cache = out.past_key_values
        ref = [t for layer in cache.layers for t in (layer.keys, layer.values)]
        for name, r, g in zip(self.decoder.layout.present_names(), ref, present, strict=True):
            self.record(_figure(f"empty-cache {name}", r.numpy(), g))

    def cache(self, tokens: np.ndarray) -> None:
        """Prefill then single-token steps on the returned cache, against one full pass."""
        k, p = self.config.steps, max(self.config.prompt_lengths)
        ids = tokens[: p + k]
        full = self.full(ids)
        got, past = self.onnx_prefill(ids[:p])
        rows = [got[0]]
        for i in range(p, p + k):
            mask = np.ones((1, i + 1), np.int64)
            got, past = self.decoder.step(np.array([[ids[i]]], np.int64), mask, past)
            rows.append(got[0])
        self.record(_figure(f"cache (prefill {p} + {k} steps)", full, np.concatenate(rows)))

    def padded_batch(self, tokens: np.ndarray) -> None:
        """Two prompts padded into one batch, prefill (plus two steps when left-padded);
        each row's real positions against that prompt run alone."""
        long, short = list(tokens[:9]), list(tokens[20:24])
        right = self.decoder.right_padded
        ids = np.zeros((2, len(long)), np.int64)
        mask = np.zeros_like(ids)
        spans = [slice(0, n) if right else slice(len(long) - n, None) for n in (9, 4)]
        for row, prompt in enumerate((long, short)):
            ids[row, spans[row]] = prompt
            mask[row, spans[row]] = 1
        # ORT's GroupQueryAttention continues a right-padded row only in ORT GenAI's shared
        # max-length buffer, so a right-padded batch is checked on its prefill alone
        steps = 0 if right else 2
        nexts = [
            [int(t) for t in tokens[40 : 40 + steps]],
            [int(t) for t in tokens[42 : 42 + steps]],
        ]
        got, past = self.decoder.step(ids, mask, self.decoder.empty_past(2))
        outputs = [got]
        for step in range(steps):
            mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
            column = np.array([[nexts[0][step]], [nexts[1][step]]], np.int64)
            got, past = self.decoder.step(column, mask, past)
            outputs.append(got)
        side = "right" if right else "left"
        for row, prompt in enumerate((long, short)):
            ref = self.full([*prompt, *nexts[row]])
            real = np.concatenate([outputs[0][row, spans[row]], *(o[row] for o in outputs[1:])])
            name = f"padded-batch ({side}) row {row} ({len(prompt)} tokens + {steps} steps)"
            self.record(_figure(name, ref, real))

    def greedy(self, tokenizer: Any) -> None:
        for text in self.config.prompts:
            ids = [int(t) for t in tokenizer(text)["input_ids"]]
            self.greedy_one(text, ids)

    def greedy_one(self, text: str, prompt: list[int]) -> None:
        """Greedy tokens of ONNX (cache loop) and PyTorch (full passes, no cache involved)."""
        ids, got_logits, past = list(prompt), None, self.decoder.empty_past(1)
        logits, past = self.onnx_prefill(ids)
        worst = CheckFigure(f"greedy {text[:20]!r}", 0.0, 0.0, 0.0)
        for n in range(self.config.greedy_tokens):
            got_logits = logits[0, -1]
            ref_logits = self.full(ids)[-1]
            figure = _figure(worst.name, ref_logits, got_logits, f" after {n} tokens")
            worst = max(worst, figure, key=lambda c: c.rel)
            ref_next, got_next = int(np.argmax(ref_logits)), int(np.argmax(got_logits))
            if ref_next != got_next:
                top2 = np.sort(ref_logits)[-2:]
                if top2[1] - top2[0] <= self.config.rtol * figure.scale:
                    break  # a tie in PyTorch's own logits: either token is greedy
                raise GenerativeParityError(
                    f"generative parity failed at greedy {text[:20]!r}: token {n} is "
                    f"{got_next}, PyTorch's is {ref_next} (margin {top2[1] - top2[0]:.3g})"
                )
            ids.append(ref_next)
            mask = np.ones((1, len(ids)), np.int64)
            logits, past = self.decoder.step(np.array([[ref_next]], np.int64), mask, past)
        self.record(worst)


def check_generative_parity(
    artifact: str | Path, source: str | Path, config: ParityConfig | None = None
) -> GenerativeParity:
    """Check the decoder artifact in folder `artifact` against the Hugging Face causal LM in
    folder `source`, running the checks of this module's docstring in order.

    Returns the figure of every check. Raises:
        GenerativeParityError: the first check beyond tolerance, in one line naming it and
            its figure (or the greedy token that differs).
        InputError: the artifact is not a decoder with a KV cache, or transformers cannot
            load the source.
        ModelLoadError: ONNX Runtime cannot load the artifact.
    """
    from transformers import AutoTokenizer

    from inferopt.generative.dynamo import load_causal_lm

    config = config or ParityConfig()
    artifact = Path(artifact)
    decoder = OnnxDecoder(artifact)
    model = load_causal_lm(Path(source))
    tokenizer = AutoTokenizer.from_pretrained(str(artifact), local_files_only=True)
    vocab = int(model.config.vocab_size)
    need = max(max(config.prompt_lengths) + config.steps, 44)
    tokens = np.random.default_rng(config.seed).integers(1, vocab, need)
    checker = _Checker(decoder, model, config)
    checker.prefill(tokens)
    checker.empty_cache(tokens)
    checker.cache(tokens)
    checker.padded_batch(tokens)
    checker.greedy(tokenizer)
    return GenerativeParity(tuple(checker.figures), config.rtol)
