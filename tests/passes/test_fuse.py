import pytest
from graphs import conv_bn, erf_gelu, model_of

from inferopt.passes.base import PassContext
from inferopt.passes.fuse import Fuse


def _report(model):  # type: ignore[no-untyped-def]
    out = Fuse()(model, PassContext.for_model(model))
    return out, out.provenance.steps[-1]["report"]


def test_conv_batchnorm_fuses() -> None:
    out, report = _report(model_of(conv_bn()))
    assert report["fired"] == {"conv+batchnorm": 1}
    assert "BatchNormalization" not in [n.op_type for n in out.proto.graph.node]


def test_conv_batchnorm_does_not_fuse_when_conv_output_is_needed_and_says_why() -> None:
    out, report = _report(model_of(conv_bn(share_conv_output=True)))
    assert "conv+batchnorm" not in report["fired"]
    reason = report["not_fired"]["conv+batchnorm"]
    assert "closest match at node" in reason and reason.split(":")[-1].strip()
    assert "BatchNormalization" in [n.op_type for n in out.proto.graph.node]


def test_erf_gelu_becomes_one_gelu_op() -> None:
    out, report = _report(model_of(erf_gelu()))
    assert sum(report["fired"].values()) >= 1
    assert "Erf" not in [n.op_type for n in out.proto.graph.node]


@pytest.mark.slow
def test_minilm_attention_layernorm_and_gelu_fuse() -> None:
    from inferopt.sources import load

    model = load("minilm")
    out, report = _report(model)
    fired = report["fired"]
    assert fired["attention"] == 6 and fired["skip_layer_normalization"] == 12
    assert fired["bias_gelu"] == 6
    ops = {n.op_type for n in out.proto.graph.node}
    assert {"Attention", "SkipLayerNormalization", "BiasGelu"} <= ops
