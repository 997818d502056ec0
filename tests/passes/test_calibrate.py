import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from inferopt.data import Dataset
from inferopt.passes.calibrate import CalibrationConfig, collect_ranges


def _identity_relu() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1000])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1000])
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _heavy_tailed(n: int = 32) -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 1000)).astype(np.float32)
    x[0, 0] = 50.0  # one outlier in 32,000 values
    return Dataset.from_arrays({"x": x})


def test_minmax_is_the_exact_range() -> None:
    data = _heavy_tailed()
    ranges = collect_ranges(_identity_relu(), data, CalibrationConfig("minmax"))
    x = data.batch(range(len(data)))["x"]
    assert ranges["x"] == pytest.approx((float(x.min()), 50.0))
    assert ranges["y"] == pytest.approx((0.0, 50.0))


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_methods_clip_the_outlier(method: str) -> None:
    config = CalibrationConfig(method, percentile=99.99)  # type: ignore[arg-type]
    ranges = collect_ranges(_identity_relu(), _heavy_tailed(), config)
    low, high = ranges["x"]
    assert 2.0 < high < 20.0  # clipped well below the outlier, above the normal bulk
    assert low < 0


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="calibration method"):
        CalibrationConfig("mse")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="percentile"):
        CalibrationConfig("percentile", percentile=10)


_BOUNDED = """
import json, resource, numpy as np, onnx
from onnx import TensorProto, helper
from inferopt.data import Dataset
from inferopt.passes.calibrate import CalibrationConfig, collect_ranges
# 4M floats (16 MB) per sample through three activations; 96 samples would keep ~4.6 GB.
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4194304])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4194304])
nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b"]),
         helper.make_node("Relu", ["b"], ["y"])]
model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 17)])
rng = np.random.default_rng(0)
samples = tuple({"x": rng.standard_normal((1, 4194304), dtype=np.float32)} for _ in range(4))
data = Dataset(samples * 24)  # 96 samples sharing 4 arrays: the inputs cost 64 MB
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
collect_ranges(model, data, CalibrationConfig("entropy", max_samples=96, batch_size=2))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_mb": (after - before) / 1024}))
"""


@pytest.mark.slow
def test_calibration_memory_stays_bounded_with_large_activations() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _BOUNDED], capture_output=True, text=True, check=True, timeout=600
    )
    growth = json.loads(out.stdout.strip().splitlines()[-1])["growth_mb"]
    # Keeping every activation would need ~4,600 MB; one batch of two is ~200 MB.
    assert growth < 800, f"calibration grew RSS by {growth:.0f} MB"
