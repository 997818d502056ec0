import numpy as np
import pytest
from graphs import constant_subgraph, mlp, model_of

from inferopt.data import Dataset
from inferopt.errors import InputError
from inferopt.measure.fidelity import mean_cosine
from inferopt.passes.base import PassContext
from inferopt.passes.quantize import DynamicInt8
from inferopt.passes.smooth import Smooth


def _outlier_data(n: int = 64) -> Dataset:
    """Inputs where two channels are 100x the others, as in transformer activations."""
    x = np.random.default_rng(2).standard_normal((n, 16)).astype(np.float32)
    x[:, :2] *= 100.0
    return Dataset.from_arrays({"x": x})


def test_smoothing_is_exact_in_float_and_inserts_one_mul_per_matmul() -> None:
    model = model_of(mlp(hidden=64))
    data = _outlier_data()
    out = Smooth(alpha=0.5)(model, PassContext.for_model(model, data))
    assert out.provenance.steps[-1]["report"]["smoothed_matmuls"] == 2
    assert [n.op_type for n in out.proto.graph.node].count("Mul") == 2
    feed = data.batch(range(8))
    assert np.allclose(out.run(feed)["y"], model.run(feed)["y"], rtol=1e-4, atol=1e-3)


def test_smoothing_makes_int8_more_faithful_on_outlier_channels() -> None:
    model = model_of(mlp(hidden=64))
    data = _outlier_data()
    context = PassContext.for_model(model, data)
    feed = data.batch(range(len(data)))
    reference = model.run(feed)["y"]
    plain = DynamicInt8(per_channel=True)(model, context).run(feed)["y"]
    smoothed_model = DynamicInt8(per_channel=True)(Smooth(alpha=0.75)(model, context), context)
    smoothed = smoothed_model.run(feed)["y"]
    assert mean_cosine(reference, smoothed) > mean_cosine(reference, plain)


def test_smooth_needs_matmuls_and_validates_alpha() -> None:
    model = model_of(constant_subgraph())
    with pytest.raises(InputError, match="no MatMul with constant weights"):
        Smooth()(model, PassContext.for_model(model))
    with pytest.raises(ValueError, match="alpha must be in"):
        Smooth(alpha=1.5)


def test_a_weight_read_by_another_node_is_not_rescaled() -> None:
    """A tied embedding: the lm_head's MatMul weight is also read, transposed, by a Gather.
    Rescaling it for the MatMul would corrupt the embedding, so that MatMul is skipped."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    table = rng.standard_normal((16, 8)).astype(np.float32)  # [hidden, vocab]
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["w"], ["wt"]),
            helper.make_node("Gather", ["wt", "ids"], ["emb"]),
            helper.make_node("Add", ["x", "emb"], ["h"]),
            helper.make_node("MatMul", ["h", "w"], ["y"]),
        ],
        "tied",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, [None]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])],
        [numpy_helper.from_array(table, "w")],
    )
    model = model_of(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    x = rng.standard_normal((32, 16)).astype(np.float32)
    x[:, 0] *= 100.0
    data = Dataset.from_arrays({"x": x, "ids": rng.integers(0, 8, 32)})
    out = Smooth(alpha=0.5)(model, PassContext.for_model(model, data))
    assert out.provenance.steps[-1]["report"]["smoothed_matmuls"] == 0
    feed = data.batch(range(8))
    assert np.allclose(out.run(feed)["y"], model.run(feed)["y"], rtol=1e-5, atol=1e-5)
