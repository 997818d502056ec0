import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import mlp, model_of
from onnx import helper, numpy_helper

from inferopt.model import Model
from inferopt.passes.base import (
    EXACT,
    Pass,
    PassContext,
    PassError,
    PassResult,
    Tolerance,
    copy_proto,
)


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
    with pytest.raises(
        PassError, match=r"pass 'scale-weights' changed output 'y' at row 0 by up to"
    ):
        ScaleWeights()(model, PassContext.for_model(model))


def test_an_exact_pass_is_recorded_in_provenance() -> None:
    model = model_of(mlp())
    out = ScaleWeights(factor=1.0)(model, PassContext.for_model(model))
    assert out.provenance.steps[-1] == {
        "pass": "scale-weights",
        "options": {"factor": 1.0},
        "report": {"changed": False},
    }
    feed = {"x": np.ones((2, 16), dtype=np.float32)}
    assert np.allclose(out.run(feed)["y"], model.run(feed)["y"])


def test_library_failures_name_the_pass() -> None:
    model = model_of(mlp())
    with pytest.raises(PassError, match=r"pass 'crash' failed: RuntimeError: library blew up$"):
        Crash()(model, PassContext.for_model(model))


sys.path.insert(0, str(Path(__file__).parents[1] / "fixtures"))
from damage import detection_head, pooled_encoder  # noqa: E402


@dataclass(frozen=True)
class Swap(Pass):
    """Replaces the graph with another (a stand-in for a rewrite that breaks something)."""

    to: bytes = b""  # the serialized model to swap in
    name = "swap"
    tolerance = Tolerance(min_cosine=0.9)  # approximate, as INT8's

    def run(self, model, context):  # type: ignore[no-untyped-def]
        return PassResult(onnx.load_from_string(self.to), {})


def _swap_to(model: Model) -> Swap:
    return Swap(to=model.proto.SerializeToString())


def test_a_pass_that_loses_the_mask_fails_in_a_padded_batch() -> None:
    model = pooled_encoder().with_found_inputs()  # ids within the table, masks valid
    where = r"at row \d in a batch of 4 rows, lengths \[16, 5, 11, 3\] padded to 16"
    with pytest.raises(PassError, match=where):
        Swap(to=pooled_encoder(use_mask=False).proto.SerializeToString())(
            model, PassContext.for_model(model)
        )


def test_a_damaged_small_channel_fails_the_pass_naming_it() -> None:
    model = detection_head()
    with pytest.raises(PassError, match=r"damaged output 'det' channel 4 on 4 verification rows"):
        Swap(to=detection_head(objectness=False).proto.SerializeToString())(
            model, PassContext.for_model(model)
        )


def test_a_pass_that_makes_nan_fails_naming_the_output() -> None:
    model = model_of(mlp())
    proto = copy_proto(model.proto)
    # y = sqrt(-(relu(...) @ w2)^2 - 1): the same shape, every value NaN.
    proto.graph.node[-1].output[0] = "y0"
    proto.graph.node.extend([
        helper.make_node("Mul", ["y0", "y0"], ["sq"]),
        helper.make_node("Neg", ["sq"], ["neg"]),
        helper.make_node("Sub", ["neg", "one"], ["below"]),
        helper.make_node("Sqrt", ["below"], ["y"]),
    ])  # fmt: skip
    proto.graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), "one"))
    with pytest.raises(PassError, match=r"made output 'y' non-finite at row 0: 100.0%"):
        Swap(to=proto.SerializeToString())(model, PassContext.for_model(model))


def test_a_pass_that_changes_nothing_says_so() -> None:
    model = model_of(mlp())
    context = PassContext.for_model(model)
    out = ScaleWeights(factor=1.0)(model, context)
    assert out.provenance.steps[-1]["report"]["changed"] is False
    assert any("changed nothing" in note for note in context.notes)
