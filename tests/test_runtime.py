import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from inferopt.errors import ModelLoadError
from inferopt.runtime import SessionConfig, best_providers, create_session


def _relu() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_session_honours_threads_and_level() -> None:
    config = SessionConfig(intra_op_threads=1, graph_optimization="basic", memory_arena=False)
    session = create_session(_relu(), config)
    options = session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert not options.enable_cpu_mem_arena
    out = session.run(None, {"x": np.array([-1.0, 2.0], dtype=np.float32)})[0]
    assert out.tolist() == [0.0, 2.0]


def test_invalid_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="thread counts"):
        SessionConfig(intra_op_threads=-1)
    with pytest.raises(ValueError, match="not available"):
        SessionConfig(providers=("NoSuchExecutionProvider",))
    with pytest.raises(ValueError, match="graph_optimization"):
        SessionConfig(graph_optimization="max")  # type: ignore[arg-type]


def test_unloadable_model_is_a_model_load_error() -> None:
    broken = _relu()
    broken.graph.node[0].op_type = "NotAnOp"
    with pytest.raises(ModelLoadError, match="ONNX Runtime cannot load it"):
        create_session(broken, label="broken.onnx")


def test_cpu_is_always_the_last_resort() -> None:
    assert best_providers()[-1] == "CPUExecutionProvider"


def test_the_onnx_side_does_not_import_torch() -> None:
    code = (
        "import sys, inferopt.cli, inferopt.sources, inferopt.model; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.gpu
def test_cuda_provider_runs_a_model() -> None:
    config = SessionConfig(providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    session = create_session(_relu(), config)
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    out = session.run(None, {"x": np.array([-1.0, 2.0], dtype=np.float32)})[0]
    assert out.tolist() == [0.0, 2.0]


def _scaled_by_external_weight(folder: Path) -> onnx.ModelProto:
    """y = x * w, with w (float32[4] = 2) in folder/w.data; the proto, as read without it."""
    (folder / "w.data").write_bytes(np.full(4, 2.0, np.float32).tobytes())
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="w.data")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_external_data_is_read_from_the_folder_given(tmp_path: Path) -> None:
    proto = _scaled_by_external_weight(tmp_path)
    x = {"x": np.arange(4, dtype=np.float32)}
    for session in (
        create_session(proto, data_dir=tmp_path),
        create_session(_saved(proto, tmp_path / "graph-only"), data_dir=tmp_path),
    ):
        assert session.run(None, x)[0].tolist() == [0.0, 2.0, 4.0, 6.0]
    with pytest.raises(ModelLoadError, match="cannot load it"):
        create_session(proto, data_dir=tmp_path / "elsewhere")


def _saved(proto: onnx.ModelProto, folder: Path) -> Path:
    folder.mkdir()
    onnx.save(proto, str(folder / "m.onnx"))
    return folder / "m.onnx"
