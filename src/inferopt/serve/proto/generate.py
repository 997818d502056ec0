"""Regenerate the Python modules of `grpc_service.proto` (run after editing the .proto):

    .venv/bin/python src/inferopt/serve/proto/generate.py

It needs `grpcio-tools` (a development dependency only). The generated modules are committed so
that installing inferopt never needs a protobuf compiler.

Two edits are made to protoc's output, and both are why this script exists:
- the descriptors go into a private descriptor pool, not protobuf's default one. tritonclient
  (and any other Open Inference Protocol client) registers the same `inference.*` message names
  in the default pool, and a second registration is a hard error, so a process that imports
  both (our tests, or a user's program embedding the server) would fail at import time;
- a header marks the files as generated for mypy and ruff, and ruff formats them so that
  `ruff format --check` passes over the whole tree.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[2]  # .../src
PROTO = HERE / "grpc_service.proto"
OUTPUTS = ("grpc_service_pb2.py", "grpc_service_pb2.pyi", "grpc_service_pb2_grpc.py")
DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile"
PRIVATE_POOL = "_descriptor_pool.DescriptorPool().AddSerializedFile"
HEADER = """\
# Generated from grpc_service.proto by src/inferopt/serve/proto/generate.py: do not edit.
# protoc {protoc}, grpcio-tools {tools}; descriptors in a private pool (see generate.py).
# mypy: ignore-errors
# ruff: noqa
"""


def run_protoc() -> None:
    from grpc_tools import protoc  # type: ignore[import-untyped]

    args = [
        "protoc",
        f"-I{SRC}",
        f"--python_out={SRC}",
        f"--pyi_out={SRC}",
        f"--grpc_python_out={SRC}",
        str(PROTO),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def versions() -> tuple[str, str]:
    from importlib.metadata import version

    out = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()[-1], version("grpcio-tools")


def postprocess(path: Path, header: str) -> None:
    text = path.read_text()
    if path.name == "grpc_service_pb2.py":
        if DEFAULT_POOL not in text:
            raise SystemExit(f"{path}: protoc output changed; no {DEFAULT_POOL!r} to replace")
        text = text.replace(DEFAULT_POOL, PRIVATE_POOL)
    path.write_text(header + text)


def main() -> None:
    run_protoc()
    protoc_version, tools_version = versions()
    header = HEADER.format(protoc=protoc_version, tools=tools_version)
    paths = [HERE / name for name in OUTPUTS]
    for path in paths:
        postprocess(path, header)
    ruff = Path(sys.executable).with_name("ruff")
    subprocess.run([str(ruff), "format", "--quiet", *map(str, paths)], check=True)
    print("wrote", ", ".join(p.name for p in paths))


if __name__ == "__main__":
    main()
