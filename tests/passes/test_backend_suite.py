"""ONNX's own backend test models (shipped in the onnx wheel) as a peer's test suite: each model
comes with inputs and the outputs every backend must reproduce. Most are old exports (IR 3,
opset 6 or 9), so they also cover inferopt's import of old IR versions (inferopt.compat).

For each model ONNX Runtime must first reproduce the expected outputs itself (else the model
is skipped with ORT's reason); then inferopt must load it, and every exact graph pass, run with
the model's own inputs as verification feeds, must give a model that reproduces them too."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from inferopt.model import Model, Provenance, from_proto, load_onnx
from inferopt.passes.base import PassContext, PassError
from inferopt.passes.recipe import PASSES

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
FOLDERS = ("pytorch-converted", "pytorch-operator", "simple")
MODELS = sorted(
    (
        model
        for folder in FOLDERS
        if (DATA / folder).is_dir()  # an onnx build without its test data: nothing to run
        for model in (DATA / folder).iterdir()
        if model.is_dir()
    ),
    key=lambda path: path.name,
)
EXACT_PASSES = ("fold", "dce", "fuse", "ort-optimize")
RTOL, ATOL = 1e-3, 1e-7  # what onnx's own backend runner allows

_SQRT_NAN = (
    "pass verification (passes/base.py) takes an input model's NaN output for a sign of bad "
    "verification inputs and refuses it; this model's own inputs give NaN (Sqrt of negatives)"
)
_OLD_SEQUENCE_FOLD = (
    "onnxscript's constant folder rewrites {op} into opset-13 {new} (an input instead of an "
    "attribute) whatever the model's opset, here 12"
)
# Known failures outside this suite's reach; strict, so a fix shows up as a failure here.
KNOWN: dict[tuple[str, str], str] = {
    **{("test_operator_sqrt", name): _SQRT_NAN for name in EXACT_PASSES},
    **{
        (model, name): _OLD_SEQUENCE_FOLD.format(op=op, new=new)
        for model, op, new in (
            ("test_sequence_model5", "ConcatFromSequence", "Unsqueeze"),
            ("test_sequence_model8", "SplitToSequence", "Split"),
        )
        for name in ("fold", "fuse")
    },
}


@dataclass(frozen=True)
class Case:
    path: Path  # model.onnx
    output_names: tuple[str, ...]
    # (feeds, expected outputs by name), one per test_data_set_* folder
    sets: tuple[tuple[dict[str, np.ndarray], dict[str, np.ndarray]], ...]


def _tensors(folder: Path, prefix: str) -> list[np.ndarray]:
    files = sorted(folder.glob(f"{prefix}_*.pb"), key=lambda f: int(f.stem.split("_")[-1]))
    return [numpy_helper.to_array(onnx.load_tensor(str(f))) for f in files]


@functools.cache
def _case(folder: Path) -> Case:
    graph = onnx.load(str(folder / "model.onnx")).graph
    initializers = {init.name for init in graph.initializer}
    inputs = [value.name for value in graph.input if value.name not in initializers]
    outputs = tuple(value.name for value in graph.output)
    sets = tuple(
        (
            dict(zip(inputs, _tensors(data, "input"), strict=True)),
            dict(zip(outputs, _tensors(data, "output"), strict=True)),
        )
        for data in sorted(folder.glob("test_data_set_*"))
    )
    return Case(folder / "model.onnx", outputs, sets)


def _mismatch(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> str | None:
    """Why `got` does not reproduce `expected` (None when it does)."""
    for name, want in expected.items():
        if name not in got:
            return f"output {name!r} missing"
        have = np.asarray(got[name])
        if want.dtype.kind in "OSU":  # strings: exact
            if want.shape != have.shape or not np.array_equal(want.astype(object), have):
                return f"output {name!r} differs"
            continue
        try:
            np.testing.assert_allclose(have, want, rtol=RTOL, atol=ATOL)
        except AssertionError as exc:
            return f"output {name!r}: {' '.join(str(exc).split())}"
    return None


@functools.cache
def _ort_failure(folder: Path) -> str | None:
    """Why ONNX Runtime itself does not reproduce the model's expected outputs, or None."""
    case = _case(folder)
    try:
        session = ort.InferenceSession(str(case.path), providers=["CPUExecutionProvider"])
        for feeds, expected in case.sets:
            got = dict(
                zip(case.output_names, session.run(list(case.output_names), feeds), strict=True)
            )
            if (reason := _mismatch(expected, got)) is not None:
                return f"ONNX Runtime does not reproduce it: {reason}"
    except Exception as exc:  # ORT lacks the op version, or fails at run time
        return f"ONNX Runtime cannot run it: {str(exc).strip().splitlines()[0]}"
    return None


@functools.cache
def _imported(folder: Path) -> Model:
    """The model as inferopt loads it (cached: its sessions are reused by every pass test)."""
    if (reason := _ort_failure(folder)) is not None:
        pytest.skip(reason)
    return load_onnx(folder / "model.onnx")


def _check_reproduces(model: Model, case: Case) -> None:
    for feeds, expected in case.sets:
        reason = _mismatch(expected, model.run(feeds))
        assert reason is None, f"{case.path.parent.name}: {reason}"


@pytest.mark.parametrize("folder", MODELS, ids=[m.name for m in MODELS])
def test_import_reproduces_expected_outputs(folder: Path) -> None:
    model = _imported(folder)
    assert model.proto.ir_version >= 4  # old IRs are brought up on import (inferopt.compat)
    _check_reproduces(model, _case(folder))


def _params() -> list[object]:
    params: list[object] = []
    for folder in MODELS:
        for name in EXACT_PASSES:
            known = KNOWN.get((folder.name, name))
            xfail = pytest.mark.xfail(reason=known, strict=True, raises=PassError)
            marks = [xfail] if known else []
            params.append(pytest.param(folder, name, marks=marks, id=f"{folder.name}-{name}"))
    return params


@pytest.mark.parametrize(("folder", "pass_name"), _params())
def test_exact_pass_reproduces_expected_outputs(folder: Path, pass_name: str) -> None:
    model, case = _imported(folder), _case(folder)
    context = PassContext(verification=tuple(feeds for feeds, _ in case.sets))
    out = PASSES[pass_name]()(model, context)
    _check_reproduces(out, case)


def _with_a_default() -> Model:
    """y = x * scale + 2 under IR 8, `scale` an input with a default (an initializer also
    listed as an input): feeding it is part of the model's interface."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    scale = helper.make_tensor_value_info("scale", TensorProto.FLOAT, [3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    nodes = [
        helper.make_node("Mul", ["x", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "two"], ["y"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array([1, 2, 3], np.float32), "scale"),
        numpy_helper.from_array(np.full(3, 2, np.float32), "two"),
    ]
    graph = helper.make_graph(nodes, "g", [x, scale], [y], initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return from_proto(proto, Provenance("defaults", "onnx"))


@pytest.mark.parametrize("pass_name", EXACT_PASSES)
def test_an_input_with_a_default_stays_one_through_every_pass(pass_name: str) -> None:
    model = _with_a_default()
    x = np.ones((2, 3), np.float32)
    out = PASSES[pass_name]()(model, PassContext(verification=({"x": x},)))
    assert out.run({"x": x})["y"].tolist() == [[3.0, 4.0, 5.0]] * 2
    # Raises "invalid input name" where the pass made `scale` a constant.
    fed = out.run({"x": x, "scale": np.zeros(3, np.float32)})["y"]
    assert fed.tolist() == [[2.0, 2.0, 2.0]] * 2
