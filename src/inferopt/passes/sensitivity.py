"""Which quantized nodes cost the most fidelity, and how many to keep in float.

Each candidate node is quantized alone and the model's outputs compared with the float model's,
every output and every channel on its own scale (measure.channels; the worst channel's drop,
comparable to 1 - cosine): a direct measure of that node's damage, where proxies like weight
SQNR miss activation outliers, and a whole-output cosine misses a small channel beside large
ones. Nodes are then returned to float, most sensitive first,
until the quantized model meets the fidelity target; the number kept in float is found by
bisection over that ranking."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from inferopt.data import Layout, batch_first
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


def _outputs(model: Model, feeds: Sequence[dict[str, np.ndarray]]) -> Rows:
    """Every float output of every feed (ids and labels are not compared here)."""
    layout = Layout.of(model.io)
    rows = [batch_first(model.run(feed), layout) for feed in feeds]
    return [{k: v for k, v in r.items() if v.dtype.kind == "f"} for r in rows]


def _error(
    proto: onnx.ModelProto,
    reference: Rows,
    base: Model,
    feeds: Sequence[dict[str, np.ndarray]],
) -> float:
    candidate = from_proto(proto, Provenance(base.name, "candidate"), verify=False).with_io(base.io)
    return compare_outputs(reference, _outputs(candidate, feeds), resamples=1).drop


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
