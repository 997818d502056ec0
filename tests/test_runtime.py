import subprocess
import sys

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
