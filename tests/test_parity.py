import numpy as np
import pytest

from inferopt.errors import ParityError
from inferopt.parity import ParityReport, compare_outputs, require


def test_agreeing_outputs_pass() -> None:
    ref = {"y": np.array([[1.0, 2.0]], dtype=np.float32)}
    report = compare_outputs(ref, {"y": ref["y"] + 1e-6}, atol=1e-4, rtol=1e-3, batch=1, seq=None)
    assert report.ok
    require(report, "m")
    assert ParityReport.from_json(report.to_json()) == report


def test_disagreement_names_output_and_errors() -> None:
    ref = {"logits": np.zeros((3, 2), dtype=np.float32)}
    got = {"logits": np.full((3, 2), 0.5, dtype=np.float32)}
    report = compare_outputs(ref, got, atol=1e-4, rtol=1e-3, batch=3, seq=57)
    assert not report.ok
    with pytest.raises(
        ParityError, match=r"batch 3, sequence length 57: output 'logits': max abs error 0\.5"
    ):
        require(report, "m")


def test_shape_mismatch_is_a_failure() -> None:
    ref = {"y": np.zeros((3, 4))}
    report = compare_outputs(ref, {"y": np.zeros((2, 6))}, atol=1, rtol=1, batch=3, seq=None)
    assert not report.ok
    assert "has shape [2, 6], expected [3, 4]" in report.describe()
