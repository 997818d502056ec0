from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from inferopt.compat import modernize
from inferopt.errors import ModelLoadError
from inferopt.model import Model, Provenance, from_proto, load_onnx


def _linear(path: Path, *, external: bool = False) -> Path:
    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "weight")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "weight"], ["y"])], "g", [x], [y])
    graph.initializer.append(weight)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(
        proto, str(path), save_as_external_data=external, location="weights.bin", size_threshold=0
    )
    return path


def test_loads_and_runs_an_onnx_file(tmp_path: Path) -> None:
    model = load_onnx(_linear(tmp_path / "m.onnx"))
    assert model.io.input_names == ["x"] and model.io.batch_axis == 0
    out = model.run({"x": np.ones((2, 4), dtype=np.float32)})["y"]
    assert out.tolist() == [[18.0, 22.0, 26.0]] * 2


def test_loads_external_data_and_names_a_missing_data_file(tmp_path: Path) -> None:
    path = _linear(tmp_path / "m.onnx", external=True)
    assert (tmp_path / "weights.bin").is_file()
    assert load_onnx(path).run({"x": np.ones((1, 4), dtype=np.float32)})["y"].shape == (1, 3)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(ModelLoadError, match=r"m\.onnx"):
        load_onnx(path)


def test_external_data_under_2_gib_is_read_into_the_model_as_before(tmp_path: Path) -> None:
    model = load_onnx(_linear(tmp_path / "m.onnx", external=True))
    assert model.data_dir is None
    weight = model.proto.graph.initializer[0]
    assert weight.data_location == TensorProto.DEFAULT and len(weight.raw_data) == 48
    assert model.size_bytes == model.proto.ByteSize()
    saved = model.save(tmp_path / "out" / "m.onnx")
    assert [p.name for p in saved.parent.iterdir()] == ["m.onnx"]  # one file, as before


def test_save_keeps_iospec_and_provenance(tmp_path: Path) -> None:
    model = load_onnx(_linear(tmp_path / "m.onnx"))
    stamped = Model(
        model.proto,
        model.io.with_axes(None, None),
        Provenance("my.onnx", "onnx", steps=({"pass": "fold", "options": {}},)),
    )
    again = load_onnx(stamped.save(tmp_path / "out" / "saved.onnx"))
    assert again.io.batch_axis is None
    assert again.provenance.source == "my.onnx"
    assert again.provenance.steps == ({"pass": "fold", "options": {}},)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not an ONNX model"),
        (b"this is plain text, not protobuf", "not an ONNX model"),
    ],
)
def test_files_that_are_not_onnx(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=f"bad.onnx: {message}"):
        load_onnx(path)


def test_truncated_file(tmp_path: Path) -> None:
    good = _linear(tmp_path / "m.onnx").read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelLoadError, match=r"truncated\.onnx: "):
        load_onnx(path)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"nope.onnx: no such file"):
        load_onnx(tmp_path / "nope.onnx")
    with pytest.raises(ModelLoadError, match="not a file"):
        load_onnx(tmp_path)


def test_op_onnx_runtime_cannot_run(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    node = helper.make_node("FancyOp", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "g", [x], [y])
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
    )
    path = tmp_path / "custom.onnx"
    onnx.save_model(proto, str(path))
    with pytest.raises(ModelLoadError, match=r"custom\.onnx: .*FancyOp"):
        load_onnx(path)


def _scaled(ir_version: int, opset: int, *, listed: bool = True) -> onnx.ModelProto:
    """y = x * scale, `scale` an initializer that is also listed among the graph's inputs
    (as IR<=3 requires of every initializer; under IR>=4 that makes it an input with a
    default), or with `listed=False` only an initializer."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    scale = helper.make_tensor_value_info("scale", TensorProto.FLOAT, [3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    inputs = [x, scale] if listed else [x]
    graph = helper.make_graph([helper.make_node("Mul", ["x", "scale"], ["y"])], "g", inputs, [y])
    graph.initializer.append(numpy_helper.from_array(np.array([1, 2, 3], np.float32), "scale"))
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=ir_version)


_X = np.ones((2, 3), dtype=np.float32)
_OTHER_SCALE = np.full(3, 10.0, dtype=np.float32)


def test_an_old_ir_model_is_imported_under_ir4_with_its_weights_as_constants(
    tmp_path: Path,
) -> None:
    old = _scaled(ir_version=3, opset=9)  # as PyTorch exported in 2018
    path = tmp_path / "old.onnx"
    onnx.save_model(old, str(path))
    model = load_onnx(path)
    assert model.proto.ir_version == 4
    assert [v.name for v in model.proto.graph.input] == ["x"]
    assert model.io.input_names == ["x"]  # the signature inferopt shows is unchanged
    assert model.run({"x": _X})["y"].tolist() == [[1.0, 2.0, 3.0]] * 2
    # Same meaning as ONNX Runtime gives the IR-3 file: the weight is no input one may feed.
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for run in (original.run, lambda names, feeds: model.run(feeds)):
        with pytest.raises(Exception, match="Invalid input name: scale"):
            run(None, {"x": _X, "scale": _OTHER_SCALE})


def test_an_ir3_graph_a_pass_rewrote_is_valid_once_wrapped() -> None:
    # What onnx-ir and onnxscript write: the IR-3 model's initializer, no longer an input.
    rewritten = _scaled(ir_version=3, opset=9, listed=False)
    with pytest.raises(onnx.checker.ValidationError, match="not in graph input"):
        onnx.checker.check_model(rewritten)
    model = from_proto(rewritten, Provenance("rewritten", "onnx"))
    assert model.run({"x": _X})["y"].tolist() == [[1.0, 2.0, 3.0]] * 2
    assert rewritten.ir_version == 3  # the caller's proto is not changed


def test_an_input_with_a_default_keeps_its_meaning() -> None:
    proto = _scaled(ir_version=8, opset=17)
    assert modernize(proto) is proto  # IR>=4 models are taken as they are
    model = from_proto(proto, Provenance("defaults", "onnx"))
    assert [v.name for v in model.proto.graph.input] == ["x", "scale"]
    assert model.io.input_names == ["x"]  # it has a default, so samples need not feed it
    assert model.run({"x": _X})["y"].tolist() == [[1.0, 2.0, 3.0]] * 2
    assert model.run({"x": _X, "scale": _OTHER_SCALE})["y"].tolist() == [[10.0] * 3] * 2
