import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from inferopt.errors import InputError
from inferopt.iospec import IOSpec, TensorSpec, attach, from_onnx, infer_axes


def _text_model() -> onnx.ModelProto:
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])
    out = helper.make_tensor_value_info("out", TensorProto.INT64, ["batch", "seq"])
    node = helper.make_node("Mul", ["input_ids", "attention_mask"], ["out"])
    graph = helper.make_graph([node], "g", [ids, mask], [out])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_reads_names_dtypes_and_symbolic_dims() -> None:
    spec = from_onnx(_text_model())
    assert spec.input_names == ["input_ids", "attention_mask"]
    assert spec.inputs[0] == TensorSpec("input_ids", "int64", ("batch", "seq"))
    assert spec.batch_axis == 0 and spec.seq_axis == 1


def test_image_model_has_batch_but_no_sequence_axis() -> None:
    image = TensorSpec("image", "float32", ("N", 1, 8, 8))
    assert infer_axes((image,)) == (0, None)


def test_fixed_first_dim_means_no_batch_axis() -> None:
    assert infer_axes((TensorSpec("x", "float32", (4, "n")),)) == (None, None)


def test_sample_inputs_follow_axes_ranges_and_masks() -> None:
    spec = from_onnx(_text_model()).with_value_ranges({"input_ids": (100.0, 200.0)})
    feeds = spec.sample_inputs(batch=3, seq=57)
    assert feeds["input_ids"].shape == (3, 57) and feeds["input_ids"].dtype == np.int64
    assert feeds["input_ids"].min() >= 100 and feeds["input_ids"].max() <= 200
    assert (feeds["attention_mask"] == 1).all()


def test_sample_inputs_reject_empty_shapes() -> None:
    with pytest.raises(InputError, match="must be >= 1"):
        from_onnx(_text_model()).sample_inputs(batch=0)


def test_overrides_survive_metadata_round_trip() -> None:
    proto = _text_model()
    spec = from_onnx(proto).with_axes(None, 1).with_value_ranges({"input_ids": (0.0, 5.0)})
    attach(proto, spec)
    attach(proto, spec)  # replacing, not duplicating
    assert sum(p.key == "inferopt.iospec" for p in proto.metadata_props) == 1
    assert from_onnx(proto) == spec


def test_unknown_input_name_is_named() -> None:
    with pytest.raises(InputError, match="no input named 'pixels'"):
        IOSpec((), ()).input("pixels")
