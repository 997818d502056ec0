"""Real measurements of tiny hand-built models, made once per test session for the report tests."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from inferopt.measure import ProfileConfig, compare, profile
from inferopt.model import Model, Provenance, from_proto
from inferopt.report.schema import Comparison, Measurement

FAST = ProfileConfig(
    batch_sizes=(1, 4, 16), threads=(1, 2), target_ci_pct=5.0, min_time_per_point_s=0.0,
    max_time_per_point_s=0.2, min_runs=5, warmup_runs=2, warmup_s=0.01, sweep_time_s=0.2,
    op_profile_runs=3, memory_runs=1,
)  # fmt: skip


def build_mlp(name: str, hidden: int) -> Model:
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    weights = {"w1": (16, hidden), "b1": (hidden,), "w2": (hidden, 8)}
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [
            numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), k)
            for k, s in weights.items()
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    return from_proto(proto, Provenance(source=f"{name}.onnx", kind="onnx"))


@pytest.fixture(scope="session")
def measurement() -> Measurement:
    return profile(build_mlp("small", 32), FAST)


@pytest.fixture(scope="session")
def comparison() -> Comparison:
    from dataclasses import replace

    return compare(build_mlp("small", 32), build_mlp("wide", 256), replace(FAST, memory=False))
