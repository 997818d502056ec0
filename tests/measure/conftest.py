"""Tiny hand-built models and fast settings for the measure tests (real ONNX Runtime runs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from inferopt.measure.config import ProfileConfig
from inferopt.model import Model, Provenance, from_proto

# Per sample: Gemm 16x32 (512 MACs = 1024 FLOPs + 32 bias), Relu 32, MatMul 32x8 (256 MACs).
MLP_FLOPS_PER_SAMPLE = 1024 + 32 + 32 + 512


def build_mlp(name: str = "mlp", hidden: int = 32) -> Model:
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    weights = {
        "w1": rng.standard_normal((16, hidden)),
        "b1": rng.standard_normal(hidden),
        "w2": rng.standard_normal((hidden, 8)),
    }
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    return from_proto(proto, Provenance(source=f"{name}.onnx", kind="onnx"))


def build_sequence_model(fixed_seq: int | None = None) -> Model:
    """x (batch, seq, 8) @ W (8x8), softmax over the features. With `fixed_seq`, a position
    table of that length is added, so the model rejects any other sequence length."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"])]
    weights = {"w": rng.standard_normal((8, 8)).astype(np.float32)}
    if fixed_seq is not None:
        nodes.append(helper.make_node("Add", ["h", "positions"], ["h2"]))
        weights["positions"] = np.zeros((1, fixed_seq, 8), np.float32)
    nodes.append(helper.make_node("Softmax", [nodes[-1].output[0]], ["y"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 8])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    return from_proto(proto, Provenance(source="seq.onnx", kind="onnx"))


@pytest.fixture
def mlp() -> Model:
    return build_mlp()


@pytest.fixture
def fast() -> ProfileConfig:
    """Settings that keep a profile of a tiny model around a second or two."""
    return ProfileConfig(
        batch_sizes=(1, 4),
        threads=(1, 2),
        target_ci_pct=5.0,
        min_time_per_point_s=0.0,
        max_time_per_point_s=0.3,
        min_runs=5,
        warmup_runs=2,
        warmup_s=0.01,
        sweep_time_s=0.3,
        op_profile_runs=3,
        memory_runs=1,
        memory_timeout_s=60.0,
    )


@pytest.fixture
def seq_model() -> Model:
    return build_sequence_model()


@pytest.fixture
def make_model() -> Callable[..., Model]:
    """The builders, for tests that need a variant: make_model("mlp", hidden=64)."""

    def make(kind: str, **options: Any) -> Model:
        return build_mlp(**options) if kind == "mlp" else build_sequence_model(**options)

    return make
