from dataclasses import dataclass

import numpy as np
import pytest
from graphs import mlp, model_of
from onnx import numpy_helper

from inferopt.passes.base import EXACT, Pass, PassContext, PassError, PassResult, copy_proto


@dataclass(frozen=True)
class ScaleWeights(Pass):
    """A deliberately broken pass: it claims to be exact but scales a weight."""

    factor: float = 1.5
    name = "scale-weights"
    tolerance = EXACT

    def run(self, model, context):  # type: ignore[no-untyped-def]
        proto = copy_proto(model.proto)
        w = numpy_helper.to_array(proto.graph.initializer[0]) * self.factor
        proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w1"))
        return PassResult(proto, {})


@dataclass(frozen=True)
class Crash(Pass):
    name = "crash"

    def run(self, model, context):  # type: ignore[no-untyped-def]
        raise RuntimeError("library blew up\nwith details")


def test_verification_catches_a_broken_pass() -> None:
    model = model_of(mlp())
    with pytest.raises(PassError, match=r"pass 'scale-weights' changed output 'y' at row 0 by up to"):
        ScaleWeights()(model, PassContext.for_model(model))


def test_an_exact_pass_is_recorded_in_provenance() -> None:
    model = model_of(mlp())
    out = ScaleWeights(factor=1.0)(model, PassContext.for_model(model))
    assert out.provenance.steps[-1] == {
        "pass": "scale-weights",
        "options": {"factor": 1.0},
        "report": {},
    }
    feed = {"x": np.ones((2, 16), dtype=np.float32)}
    assert np.allclose(out.run(feed)["y"], model.run(feed)["y"])


def test_library_failures_name_the_pass() -> None:
    model = model_of(mlp())
    with pytest.raises(PassError, match=r"pass 'crash' failed: RuntimeError: library blew up$"):
        Crash()(model, PassContext.for_model(model))
