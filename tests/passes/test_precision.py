import numpy as np
from graphs import conv_bn, mlp, model_of

from inferopt.passes.base import PassContext
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
