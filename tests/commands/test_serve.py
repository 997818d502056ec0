"""`inferopt serve`: flags map onto the settings; errors a user can fix are one line, exit 2."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from inferopt.commands import serve as command
from inferopt.serve import ModelConfig


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    command.add_parser(sub)
    return parser.parse_args(["serve", *argv])


def tiny_repo(root: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(root / "tiny.onnx"))
    return root


def test_flags_become_server_and_model_settings(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("abc\n")
    args = parse(
        str(tmp_path),
        "--http-port",
        "0",
        "--no-grpc",
        "--max-batch-size",
        "4",
        "--sequence-batching",
        "bucket",
        "--default-timeout-ms",
        "250",
        "--management-token-file",
        str(token),
    )
    assert args.func is command.run
    server = command.server_config(args)
    assert (server.http_port, server.grpc_port, server.management_token) == (0, None, "abc")
    assert server.management_enabled
    model = command.model_config(args)
    assert model == ModelConfig(
        max_batch_size=4, sequence_batching="bucket", default_timeout_ms=250.0
    )


def test_bad_flags_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        parse(str(tmp_path), "--http-port", "99999")
    with pytest.raises(SystemExit):
        parse(str(tmp_path), "--sequence-batching", "sometimes")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing-repo", "must be a folder"),
        ("bad-config", "not valid TOML"),
        ("busy-port", "cannot listen for HTTP"),
        ("negative-setting", "max_queue_size must be >= 1"),
    ],
)
def test_errors_a_user_can_fix_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str, message: str
) -> None:
    repo = tiny_repo(tmp_path)
    argv = [str(repo), "--grpc-port", "0", "--http-port", "0"]
    busy = socket.socket()
    if setup == "missing-repo":
        argv[0] = str(tmp_path / "nope")
    elif setup == "bad-config":
        (tmp_path / "c.toml").write_text("= nonsense")
        argv += ["--config", str(tmp_path / "c.toml")]
    elif setup == "busy-port":
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        argv[argv.index("--http-port") + 1] = str(busy.getsockname()[1])
    else:
        argv += ["--max-queue-size", "0"]
    try:
        assert command.main(argv) == 2
    finally:
        busy.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("inferopt serve: error:")


def test_module_entry_point_shows_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "inferopt.serve", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "--max-batch-size" in result.stdout and "--management-token-file" in result.stdout


def test_every_model_setting_is_documented() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "serve.md").read_text()
    for field in fields(ModelConfig):
        assert f"| `{field.name}` |" in docs, field.name
