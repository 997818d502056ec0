"""Which quantized nodes cost the most fidelity, and how many to keep in float.

Each candidate node is quantized alone, and the model's outputs, run alone and in padded
batches, are compared with the float model's answers alone: every output and every channel
on its own scale (measure.channels; the worst channel's drop, comparable to 1 - cosine). A
direct measure of that node's damage, where proxies like weight SQNR miss activation
outliers, a whole-output cosine misses a small channel beside large ones, and batch 1 misses
what padding does. Nodes are then returned to float, most sensitive first, until the
quantized model meets the fidelity target; the number kept in float is found by bisection
over that ranking."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from inferopt.data import Layout, batch_first, batched_rows
from inferopt.measure.channels import compare_outputs
from inferopt.model import Model, Provenance, from_proto

# quantize(exclude, include) -> quantized proto
Quantizer = Callable[[tuple[str, ...], tuple[str, ...]], onnx.ModelProto]


@dataclass(frozen=True)
class Sensitivity:
    node: str
    op_type: str
    error: float  # the worst channel's drop (~1 - cosine) when only this node is quantized


Rows = list[dict[str, np.ndarray]]
BATCH = 8  # rows per padded batch: a node whose damage shows only there is ranked by it


@dataclass(frozen=True)
class Answers:
    """A model's float outputs on the feeds, each run alone and cut from padded batches."""

    alone: Rows
    batched: Rows | None


def _outputs(model: Model, feeds: Sequence[dict[str, np.ndarray]]) -> Answers:
    layout = Layout.of(model.io)
    raw = [model.run(feed) for feed in feeds]
    alone = [_floats(batch_first(r, layout)) for r in raw]
    if model.io.batch_axis is None or len(feeds) < 2:
        return Answers(alone, None)
    rows = batched_rows(model.run, feeds, raw, layout, BATCH)
    return Answers(alone, [_floats(batch_first(r, layout)) for r in rows])


def _floats(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float outputs only: ids and labels are not compared here."""
    return {k: v for k, v in row.items() if v.dtype.kind == "f"}


def _error(
    proto: onnx.ModelProto,
    reference: Answers,
    base: Model,
    feeds: Sequence[dict[str, np.ndarray]],
) -> float:
    """The worst channel's drop against the float model's answers alone, the candidate run
    alone and in padded batches (measured on what users run, not batch 1 only)."""
    candidate = from_proto(proto, Provenance(base.name, "candidate"), verify=False).with_io(base.io)
    got = _outputs(candidate, feeds)
    drops = [compare_outputs(reference.alone, got.alone, resamples=1).drop]
    if got.batched is not None:
        drops.append(compare_outputs(reference.alone, got.batched, resamples=1).drop)
    return max(drops)


def rank(
    model: Model, nodes: Sequence[str], quantize: Quantizer, feeds: Sequence[dict[str, np.ndarray]]
) -> list[Sensitivity]:
    """Every node's error when quantized alone, most sensitive first."""
    reference = _outputs(model, feeds)
    op_types = {n.name: n.op_type for n in model.proto.graph.node}
    found = [
        Sensitivity(
            node, op_types.get(node, "?"), _error(quantize((), (node,)), reference, model, feeds)
        )
        for node in nodes
    ]
    return sorted(found, key=lambda s: s.error, reverse=True)


def smallest_fallback(
    model: Model,
    ranking: Sequence[Sensitivity],
    quantize: Quantizer,
    feeds: Sequence[dict[str, np.ndarray]],
    target_cosine: float,
) -> tuple[int, float]:
    """The fewest top-ranked nodes to keep in float so that the model's agreement with the
    float model (1 - the worst channel's drop, a cosine on each channel's own scale) reaches
    `target_cosine`, and the agreement reached."""
    reference = _outputs(model, feeds)
    names = tuple(s.node for s in ranking)
    cache: dict[int, float] = {}

    def cosine(k: int) -> float:
        if k not in cache:
            cache[k] = 1.0 - _error(quantize(names[:k], ()), reference, model, feeds)
        return cache[k]

    low, high = 0, len(names)  # invariant: cosine(high) meets the target (all float does)
    cache[high] = 1.0
    while low < high:
        mid = (low + high) // 2
        if cosine(mid) >= target_cosine:
            high = mid
        else:
            low = mid + 1
    return high, cosine(high)
