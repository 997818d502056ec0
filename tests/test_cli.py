"""The command line as a user meets it: exit codes, one-line errors, what gets printed."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferopt.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))

import field_kinds as kinds  # noqa: E402

BIN = Path(sys.executable).parent / "inferopt"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(FIXTURES), "COLUMNS": "200"}
    return subprocess.run(
        [str(BIN), *args], capture_output=True, text=True, env=env, timeout=600, check=False
    )


@pytest.mark.slow
def test_zoo_export_minilm_checks_parity_at_batch_3_seq_57(tmp_path: Path) -> None:
    result = _run("zoo", "export", "minilm", "--out", str(tmp_path / "m.onnx"))
    assert result.returncode == 0, result.stderr
    assert "parity at batch 3, sequence length 57: agrees" in result.stdout
    assert "input_ids: int64[batch, seq]" in result.stdout
    assert "latency (quick)" in result.stdout
    assert (tmp_path / "m.onnx").stat().st_size > 50_000_000


def test_export_factory_writes_a_checked_model(tmp_path: Path) -> None:
    result = _run("export", "factories:good", "--out", str(tmp_path / "f.onnx"), "--no-latency")
    assert result.returncode == 0, result.stderr
    assert "parity at batch 3: agrees" in result.stdout
    assert (tmp_path / "f.onnx").is_file()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.onnx", "missing.onnx: no such file"),
        (lambda d: _write(d / "text.onnx", b"hello"), "text.onnx: not an ONNX model"),
        (lambda d: _write(d / "empty.onnx", b""), "empty.onnx: not an ONNX model"),
    ],
)
def test_bad_files_give_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: object, message: str
) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    code = main(["export", str(path), "--out", str(tmp_path / "o.onnx")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()


def test_factory_that_raises_exits_2_without_traceback(tmp_path: Path) -> None:
    result = _run("export", "factories:raises", "--out", str(tmp_path / "o.onnx"))
    assert result.returncode == 2
    assert "the factory raised RuntimeError" in result.stderr
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = _run("--debug", "export", str(tmp_path / "missing.onnx"), "--out", "x.onnx")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "m.onnx", "--out", "o.onnx", "--seq-axis", "-1"])
    assert exit_info.value.code == 2
    assert "axis must be >= 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["generate", "m", "--prompt", "hi", "--max-new-tokens", "x"], "--max-new-tokens"),
        (["bench", "127.0.0.1:1", "--concurrency", "2"], "--model"),
        (["nope"], "'nope'"),
        (["zoo", "export", "no-such-model", "--out", "o.onnx"], "'no-such-model'"),
    ],
)
def test_a_usage_error_is_one_line_naming_the_argument(
    capsys: pytest.CaptureFixture[str], argv: list[str], named: str
) -> None:
    """argparse's own errors, as the commands' errors: one line, exit 2, no usage block."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err and "usage:" not in err, err
    assert err.startswith("inferopt") and err.rstrip().endswith("--help)")


def test_axis_overrides_are_saved(tmp_path: Path) -> None:
    out = tmp_path / "f.onnx"
    assert _run("export", "factories:good", "--out", str(out), "--no-latency").returncode == 0
    again = tmp_path / "g.onnx"
    code = main(["export", str(out), "--out", str(again), "--batch-axis", "none", "--no-latency"])
    assert code == 0
    from inferopt.model import load_onnx

    assert load_onnx(again).io.batch_axis is None


def test_zoo_list_and_hardware(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zoo", "list"]) == 0
    listing = capsys.readouterr().out
    assert "minilm" in listing and "digits-cnn" in listing and "digits-mlp" in listing
    assert main(["hardware", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "CPUExecutionProvider" in info["ort_providers"]


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


# ---- models from elsewhere: inputs found, stated (--input-shape) or given (--data) ----

QUICK_PROFILE = (
    "--no-memory", "--max-time", "0.3", "--min-time", "0", "--sweep-time", "0.5",
    "--batch-sizes", "1",
)  # fmt: skip


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.mark.parametrize(
    ("flag", "shape"),
    [("--input-shape", "input:1,2000"), ("--shape", "input:2000")],
    ids=["full", "perf-analyzer-spelling"],
)
def test_export_onnx_with_a_stated_input_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, shape: str
) -> None:
    """A window no generated size fits (1000 samples): stated, the export runs at it."""
    source = kinds.save(kinds.vad(window=1000), tmp_path / "vad.onnx")
    out = tmp_path / "out.onnx"
    assert main(["export", str(source), "--out", str(out), flag, shape]) == 0
    assert "samples=2000" in capsys.readouterr().out
    from inferopt.model import load_onnx

    io = load_onnx(out).io
    assert io.dims["samples"] == 2000 and io.batch_axis_of("state") == 1
    assert io.sample_inputs(batch=2)["input"].shape == (2, 2000)


@pytest.mark.parametrize(
    "build",
    [kinds.vad, kinds.ids_table, kinds.masked_encoder, kinds.zipmap_classifier],
    ids=["vad", "ids", "key-padding-mask", "zipmap"],
)
def test_profile_runs_models_of_the_field_kinds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], build: Any
) -> None:
    source = kinds.save(build(), tmp_path / "model.onnx")
    code = main(["profile", str(source), *QUICK_PROFILE])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "what it costs to run" in captured.out


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ("input:1,x", "dims must be integers"),
        ("input", "write NAME:DIMS"),
        ("input:0,64", "every size must be >= 1"),
        ("nope:1,64", "no input named 'nope'"),
        ("input:1,2,64", "3 dims given, the input has 2"),
        ("state:3,1,4", "axis 0 is fixed at 2 in the model, not 3"),
    ],
)
def test_a_bad_input_shape_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], shape: str, message: str
) -> None:
    source = kinds.save(kinds.vad(), tmp_path / "vad.onnx")
    out = tmp_path / "out.onnx"
    assert main(["export", str(source), "--out", str(out), "--input-shape", shape]) == 2
    assert message in _one_line_error(capsys)
    assert not out.exists()
    assert main(["profile", str(source), *QUICK_PROFILE, "--input-shape", shape]) == 2
    assert message in _one_line_error(capsys)


@pytest.mark.parametrize("command", ["profile", "export"])
def test_a_model_only_data_run_is_one_line_naming_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    source = kinds.save(kinds.unrunnable(), tmp_path / "model.onnx")
    args = [*QUICK_PROFILE] if command == "profile" else ["--out", str(tmp_path / "o.onnx")]
    assert main([command, str(source), *args]) == 2
    err = _one_line_error(capsys)
    assert "--data" in err and "--input-shape" in err


def test_profile_with_data_runs_the_model_only_data_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = kinds.save(kinds.unrunnable(), tmp_path / "model.onnx")
    np.savez(tmp_path / "data.npz", **kinds.unrunnable_data())
    code = main(["profile", str(source), *QUICK_PROFILE, "--data", str(tmp_path / "data.npz")])
    assert code == 0, capsys.readouterr().err
