"""Graph clean-up passes: constant folding, dead-node elimination, and ONNX Runtime's own graph
optimizations saved as an offline-optimized model (so sessions skip that work at start-up)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnx
import onnx_ir as ir
import onnxscript.optimizer
from onnx_ir.passes import common as ir_passes

from inferopt.model import Model
from inferopt.passes.base import Pass, PassContext, PassResult
from inferopt.runtime import SessionConfig, create_session


def _node_count(proto: onnx.ModelProto) -> int:
    return len(proto.graph.node)


@dataclass(frozen=True)
class FoldConstants(Pass):
    """Evaluate every subgraph whose inputs are all constants (shape arithmetic the exporter
    leaves behind, for example) and drop what no output needs."""

    name = "fold"

    def run(self, model: Model, context: PassContext) -> PassResult:
        folded = onnxscript.optimizer.optimize(model.proto)
        report = {"nodes_before": _node_count(model.proto), "nodes_after": _node_count(folded)}
        return PassResult(folded, report)


@dataclass(frozen=True)
class EliminateDeadNodes(Pass):
    """Remove nodes, initializers and opsets no graph output depends on."""

    name = "dce"

    def run(self, model: Model, context: PassContext) -> PassResult:
        graph = ir.serde.deserialize_model(model.proto)
        for step in (
            ir_passes.RemoveUnusedNodesPass(),
            ir_passes.RemoveUnusedFunctionsPass(),  # type: ignore[no-untyped-call]
            ir_passes.RemoveUnusedOpsetsPass(),
        ):
            graph = step(graph).model
        proto = ir.serde.serialize_model(graph)
        report = {"nodes_before": _node_count(model.proto), "nodes_after": _node_count(proto)}
        return PassResult(proto, report)


OrtLevel = Literal["basic", "extended", "layout"]
_ORT_LEVELS = {"basic": "basic", "extended": "extended", "layout": "all"}


@dataclass(frozen=True)
class OrtOptimize(Pass):
    """ONNX Runtime's graph optimizations, applied once and saved. `basic` is portable;
    `extended` adds ORT-only fused ops (any ORT build runs them); `layout` adds NCHWc layout
    changes tied to this machine's CPU, so the result is for this machine only."""

    level: OrtLevel = "extended"
    name = "ort-optimize"

    def __post_init__(self) -> None:
        if self.level not in _ORT_LEVELS:
            raise ValueError(f"ORT optimization level must be one of {sorted(_ORT_LEVELS)}")

    def run(self, model: Model, context: PassContext) -> PassResult:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "optimized.onnx"
            config = SessionConfig(
                graph_optimization=_ORT_LEVELS[self.level],  # type: ignore[arg-type]
                optimized_model_path=str(out),
            )
            create_session(model.proto, config, label=model.name)
            optimized = onnx.load(str(out))
        report = {
            "level": self.level,
            "nodes_before": _node_count(model.proto),
            "nodes_after": _node_count(optimized),
        }
        return PassResult(optimized, report)
