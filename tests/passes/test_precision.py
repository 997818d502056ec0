import numpy as np
import pytest
from graphs import conv_bn, mlp, model_of

from inferopt.passes.base import PassContext, PassError
from inferopt.passes.precision import BFloat16Weights, Float16


def test_fp16_halves_the_weights_and_keeps_fp32_io() -> None:
    model = model_of(mlp(hidden=256))
    context = PassContext.for_model(model)
    out = Float16()(model, context)
    assert out.size_bytes < 0.6 * model.size_bytes
    y = out.run({"x": np.ones((2, 16), dtype=np.float32)})["y"]
    assert y.dtype == np.float32
    assert out.provenance.steps[-1]["pass"] == "fp16"


def test_bf16_stores_weights_in_bfloat16_and_still_runs() -> None:
    model = model_of(conv_bn())
    out = BFloat16Weights(min_elements=16)(model, PassContext.for_model(model))
    kinds = {i.data_type for i in out.proto.graph.initializer}
    assert 16 in kinds  # TensorProto.BFLOAT16
    assert out.provenance.steps[-1]["report"]["converted_initializers"] == 1
    x = np.random.default_rng(0).standard_normal((1, 2, 6, 6)).astype(np.float32)
    assert np.allclose(out.run({"x": x})["y"], model.run({"x": x})["y"], atol=0.1)


def test_fp16_with_float16_io_takes_float32_feeds_for_its_checks() -> None:
    model = model_of(mlp())
    out = Float16(keep_io_types=False)(model, PassContext.for_model(model))
    assert out.io.inputs[0].dtype == "float16" and out.io.outputs[0].dtype == "float16"
    feed = {"x": np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)}
    got = out.run(feed)["y"]  # float32 feeds are cast to the float16 input
    assert got.dtype == np.float16
    np.testing.assert_allclose(got, model.run(feed)["y"], rtol=2e-2, atol=2e-2)


def test_fp16_overflow_is_named_not_taken_for_agreement() -> None:
    model = model_of(mlp())
    big = [{"x": np.full((1, 16), 6e4, np.float32)}]  # an output of -78942: past 65504
    with pytest.raises(PassError, match=r"non-finite .*float16 holds at most 65504"):
        Float16(keep_io_types=False)(model, PassContext(verification=tuple(big)))
