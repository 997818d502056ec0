"""The command line as a user meets it: exit codes, one-line errors, what gets printed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inferopt.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
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
