import numpy as np
import pytest
from graphs import constant_subgraph, mlp, model_of

from inferopt.data import Dataset
from inferopt.errors import InputError
from inferopt.passes.base import PassContext
from inferopt.passes.quantize import DynamicInt8, StaticInt8


def _data(n: int = 64) -> Dataset:
    x = np.random.default_rng(1).standard_normal((n, 16)).astype(np.float32)
    return Dataset.from_arrays({"x": x})


def _ops(model) -> set[str]:  # type: ignore[no-untyped-def]
    return {n.op_type for n in model.proto.graph.node}


def test_dynamic_int8_quantizes_matmuls() -> None:
    model = model_of(mlp(hidden=512))  # big enough that weights dominate the file
    out = DynamicInt8()(model, PassContext.for_model(model, _data()))
    assert "MatMulInteger" in _ops(out) or "DynamicQuantizeMatMul" in _ops(out)
    assert out.size_bytes < 0.5 * model.size_bytes


def test_static_int8_inserts_qdq_from_calibration() -> None:
    model = model_of(mlp(hidden=64))
    out = StaticInt8(calibration="percentile")(model, PassContext.for_model(model, _data()))
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(out)
    assert out.provenance.steps[-1]["report"]["calibrated_tensors"] >= 3


def test_static_int8_without_data_or_with_wrong_data_is_refused() -> None:
    model = model_of(mlp())
    with pytest.raises(InputError, match="needs calibration data"):
        StaticInt8()(model, PassContext.for_model(model))
    wrong = Dataset.from_arrays({"x": np.zeros((8, 15), dtype=np.float32)})
    with pytest.raises(InputError, match=r"'x' has shape \[1, 15\]"):
        StaticInt8()(model, PassContext.for_model(model, wrong))


def test_model_without_quantizable_ops_is_refused() -> None:
    model = model_of(constant_subgraph())
    with pytest.raises(InputError, match="no quantizable ops"):
        DynamicInt8()(model, PassContext.for_model(model))


def test_fallback_keeps_sensitive_nodes_in_float_and_ranks_them() -> None:
    model = model_of(mlp(hidden=64))
    context = PassContext.for_model(model, _data())
    out = DynamicInt8(fallback=1.0, op_types=("MatMul",))(model, context)
    report = out.provenance.steps[-1]["report"]
    assert [s["node"] for s in report["sensitivity"]] and len(report["sensitivity"]) == 2
    errors = [s["error"] for s in report["sensitivity"]]
    assert errors == sorted(errors, reverse=True)
    # A target of exactly 1.0 can only be met by keeping every node in float.
    assert sorted(report["excluded"]) == ["fc1", "fc2"]


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="weights must be"):
        DynamicInt8(weights="int4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fallback is a target cosine"):
        DynamicInt8(fallback=1.5)
    with pytest.raises(ValueError, match="calibration method"):
        StaticInt8(calibration="kl")  # type: ignore[arg-type]
