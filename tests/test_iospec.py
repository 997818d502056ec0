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


def _padded_io() -> IOSpec:
    """ids, an int attention_mask (1 marks a token), a bool key_padding_mask (True marks
    padding), a state batched on axis 1 and a scalar: [batch, seq] text inputs and others."""
    return IOSpec(
        (
            TensorSpec("input_ids", "int64", ("batch", "seq"), (5.0, 9.0), role="ids"),
            TensorSpec("attention_mask", "int64", ("batch", "seq"), role="mask"),
            TensorSpec("key_padding_mask", "bool", ("batch", "seq"), role="mask", pad_value=1.0),
            TensorSpec("features", "float32", ("batch", "seq", 2)),
            TensorSpec("state", "float32", (2, "batch", 3), role="state"),
            TensorSpec("sr", "int64", (), (16000.0, 16000.0), role="scalar"),
        ),
        (TensorSpec("out", "float32", ("batch", "seq")),),
        batch_axis=0,
        seq_axis=1,
        batch_axes={"state": 1, "sr": None},
    )


def test_sample_inputs_pad_each_row_tail_with_the_pad_value() -> None:
    feeds = _padded_io().sample_inputs(batch=3, seq=5, seed=2, lengths=(5, 2, 4))
    real = np.array([[True] * 5, [True] * 2 + [False] * 3, [True] * 4 + [False]])
    ids = feeds["input_ids"]
    assert ids.shape == (3, 5) and (ids[real] >= 5).all() and (ids[~real] == 0).all()
    assert feeds["attention_mask"].tolist() == real.astype(np.int64).tolist()
    assert feeds["key_padding_mask"].dtype == np.bool_
    assert feeds["key_padding_mask"].tolist() == (~real).tolist()
    features = feeds["features"]
    assert features.shape == (3, 5, 2) and (features[~real] == 0).all()
    assert (features[real] != 0).all()
    assert feeds["state"].shape == (2, 3, 3) and not feeds["state"].any()
    assert feeds["sr"].shape == () and int(feeds["sr"]) == 16000


def test_sample_inputs_without_lengths_are_all_real() -> None:
    feeds = _padded_io().sample_inputs(batch=2, seq=4)
    assert (feeds["attention_mask"] == 1).all()
    assert not feeds["key_padding_mask"].any()


@pytest.mark.parametrize(("batch", "lengths"), [(2, (3,)), (2, (3, 0)), (2, (3, 6)), (1, (1, 1))])
def test_lengths_that_do_not_fit_are_refused(batch: int, lengths: tuple[int, ...]) -> None:
    with pytest.raises(InputError, match="do not fit"):
        _padded_io().sample_inputs(batch=batch, seq=5, lengths=lengths)


def test_roles_pad_values_batch_axes_and_dims_survive_metadata_round_trip() -> None:
    from dataclasses import replace

    proto = _text_model()
    io = _padded_io()
    outputs = (
        TensorSpec("out", "float32", ("batch", "seq")),
        TensorSpec(
            "probabilities",
            "object",
            ("probabilities_dim0_1",),
            kind="seq(map(int64,tensor(float32)))",
        ),
    )
    spec = replace(
        io,
        outputs=outputs,
        dims={"height": 640, "width": 480},
        extra={"inputs_found": {"trials": 3, "problem": None}},
    )
    attach(proto, spec)
    again = from_onnx(proto)
    assert again == spec
    assert again.input("key_padding_mask").pad_value == 1.0
    assert again.input("sr").role == "scalar" and again.batch_axis_of("sr") is None
    assert again.batch_axis_of("state") == 1
    assert again.dims == {"height": 640, "width": 480}
    assert not again.outputs[1].is_tensor


def test_a_bool_mask_named_for_padding_is_first_guessed_true_means_padding() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 4])
    pad = helper.make_tensor_value_info("src_key_padding_mask", TensorProto.BOOL, ["batch", "seq"])
    keep = helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", "seq"])
    ints = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])
    graph = helper.make_graph([], "g", [x, pad, keep, ints], [x])
    spec = from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    roles = {t.name: (t.role, t.pad_value) for t in spec.inputs}
    assert roles == {
        "x": ("values", 0.0),
        "src_key_padding_mask": ("mask", 1.0),
        "mask": ("mask", 0.0),
        "attention_mask": ("mask", 0.0),
    }
    assert "True marks padding" in spec.input("src_key_padding_mask").describe()
    assert "1 marks a real position" in spec.input("attention_mask").describe()
