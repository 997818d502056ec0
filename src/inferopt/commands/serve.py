"""`inferopt serve REPO`: serve a model repository over HTTP and gRPC (Open Inference
Protocol), with dynamic batching. Also `python -m inferopt.serve REPO`.

The per-model flags (--max-batch-size, ...) are derived from `ModelConfig`'s fields, so a new
setting shows up here, in the config file and in the docs' table from one declaration.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, get_args, get_type_hints

from inferopt.commands.parser import EXIT_USAGE, Parser
from inferopt.errors import InferoptError
from inferopt.serve.config import ModelConfig, ServerConfig
from inferopt.serve.errors import ConfigError
from inferopt.serve.rayconfig import RaySettings, repository_revision, serve_config

TOKEN_ENV = "INFEROPT_MANAGEMENT_TOKEN"


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
    _add_ray_arguments(parser)
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


def _add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    ray = RaySettings()
    group = parser.add_argument_group("Ray Serve (replicas across machines; see docs/scaleout.md)")
    group.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="serve on Ray Serve: 'auto' (the cluster on this machine), HOST:PORT or "
        "ray://HOST:PORT; alone, the cluster on this machine or a new local one",
    )
    group.add_argument(
        "--ray-config",
        action="store_true",
        help="print the Ray Serve config (for `serve deploy` and KubeRay) and exit",
    )
    group.add_argument(
        "--replicas", type=replicas_flag, default=ray.replicas, metavar="N|auto",
        help=f"replicas, or 'auto' to autoscale (default: {ray.replicas})",
    )  # fmt: skip
    group.add_argument("--min-replicas", type=int, default=ray.min_replicas, help="with auto")
    group.add_argument("--max-replicas", type=int, default=ray.max_replicas, help="with auto")
    group.add_argument(
        "--target-ongoing", type=float, default=ray.target_ongoing,
        help="with auto: requests in flight per replica Ray scales to",
    )  # fmt: skip
    group.add_argument(
        "--cpus-per-replica", type=float, default=ray.cpus_per_replica,
        help="CPUs Ray reserves per replica (also its ONNX Runtime threads)",
    )  # fmt: skip
    group.add_argument(
        "--detach", action="store_true",
        help="with --ray: deploy (or roll out) and exit, leaving the application running",
    )  # fmt: skip


def replicas_flag(text: str) -> int | None:
    """--replicas: a count, or 'auto' (None: autoscale)."""
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or 'auto', got {text!r}") from None


def ray_settings(args: argparse.Namespace) -> RaySettings:
    try:
        return RaySettings(
            replicas=args.replicas,
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
            target_ongoing=args.target_ongoing,
            cpus_per_replica=args.cpus_per_replica,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


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
    if args.ray_config:
        return _print_ray_config(args)
    if args.ray is not None:
        return _run_on_ray(args)
    try:  # imported late: `inferopt --help` stays fast, and works without the serve extra
        from inferopt.serve.server import Server
    except ImportError as exc:
        raise InferoptError(
            f"inferopt serve needs {exc.name or 'its dependencies'}: pip install 'inferopt[serve]'"
        ) from exc

    _configure_logging(args.log_level)
    Server(args.repository, server_config(args), model_config(args), args.config).run()
    return 0


def _print_ray_config(args: argparse.Namespace) -> int:
    import yaml

    root = Path(args.repository).resolve()  # the replicas' path: absolute, or on the cluster
    config = serve_config(
        str(root),
        model_config(args),
        server_config(args),
        ray_settings(args),
        str(args.config) if args.config else None,
        repository_revision(root) if root.is_dir() else None,  # else: only on the cluster
    )
    sys.stdout.write(yaml.safe_dump(config, sort_keys=False))
    return 0


def _run_on_ray(args: argparse.Namespace) -> int:
    try:
        from inferopt.serve import rayserve
    except ImportError as exc:
        raise InferoptError(
            f"inferopt serve --ray needs {exc.name or 'Ray'}: pip install 'inferopt[ray]'"
        ) from exc

    _configure_logging(args.log_level)
    deployed = rayserve.deploy(
        args.repository,
        model_config(args),
        server_config(args),
        ray_settings(args),
        address=args.ray or None,
        config_file=args.config,
    )
    grpc = deployed.grpc_url or "off"
    print(
        f"inferopt serve: on Ray Serve, {deployed.replicas} replica(s): "
        f"http={deployed.http_url} grpc={grpc}",
        flush=True,
    )
    if args.detach:
        return 0
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    print("inferopt serve: deleting the application (Ray drains its requests)", flush=True)
    rayserve.undeploy()
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
    parser = Parser(prog="inferopt serve", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except InferoptError as exc:
        print(f"inferopt serve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
