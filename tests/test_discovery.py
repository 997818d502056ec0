"""Inputs found for models from elsewhere (no inferopt metadata): what the graph tells and
running the model confirms, on small graphs of the field's kinds (tests/fixtures/field_kinds):
a sample rate the graph compares with 16000, a state batched on axis 1, ids into a 50-row
table, masks of either convention, images that only run at multiples of 32, ZipMap outputs,
and a model only real data run."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from inferopt import iospec, stated
from inferopt.errors import InputError
from inferopt.iospec import IOSpec, TensorSpec, from_onnx
from inferopt.model import Model, load_onnx

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))

import field_kinds as kinds


def _load(tmp_path: Path, proto: onnx.ModelProto, name: str = "m", **kw: Any) -> Model:
    return load_onnx(kinds.save(proto, tmp_path / f"{name}.onnx"), **kw)


def _finite(outputs: Mapping[str, Any]) -> None:
    for name, value in outputs.items():
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.isfinite(value).all(), f"output {name!r} is not finite"


def _found_ok(model: Model) -> None:
    assert iospec.problem_of(model.io) is None, iospec.problem_of(model.io)
    assert not iospec.needs_discovery(model.io)


# ------------------------------------------------------------------------------- VAD


def test_vad_finds_the_sample_rate_the_state_axis_and_the_window(tmp_path: Path) -> None:
    model = _load(tmp_path, kinds.vad(window=64))
    _found_ok(model)
    io = model.io
    sr, state = io.input("sr"), io.input("state")
    assert sr.role == "scalar" and sr.value_range == (kinds.SAMPLE_RATE, kinds.SAMPLE_RATE)
    assert state.role == "state"
    assert io.batch_axis_of("input") == 0
    assert io.batch_axis_of("state") == 1 and io.batch_axis_of("stateN") == 1
    assert io.batch_axis_of("sr") is None
    assert io.dims["samples"] % 64 == 0
    feeds = io.sample_inputs(batch=2)
    assert feeds["sr"].shape == () and int(feeds["sr"]) == kinds.SAMPLE_RATE
    assert feeds["state"].shape == (2, 2, 4) and not feeds["state"].any()
    assert feeds["input"].shape == (2, io.dims["samples"])
    out = model.run(feeds)
    _finite(out)
    assert out["output"].shape == (2, 1) and out["stateN"].shape == (2, 2, 4)


def test_vad_spec_survives_save_and_reload_without_discovering_again(tmp_path: Path) -> None:
    model = _load(tmp_path, kinds.vad())
    again = load_onnx(model.save(tmp_path / "saved.onnx"))
    assert again.io == model.io
    assert again.io.batch_axis_of("state") == 1


def test_float_feeds_are_cast_to_the_input_float_type(tmp_path: Path) -> None:
    model = _load(tmp_path, kinds.vad())
    feeds = kinds.vad_request(rows=1)
    doubled = {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in feeds.items()}
    np.testing.assert_allclose(model.run(doubled)["output"], model.run(feeds)["output"])


def test_a_window_no_generated_size_fits_names_what_to_give(tmp_path: Path) -> None:
    model = _load(tmp_path, kinds.vad(window=1000))
    problem = iospec.problem_of(model.io)
    assert problem is not None and "\n" not in problem
    assert "--data" in problem and "--input-shape" in problem
    with pytest.raises(InputError, match="--input-shape"):
        model.io.sample_inputs()


@pytest.mark.parametrize("stated", [(1, 2000), (2000,)], ids=["full", "without-batch"])
def test_a_stated_window_is_used_in_either_spelling(
    tmp_path: Path, stated: tuple[int, ...]
) -> None:
    """`input:1,2000` and perf_analyzer's `input:2000` (the batch dim left out) say the same."""
    model = _load(tmp_path, kinds.vad(window=1000), shapes={"input": stated})
    _found_ok(model)
    assert model.io.dims == {"samples": 2000}  # sizes of free dims other than the batch
    assert model.io.batch_axis_of("state") == 1
    _finite(model.run(model.io.sample_inputs(batch=2)))


# ------------------------------------------------------------------------------- ids


@pytest.mark.parametrize("through_cast", [False, True])
def test_ids_stay_within_their_table(tmp_path: Path, through_cast: bool) -> None:
    model = _load(tmp_path, kinds.ids_table(through_cast=through_cast))
    _found_ok(model)
    ids = model.io.input("ids")
    assert ids.role == "ids" and ids.value_range == (0.0, kinds.TABLE_ROWS - 1.0)
    feeds = model.io.sample_inputs(batch=3, seq=57, seed=5)
    assert feeds["ids"].shape == (3, 57)
    assert feeds["ids"].min() >= 0 and feeds["ids"].max() <= kinds.TABLE_ROWS - 1
    out = model.run(feeds)
    _finite(out)
    assert out["embedded"].shape == (3, 57, kinds.WIDTH)


def test_declared_minus_one_dims_are_free(tmp_path: Path) -> None:
    proto = kinds.ids_table()
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [-1, -1]
    spec = from_onnx(proto)
    assert all(isinstance(d, str) for d in spec.input("ids").shape)
    assert spec.batch_axis == 0 and spec.seq_axis == 1
    model = _load(tmp_path, proto)
    assert model.io.batch_axis == 0 and model.io.seq_axis == 1
    for batch, seq in ((1, 5), (4, 33)):
        assert model.run(model.io.sample_inputs(batch=batch, seq=seq))["pooled"].shape == (
            batch,
            kinds.WIDTH,
        )


# ----------------------------------------------------------------------------- masks


MASKS = [
    ("key_padding_mask", True),  # PyTorch's convention, named for it
    ("mask", False),  # True keeps a position
    ("mask", True),  # a name that does not tell: running the model does
    ("key_padding_mask", False),  # a name that misleads: running the model corrects it
]


@pytest.mark.parametrize(("name", "true_means_padding"), MASKS)
def test_mask_convention_is_the_models_own(
    tmp_path: Path, name: str, true_means_padding: bool
) -> None:
    model = _load(tmp_path, kinds.masked_encoder(name, true_means_padding))
    _found_ok(model)
    mask = model.io.input(name)
    assert mask.role == "mask" and mask.dtype == "bool"
    assert mask.pad_value == float(true_means_padding)
    feeds = model.io.sample_inputs(batch=2, seq=6)
    assert (feeds[name] == (not true_means_padding)).all()  # every position is real
    _finite(model.run(feeds))


@pytest.mark.parametrize(("name", "true_means_padding"), MASKS)
def test_padded_generated_rows_answer_as_they_do_alone(
    tmp_path: Path, name: str, true_means_padding: bool
) -> None:
    model = _load(tmp_path, kinds.masked_encoder(name, true_means_padding))
    feeds = model.io.sample_inputs(batch=2, seq=6, lengths=(6, 3), seed=1)
    assert (feeds[name][1, 3:] == true_means_padding).all()  # the padding is marked
    batch = model.run(feeds)
    _finite(batch)
    alone = model.run({"x": feeds["x"][1:2, :3], name: feeds[name][1:2, :3]})
    np.testing.assert_allclose(batch["pooled"][1:2], alone["pooled"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batch["hidden"][1:2, :3], alone["hidden"], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- images


IMAGES = [
    (kinds.image_nchw, 32, (2, 3)),
    (kinds.image_nchw, 64, (2, 3)),
    (kinds.image_nhwc, 32, (1, 2)),
    (kinds.image_nhwc, 64, (1, 2)),
]


@pytest.mark.parametrize(
    ("build", "multiple", "spatial"), IMAGES, ids=["nchw-32", "nchw-64", "nhwc-32", "nhwc-64"]
)
def test_image_sizes_found_are_multiples_that_run(
    tmp_path: Path,
    build: Callable[[int], onnx.ModelProto],
    multiple: int,
    spatial: tuple[int, int],
) -> None:
    model = _load(tmp_path, build(multiple))
    _found_ok(model)
    assert model.io.dims["height"] % multiple == 0 and model.io.dims["width"] % multiple == 0
    (name,) = model.io.input_names
    feeds = model.io.sample_inputs(batch=2)
    shape = feeds[name].shape
    assert shape[0] == 2 and 3 in shape
    assert [shape[a] for a in spatial] == [model.io.dims["height"], model.io.dims["width"]]
    _finite(model.run(feeds))


@pytest.mark.parametrize("stated", [(1, 3, 64, 96), (3, 64, 96)], ids=["full", "without-batch"])
def test_a_stated_image_size_is_used(tmp_path: Path, stated: tuple[int, ...]) -> None:
    model = _load(tmp_path, kinds.image_nchw(32), shapes={"images": stated})
    _found_ok(model)
    feeds = model.io.sample_inputs(batch=2)
    assert feeds["images"].shape == (2, 3, 64, 96)
    _finite(model.run(feeds))


# ---------------------------------------------------------------------------- ZipMap


def test_zipmap_classifier_runs_and_its_map_output_is_named_as_such(tmp_path: Path) -> None:
    model = _load(tmp_path, kinds.zipmap_classifier())
    _found_ok(model)
    probability = next(t for t in model.io.outputs if t.name == "output_probability")
    assert not probability.is_tensor and probability.kind.startswith("seq(map(int64")
    assert [t.name for t in model.io.tensor_outputs] == ["output_label"]
    out = model.run(model.io.sample_inputs(batch=2))
    assert out["output_label"].shape == (2,)
    rows = out["output_probability"]
    assert isinstance(rows, list) and len(rows) == 2
    assert all(sorted(row) == kinds.ZIPMAP_CLASSES for row in rows)
    assert model.io.batch_axis_of("output_probability") == 0


# ------------------------------------------------------------------- only data run it


def test_unrunnable_model_names_what_to_give_in_one_line(tmp_path: Path) -> None:
    model = _load(tmp_path, kinds.unrunnable())
    problem = iospec.problem_of(model.io)
    assert problem is not None and "\n" not in problem
    assert "--data" in problem and "--input-shape" in problem
    assert "'y' is not finite" in problem and "key" in problem
    with pytest.raises(InputError) as raised:
        model.io.sample_inputs()
    assert str(raised.value) == problem


def test_follow_data_makes_generated_inputs_like_the_data(tmp_path: Path) -> None:
    model = _load(tmp_path, kinds.unrunnable())
    data = kinds.unrunnable_data(rows=3)
    samples = [{k: v[i : i + 1] for k, v in data.items()} for i in range(3)]
    io = stated.follow_data(model.io, samples)
    assert iospec.problem_of(io) is None and not iospec.needs_discovery(io)
    assert io.input("key").value_range == (kinds.KEY, kinds.KEY)
    feeds = io.sample_inputs(batch=2)
    assert (feeds["key"] == kinds.KEY).all()
    _finite(model.run(feeds))


def test_follow_data_takes_sizes_and_scalar_values_from_the_data(tmp_path: Path) -> None:
    model = _load(tmp_path, kinds.vad(window=1000))
    sample = kinds.vad_request(rows=1, window=2000)
    io = stated.follow_data(model.io, [sample])
    assert io.dims["samples"] == 2000
    assert io.input("sr").value_range == (kinds.SAMPLE_RATE, kinds.SAMPLE_RATE)
    _finite(model.run(io.sample_inputs(batch=1)))


def test_follow_data_names_a_missing_or_misshapen_input(tmp_path: Path) -> None:
    model = _load(tmp_path, kinds.unrunnable())
    with pytest.raises(InputError, match="no array for input 'key'"):
        stated.follow_data(model.io, [{"x": np.zeros((1, 4), np.float32)}])
    wrong = {"x": np.zeros((1, 4), np.float32), "key": np.zeros((1, 2, 1), np.int64)}
    with pytest.raises(InputError, match="'key' has rank 3"):
        stated.follow_data(model.io, [wrong])


# ------------------------------------------------------------- the user's shapes


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("images:1,3,640,640", ("images", (1, 3, 640, 640))),
        ("input:512", ("input", (512,))),
        ("sr:", ("sr", ())),
        ("scope:name:2,3", ("scope:name", (2, 3))),  # the last colon splits
    ],
)
def test_parse_shape(text: str, parsed: tuple[str, tuple[int, ...]]) -> None:
    assert stated.parse_shape(text) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("images", "write NAME:DIMS"),
        (":1,3", "write NAME:DIMS"),
        ("images:1,x", "dims must be integers"),
        ("images:1,,3", "dims must be integers"),
        ("images:0,3", "every size must be >= 1"),
        ("images:-1,3", "every size must be >= 1"),
    ],
)
def test_parse_shape_errors_name_the_text(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as raised:
        stated.parse_shape(text)
    assert repr(text) in str(raised.value)


def _image_and_state_io() -> IOSpec:
    return IOSpec(
        (
            TensorSpec("images", "float32", ("batch", 3, "height", "width")),
            TensorSpec("state", "float32", (2, "batch", 4), role="state"),
        ),
        (),
        batch_axis=0,
        seq_axis=None,
        batch_axes={"state": 1},
    )


@pytest.mark.parametrize("sizes", [(1, 3, 64, 96), (3, 64, 96)], ids=["full", "without-batch"])
def test_state_shapes_fills_free_dims_in_either_spelling(sizes: tuple[int, ...]) -> None:
    io, fixed = stated.state_shapes(_image_and_state_io(), {"images": sizes})
    assert io.dims == {"height": 64, "width": 96}
    assert fixed == frozenset({"height", "width"})
    assert io.sample_inputs(batch=2)["images"].shape == (2, 3, 64, 96)


def test_state_shapes_leaves_out_the_batch_axis_where_it_is() -> None:
    """A state batched on axis 1, written as perf_analyzer would: [2, 4]."""
    io, fixed = stated.state_shapes(_image_and_state_io(), {"state": (2, 4)})
    assert fixed == frozenset() and io.dims == {}
    full, _ = stated.state_shapes(_image_and_state_io(), {"state": (2, 1, 4)})
    assert full.dims == {}


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ({"pixels": (1, 3, 8, 8)}, "no input named 'pixels'"),
        ({"images": (64, 96)}, r"images: 2 dims given, the input has 4"),
        ({"images": (1, 1, 3, 64, 96)}, r"images: 5 dims given, the input has 4"),
        ({"images": (1, 4, 64, 96)}, "axis 1 is fixed at 3 in the model, not 4"),
        ({"images": (4, 64, 96)}, "axis 1 is fixed at 3 in the model, not 4"),
        ({"state": (2, 5)}, "axis 2 is fixed at 4 in the model, not 5"),
    ],
)
def test_state_shapes_refuses_what_contradicts_the_model(
    shapes: dict[str, tuple[int, ...]], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        stated.state_shapes(_image_and_state_io(), shapes)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "true_means_padding"), [("key_padding_mask", True), ("mask", False)]
)
def test_exported_torch_attention_keeps_its_mask_convention(
    tmp_path: Path, name: str, true_means_padding: bool
) -> None:
    """nn.MultiheadAttention exported: the parity check agrees (NaN never does), and the
    file, without inferopt's metadata, is found to take the same convention."""
    from inferopt.export import ExportConfig, export_module

    module, examples = kinds.torch_attention(true_means_padding)
    model = export_module(module, examples, ExportConfig(seq_axis=1))
    assert model.io.input(name).pad_value == float(true_means_padding)
    parity = model.provenance.parity
    assert parity is not None and "agrees" in parity.describe()
    bare = onnx.ModelProto()
    bare.CopyFrom(model.proto)
    del bare.metadata_props[:]
    found = _load(tmp_path, bare)
    _found_ok(found)
    assert found.io.input(name).pad_value == float(true_means_padding)
    feeds = found.io.sample_inputs(batch=2, seq=6, lengths=(6, 3), seed=2)
    assert (feeds[name][1, 3:] == true_means_padding).all()
    both = found.run(feeds)["output"]
    alone = found.run({"x": feeds["x"][1:2, :3], name: feeds[name][1:2, :3]})["output"]
    np.testing.assert_allclose(both[1:2], alone, rtol=1e-4, atol=1e-5)
