"""Graph clean-up passes: constant folding, dead-node elimination, and ONNX Runtime's own graph
optimizations saved as an offline-optimized model (so sessions skip that work at start-up).

Weights kept on disk (models over 2 GiB, see inferopt.external) stay there: the onnx-ir passes
read them lazily from their folder and write references back, and ONNX Runtime writes the
optimized model's weights to a data file of its own."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnx
import onnx_ir as ir
import onnxscript.optimizer
from onnx_ir.passes import common as ir_passes

from inferopt import external
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
        graph = external.to_ir(model.proto)
        folded = ir.serde.serialize_model(onnxscript.optimizer.optimize(graph))
        report = {"nodes_before": _node_count(model.proto), "nodes_after": _node_count(folded)}
        return PassResult(folded, report)


@dataclass(frozen=True)
class EliminateDeadNodes(Pass):
    """Remove nodes, initializers and opsets no graph output depends on."""

    name = "dce"

    def run(self, model: Model, context: PassContext) -> PassResult:
        graph = external.to_ir(model.proto)
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
        if model.data_dir is not None:
            optimized = self._optimize_on_disk(model)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "optimized.onnx"
                create_session(model.proto, self._config(out), label=model.name)
                optimized = onnx.load(str(out))
        report = {
            "level": self.level,
            "nodes_before": _node_count(model.proto),
            "nodes_after": _node_count(optimized),
        }
        return PassResult(optimized, report)

    def _config(self, out: Path, data: str | None = None) -> SessionConfig:
        return SessionConfig(
            graph_optimization=_ORT_LEVELS[self.level],  # type: ignore[arg-type]
            optimized_model_path=str(out),
            optimized_model_data=data,
        )

    def _optimize_on_disk(self, model: Model) -> onnx.ModelProto:
        """The optimized graph, with its weights in a data file ONNX Runtime writes to a
        folder that outlives this pass (the new model reads them from there)."""
        folder = external.scratch_dir()
        out = folder / "optimized.onnx"
        create_session(model.proto, self._config(out, f"{out.name}.data"), label=model.name)
        optimized = onnx.load(str(out), load_external_data=False)
        external.set_data_dir(optimized, folder)
        return optimized
