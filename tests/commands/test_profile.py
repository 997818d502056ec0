"""`inferopt profile` as a user meets it: tables, files, comparisons, and one-line errors with
exit code 2 that name the flag at fault. The command runs under a parser shaped like cli.py's."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.text import Text

from inferopt.commands.profile import add_parser
from inferopt.errors import InferoptError
from inferopt.report.schema import SCHEMA_FILE

FAST = ["--threads", "1", "--max-time", "0.2", "--min-time", "0", "--sweep-time", "0.2",
        "--target-ci", "5"]  # fmt: skip


def main(argv: Sequence[str]) -> int:
    """What cli.main does around a subcommand: InferoptError -> one line on stderr, exit 2."""
    parser = argparse.ArgumentParser(prog="inferopt")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except InferoptError as exc:
        message = Text.assemble(("inferopt: error: ", "bold red"), str(exc))
        Console(stderr=True, soft_wrap=True).print(message, highlight=False)
        return 2
    return code


def _mlp(path: Path, hidden: int = 32) -> Path:
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", hidden])],
        [numpy_helper.from_array(rng.standard_normal((16, hidden)).astype(np.float32), "w1")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)
    return path


def test_profile_prints_tables_and_writes_json_and_html(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _mlp(tmp_path / "net.onnx")
    out_json, out_html = tmp_path / "out" / "m.json", tmp_path / "out" / "m.html"
    code = main(["profile", str(model), "--batch-sizes", "1,4", *FAST,
                 "--json", str(out_json), "--html", str(out_html)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    for title in ("net: what it costs to run", "latency of one run", "where the time goes"):
        assert title in printed
    document = json.loads(out_json.read_text())
    jsonschema.validate(document, json.loads(SCHEMA_FILE.read_text()))
    assert [p["batch"] for p in document["points"]] == [1, 4]
    assert document["config"]["max_time_per_point_s"] == 0.2  # flags reach the config
    assert document["config"]["watts_per_core"] == 5.0  # ... and defaults stay the config's
    assert out_html.read_text().count('<img src="data:image/png;base64,') == 6


def test_two_models_are_compared(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _mlp(tmp_path / "a.onnx"), _mlp(tmp_path / "b.onnx", hidden=256)
    out = tmp_path / "c.json"
    code = main(["profile", str(a), str(b), "--batch-sizes", "2", "--no-memory", *FAST,
                 "--json", str(out)])  # fmt: skip
    assert code == 0
    assert "b / a (runs interleaved" in capsys.readouterr().out
    document = json.loads(out.read_text())
    assert document["schema"] == "inferopt.comparison" and len(document["ratios"]) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--seq-lens", "16"], "--seq-lens: net has no sequence axis"),
        (["--batch-sizes", "1,20000000000"], "--batch-sizes 20000000000: net needs an estimated"),
        (["--min-time", "5", "--max-time", "1"], "min_time_per_point_s must be between"),
    ],
)
def test_bad_settings_give_one_line_naming_the_flag_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    code = main(["profile", str(_mlp(tmp_path / "net.onnx")), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_an_unknown_model_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", str(tmp_path / "missing.onnx")]) == 2
    assert "missing.onnx: no such file" in capsys.readouterr().err
    assert main(["profile", "no-such-zoo-model"]) == 2
    assert "not a zoo name" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--seq-lens", "0"], "--seq-lens must be integers >= 1, got '0'"),
        (["--batch-sizes", "8,x"], "expected comma-separated integers"),
        (["--target-ci", "0"], "--target-ci must be > 0"),
        (["--price-per-hour", "-1"], "--price-per-hour must be >= 0"),
    ],
)
def test_malformed_flags_are_usage_errors(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["profile", "m.onnx", *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
