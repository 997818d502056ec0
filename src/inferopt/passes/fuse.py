"""Operator fusion. Transformer fusions (attention, multi-head attention, skip/layer norm,
bias+GELU, ...) come from onnxscript's ONNX Runtime fusion rules, which understand graphs from
the current PyTorch exporter; CNN/MLP fusions (conv+batchnorm, matmul+add -> Gemm) from
onnxscript's common rewrite rules. Each fusion is pattern / check / rewrite; the report says
which fired and how often, and for those that did not, why the closest candidate failed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import onnx_ir as ir
import onnxscript.optimizer
from onnxscript.rewriter import ort_fusions, pattern
from onnxscript.rewriter.rules import common as rules

from inferopt import external
from inferopt.model import Model
from inferopt.passes.base import Pass, PassContext, PassResult

FOLD_LIMIT = 1 << 26  # elements: large enough for any weight a fusion concatenates

# name -> rule; applied in this order (batchnorm into conv before conv is otherwise rewritten).
CNN_RULES: dict[str, Any] = {
    "conv+batchnorm": rules.fuse_batchnorm_into_conv_rule,
    "conv_transpose+batchnorm": rules.fuse_batchnorm_into_conv_transpose_rule,
    "gemm+batchnorm": rules.fuse_batchnorm_into_gemm_rule,
    "pad+conv": rules.fuse_pad_into_conv_rule,
    "matmul+add->gemm": rules.matmul_add_to_gemm_rule,
}


def why_not(model: ir.Model, rule: Any) -> str:
    """The reason the rule's best partial match failed (a dry run with onnxscript's tracer)."""
    try:
        from onnxscript.rewriter._basics import MatchingTracer  # private: only for the reason

        tracer = MatchingTracer()
        pattern.RewriteRuleSet([rule]).apply_to_model(model, tracer=tracer)
        infos = [m for matches in tracer.best_matches_map.values() for m in matches]
    except (ImportError, AttributeError):
        return "pattern not found"
    if not infos:
        return "pattern not found: no node starts it"
    best = infos[0]
    reason = getattr(best.match_result, "reason", "") or "check failed"
    status = getattr(best.status, "name", "NO_MATCH").lower().replace("_", " ")
    return f"closest match at node {best.root_node.name!r}: {status}: {reason}"


def _drop_equal_qkv_sizes(model: ir.Model) -> None:
    """Equal Q, K and V sizes are Attention's default split, so the attribute says nothing;
    dropping it leaves the plain form every consumer reads (ORT's own quantizer, for one,
    declines to touch a node that carries it; inferopt's int8 splits Attention either way)."""
    for node in model.graph:
        sizes = node.attributes.get("qkv_hidden_sizes")
        if node.op_type == "Attention" and sizes is not None and len(set(sizes.as_ints())) == 1:
            del node.attributes["qkv_hidden_sizes"]


def _keep_inputs(model: ir.Model, with_defaults: list[ir.Value]) -> None:
    """Inputs with a default value (an initializer that is also a graph input, IR >= 4) stay
    inputs: ORT's fusion rules end by turning them all into constants, after which feeding
    one fails ("invalid input name") and the model's signature has changed."""
    present = {v.name for v in model.graph.inputs}
    for value in with_defaults:
        if value.name not in present and value.name in model.graph.initializers:
            model.graph.inputs.append(value)


def fuse_cnn(model: ir.Model) -> tuple[dict[str, int], dict[str, str]]:
    counts: dict[str, int] = {}
    reasons: dict[str, str] = {}
    for name, rule in CNN_RULES.items():
        counts[name] = pattern.RewriteRuleSet([rule]).apply_to_model(model)
        if counts[name] == 0:
            reasons[name] = why_not(model, rule)
    return counts, reasons


@dataclass(frozen=True)
class Fuse(Pass):
    """Fold constants, then apply the transformer and CNN fusions that match."""

    transformer: bool = True
    cnn: bool = True
    name = "fuse"
    search = ({},)

    def run(self, model: Model, context: PassContext) -> PassResult:
        graph = external.to_ir(model.proto)  # weights over 2 GB stay in their files
        fired: dict[str, int] = {}
        not_fired: dict[str, str] = {}
        if self.cnn:  # before the optimizer, whose default rules would fuse some uncounted
            counts, reasons = fuse_cnn(graph)
            fired.update({k: v for k, v in counts.items() if v})
            not_fired.update(reasons)
        graph = onnxscript.optimizer.optimize(graph)
        if self.transformer:
            with_defaults = [v for v in graph.graph.inputs if v.name in graph.graph.initializers]
            graph, counts = ort_fusions.optimize_for_ort(graph)
            _keep_inputs(graph, with_defaults)
            fired.update({k: v for k, v in counts.items() if v})
            not_fired.update({k: "pattern not found" for k, v in counts.items() if not v})
            # Fused attention takes its Q, K and V weights through a Concat of constants; fold
            # it (past the optimizer's default size limit) so quantizers see one weight.
            graph = onnxscript.optimizer.optimize(
                graph, input_size_limit=FOLD_LIMIT, output_size_limit=FOLD_LIMIT
            )
            _drop_equal_qkv_sizes(graph)
        report = {"fired": fired, "not_fired": not_fired}
        return PassResult(ir.serde.serialize_model(graph), report)
