"""Mixed-precision weight-only quantization: int4 weights with the most sensitive layers kept at
8 bits, the layers chosen by measured sensitivity.

Users report int4 decoders that degenerate into repetition, fixed by keeping a few layers at
int8. Which layers matters, and differs by model, so it is measured: each decoder layer's
MatMuls (a group) are quantized to int4 alone, the rest left in float, and the group's
sensitivity is the mean KL divergence from the reference's next-token distribution on
held-out text (generative/fidelity.py). The `share` most sensitive groups take 8 bits.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import onnx

from inferopt.generative.fidelity import FidelityConfig, ReferenceRun, measure_fidelity
from inferopt.generative.weightonly import (
    MODEL_FILE,
    WeightOnly,
    apply_excluding,
    lm_head_node,
    weight_matmuls,
)

_LAYER = re.compile(r"layers?[./_](\d+)[./_]")  # builder: /model/layers.3/..., dynamo: layers_3


@dataclass(frozen=True)
class GroupSensitivity:
    """One group of MatMul nodes (a decoder layer, or the lm_head) and its sensitivity: the
    mean KL divergence in nats per token when only it takes the pass's bits."""

    group: str
    nodes: tuple[str, ...]
    kl: float


def layer_groups(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Weight MatMul names by decoder layer (`layer 3`); a MatMul outside any layer (the
    lm_head) is its own group, named after the node."""
    groups: dict[str, list[str]] = {}
    for node in weight_matmuls(model):
        match = _LAYER.search(node.name)
        key = f"layer {int(match[1])}" if match else node.name
        groups.setdefault(key, []).append(node.name)
    return groups


def sensitivities(
    source: str | Path,
    pass_: WeightOnly,
    *,
    windows: int = 4,
    progress: Callable[[str], None] | None = None,
) -> list[GroupSensitivity]:
    """Every layer group's sensitivity to `pass_` (its bits, algorithm and blocks), most
    sensitive first. The lm_head is left out when the pass does not quantize it with the
    others (lm_head "int8" or "keep").

    Costs one quantization and one teacher-forced run of `windows` windows of 128 tokens per
    group (about 3 s per layer for a 135M-parameter model on two cores).

    Raises:
        InputError: `source` is not a decoder artifact.
    """
    source = Path(source)
    model = onnx.load(str(source / MODEL_FILE), load_external_data=False)
    head = lm_head_node(model)
    groups = {
        name: nodes
        for name, nodes in layer_groups(model).items()
        if pass_.lm_head == "same" or head not in nodes
    }
    config = FidelityConfig(windows=windows, greedy_prompts=1, greedy_tokens=1)
    reference = ReferenceRun.of(source, config)
    found: list[GroupSensitivity] = []
    with tempfile.TemporaryDirectory(prefix="inferopt-sensitivity-") as tmp:
        for i, (name, nodes) in enumerate(groups.items()):
            others = [n for g, ns in groups.items() if g != name for n in ns]
            # Everything else "keeps" float: only this group is quantized.
            only = replace(pass_, int8_nodes=(), lm_head="same" if head in nodes else "keep")
            out = Path(tmp) / "candidate"
            apply_excluding(only, source, out, frozenset(others))
            kl = measure_fidelity(out, reference).kl_point
            found.append(GroupSensitivity(name, tuple(nodes), kl))
            shutil.rmtree(out)
            if progress:
                progress(f"sensitivity {i + 1}/{len(groups)}: {name} KL {kl:.4g}")
    return sorted(found, key=lambda g: g.kl, reverse=True)


def choose_int8_nodes(
    source: str | Path,
    pass_: WeightOnly,
    *,
    share: float = 0.25,
    windows: int = 4,
    progress: Callable[[str], None] | None = None,
) -> tuple[str, ...]:
    """MatMul node names to keep at 8 bits: the `share` (0-1] most sensitive layer groups
    (at least one) under `pass_`'s int4 quantization.

    Raises:
        ValueError: share outside (0, 1], or pass_ not 4-bit.
        InputError: `source` is not a decoder artifact.
    """
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1], got {share}")
    if pass_.bits != 4:
        raise ValueError(f"mixed precision keeps int4 layers at int8; the pass is {pass_.name}")
    ranked = sensitivities(source, pass_, windows=windows, progress=progress)
    chosen = ranked[: max(1, round(share * len(ranked)))]
    return tuple(node for group in chosen for node in group.nodes)
