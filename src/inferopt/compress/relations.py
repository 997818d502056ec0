"""MiniLM-style attention distillation (Wang et al. 2020, MiniLMv2 2021): the student's
query-query, key-key and value-value self-attention relations learn the teacher's.

A relation of a projection X ([batch, seq, heads x d]) is, per head, softmax over keys of
X X^T / sqrt(d): a [batch, heads, seq, seq] distribution for every query position. The loss
is the KL divergence teacher -> student of each relation, averaged over real (unpadded)
query positions, with padded keys masked out, so padding never changes it. The projections
are caught with forward hooks on the self-attention's `query`, `key` and `value` Linear
modules (Hugging Face BERT-style encoders); student and teacher need not share a width.
Also here: the hidden-state loss and the layer-output hooks distillation pairs it with."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from inferopt.errors import InferoptError

PROJECTIONS = ("query", "key", "value")


class RelationError(InferoptError):
    """The layer has no query/key/value Linear modules to take relations from."""


def projections(layer: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    """The query, key and value Linear modules of a transformer layer's self-attention."""
    found: dict[str, nn.Linear] = {}
    for name, module in layer.named_modules():
        last = name.rsplit(".", 1)[-1]
        if last in PROJECTIONS and isinstance(module, nn.Linear) and last not in found:
            found[last] = module
    if len(found) != len(PROJECTIONS):
        raise RelationError(
            f"{type(layer).__name__} has no self-attention query/key/value Linear modules; "
            "attention-relation distillation is for BERT-style encoders"
        )
    return found["query"], found["key"], found["value"]


@contextlib.contextmanager
def captured_projections(layer: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """While open, each forward through `layer` stores its Q, K and V outputs
    ([batch, seq, width] float32) under "query", "key", "value" (the last call's)."""
    got: dict[str, torch.Tensor] = {}

    def keeper(name: str) -> Any:
        def keep(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            got[name] = out

        return keep

    hooks = [
        m.register_forward_hook(keeper(n))
        for n, m in zip(PROJECTIONS, projections(layer), strict=True)
    ]
    try:
        yield got
    finally:
        for h in hooks:
            h.remove()


def relation_logits(x: torch.Tensor, heads: int, mask: torch.Tensor | None) -> torch.Tensor:
    """Log-probabilities [batch, heads, seq, seq] of the scaled dot-product relation of
    `x` ([batch, seq, width], width divisible by `heads`); padded keys (mask 0) get none."""
    b, s, width = x.shape
    if width % heads:
        raise RelationError(f"width {width} does not split into {heads} relation heads")
    d = width // heads
    split = x.view(b, s, heads, d).transpose(1, 2)  # [b, heads, s, d]
    scores = split @ split.transpose(-1, -2) / d**0.5
    if mask is not None:
        scores = scores.masked_fill(mask[:, None, None, :] == 0, torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, dim=-1)


def relation_loss(
    student: dict[str, torch.Tensor],
    teacher: dict[str, torch.Tensor],
    heads: int,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """Mean over Q, K and V of KL(teacher relation || student relation), per query
    position summed over keys, averaged over heads and real query positions. A scalar;
    0 when the student's projections equal the teacher's."""
    total = torch.zeros(())
    for name in PROJECTIONS:
        want = relation_logits(teacher[name].detach(), heads, mask)
        got = relation_logits(student[name], heads, mask)
        # Masked keys have probability 0 on both sides: their terms are 0 x (finite), no NaN.
        kl = (want.exp() * (want - got)).sum(-1)  # [b, heads, s]
        if mask is not None:
            weights = mask[:, None, :].to(kl.dtype)
            kl = (kl * weights).sum() / (weights.sum() * heads).clamp(min=1)
        else:
            kl = kl.mean()
        total = total + kl
    return total / len(PROJECTIONS)


def hidden_loss(
    got: list[torch.Tensor], want: list[torch.Tensor], mask: torch.Tensor | None
) -> torch.Tensor:
    """Mean squared error of hidden states over real (unpadded) tokens."""
    total = torch.zeros(())
    for g, w in zip(got, want, strict=True):
        err = (g - w).pow(2).mean(-1)
        if mask is not None and mask.shape == err.shape:
            err = (err * mask).sum() / mask.sum().clamp(min=1)
        total = total + err.mean()
    return total / max(len(got), 1)


@contextlib.contextmanager
def captured_outputs(layers: Sequence[nn.Module]) -> Iterator[list[torch.Tensor]]:
    """While open, each forward through one of `layers` appends its (first) output."""
    outputs: list[torch.Tensor] = []

    def keep(_m: nn.Module, _i: Any, out: Any) -> None:
        outputs.append(out[0] if isinstance(out, tuple | list) else out)

    hooks = [layer.register_forward_hook(keep) for layer in layers]
    try:
        yield outputs
    finally:
        for h in hooks:
            h.remove()
