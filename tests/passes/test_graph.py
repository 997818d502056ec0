from graphs import constant_subgraph, mlp, model_of

from inferopt.passes.base import PassContext
from inferopt.passes.graph import EliminateDeadNodes, FoldConstants, OrtOptimize


def _ops(model) -> list[str]:  # type: ignore[no-untyped-def]
    return [n.op_type for n in model.proto.graph.node]


def test_fold_evaluates_constant_subgraphs_and_drops_dead_nodes() -> None:
    model = model_of(constant_subgraph())
    out = FoldConstants()(model, PassContext.for_model(model))
    assert _ops(out) == ["Mul"]
    assert out.provenance.steps[-1]["report"] == {"nodes_before": 3, "nodes_after": 1}


def test_dce_removes_only_what_no_output_needs() -> None:
    model = model_of(constant_subgraph())
    out = EliminateDeadNodes()(model, PassContext.for_model(model))
    assert sorted(_ops(out)) == ["Add", "Mul"]


def test_ort_optimize_saves_an_offline_optimized_model() -> None:
    model = model_of(mlp())
    out = OrtOptimize("extended")(model, PassContext.for_model(model))
    # ORT fuses MatMul + Add into its FusedMatMul/Gemm family: fewer nodes, same outputs.
    assert len(out.proto.graph.node) < len(model.proto.graph.node)


def test_ort_optimize_level_is_validated() -> None:
    import pytest

    with pytest.raises(ValueError, match="level must be one of"):
        OrtOptimize("max")  # type: ignore[arg-type]
