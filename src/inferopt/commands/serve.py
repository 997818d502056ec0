"""`inferopt serve REPO`: serve a model repository over HTTP and gRPC (Open Inference
Protocol), with dynamic batching. Also `python -m inferopt.serve REPO`.

The per-model flags (--max-batch-size, ...) are derived from `ModelConfig`'s fields, so a new
setting shows up here, in the config file and in the docs' table from one declaration.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, get_args, get_type_hints

from inferopt.errors import InferoptError
from inferopt.serve.config import ModelConfig, ServerConfig
from inferopt.serve.errors import ConfigError

TOKEN_ENV = "INFEROPT_MANAGEMENT_TOKEN"
EXIT_USAGE = 2


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="serve a model repository over HTTP and gRPC (Open Inference Protocol)",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    server = ServerConfig()
    parser.add_argument("repository", metavar="REPO", help="folder of models (see docs/serve.md)")
    parser.add_argument("--host", default=server.host, help="address to listen on")
    parser.add_argument("--http-port", type=_port, default=server.http_port, help="0: any free")
    parser.add_argument("--grpc-port", type=_port, default=server.grpc_port, help="0: any free")
    parser.add_argument("--no-grpc", action="store_true", help="serve HTTP only")
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML: [defaults], [models.X]")
    parser.add_argument(
        "--max-body-mb",
        type=float,
        default=server.max_body_bytes / 2**20,
        help="largest request body (HTTP) or message (gRPC), in MiB",
    )
    parser.add_argument("--management", action="store_true", help="serve the load/unload API")
    parser.add_argument(
        "--management-token-file",
        type=Path,
        metavar="FILE",
        help=f"file holding the bearer token load/unload require (or set ${TOKEN_ENV})",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=server.drain_timeout_s,
        help="on SIGTERM, longest wait for queued work (s)",
    )
    parser.add_argument("--access-log", action="store_true", help="log every HTTP request")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    group = parser.add_argument_group("model settings (defaults for every model)")
    hints = get_type_hints(ModelConfig)
    for field in fields(ModelConfig):
        choices = get_args(hints[field.name])
        literal = bool(choices) and all(isinstance(c, str) for c in choices)
        convert: Callable[[str], Any] = (
            str if literal else (int if hints[field.name] is int else float)
        )
        group.add_argument(
            "--" + field.name.replace("_", "-"),
            type=convert,
            choices=choices if literal else None,
            default=None,
            help=f"{field.metadata['help']} (default: {field.default})",
        )


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {port}")
    return port


def server_config(args: argparse.Namespace) -> ServerConfig:
    token = os.environ.get(TOKEN_ENV) or None
    if args.management_token_file is not None:
        try:
            token = args.management_token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{args.management_token_file}: cannot read it: {exc}") from exc
    try:
        return ServerConfig(
            host=args.host,
            http_port=args.http_port,
            grpc_port=None if args.no_grpc else args.grpc_port,
            max_body_bytes=int(args.max_body_mb * 2**20),
            management=args.management,
            management_token=token,
            drain_timeout_s=args.drain_timeout,
            access_log=args.access_log,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def model_config(args: argparse.Namespace) -> ModelConfig:
    given = {f.name: getattr(args, f.name) for f in fields(ModelConfig)}
    return ModelConfig().overlay({k: v for k, v in given.items() if v is not None}, "flags")


def run(args: argparse.Namespace) -> int:
    try:  # imported late: `inferopt --help` stays fast, and works without the serve extra
        from inferopt.serve.server import Server
    except ImportError as exc:
        raise InferoptError(
            f"inferopt serve needs {exc.name or 'its dependencies'}: pip install 'inferopt[serve]'"
        ) from exc

    _configure_logging(args.log_level)
    Server(args.repository, server_config(args), model_config(args), args.config).run()
    return 0


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("inferopt serve: %(message)s"))
    for name in ("inferopt.serve", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
    logging.getLogger("inferopt.serve").setLevel(level.upper())


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m inferopt.serve`: the subcommand on its own, with the CLI's error style."""
    parser = argparse.ArgumentParser(prog="inferopt serve", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except InferoptError as exc:
        print(f"inferopt serve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
