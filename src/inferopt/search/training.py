"""Which training passes (pruning, distillation) the search tries, and on which sources: they
need the PyTorch model behind the source (a zoo name, a Hugging Face folder, a factory, a
module), so a plain ONNX file or artifact gets none of them.

One prefix per model family, chosen for what makes it faster on a CPU: a transformer keeps
half its layers (distillation from the full model; heads and FFN neurons pruned keep the
same number of kernel launches and gain less per FLOP removed); a CNN or MLP loses half of
its channels (structured pruning with fine-tuning against the unpruned model).

A transformer student's training is capped at 15 minutes of wall clock (the pipeline's
`TRANSFORMER_TRAINING.max_seconds`), so it fits a 30-minute search, and it is cached under
`students/` by teacher, corpus and options: a second search, `--fresh` included, reuses it."""

from __future__ import annotations

import importlib.util
from typing import Any

from inferopt.model import Model


def available(source: Any) -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    from inferopt.compress.pipeline import has_torch_model

    # A bare module would need example inputs, which the search is not given.
    return has_torch_model(source) and not hasattr(source, "forward")


def prefixes(baseline: Model) -> tuple[str, ...]:
    if baseline.io.seq_axis is not None:
        layers = _encoder_layers(baseline)
        return (f"distill:layers={max(1, layers // 2)}",) if layers > 1 else ()
    return ("prune:0.5",)


def _encoder_layers(baseline: Model) -> int:
    """Repeated blocks, counted by their layer norms (two per encoder layer)."""
    norms = [
        n
        for n in baseline.proto.graph.node
        if n.op_type in ("LayerNormalization", "SkipLayerNormalization")
    ]
    return len(norms) // 2
