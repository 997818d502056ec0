"""Serving: an Open Inference Protocol (KServe v2) server over HTTP and gRPC, with dynamic
batching, deadlines and admission control, for a repository of ONNX models.

    from inferopt.serve import Server, ServerConfig
    Server("models/", ServerConfig(http_port=8000, grpc_port=8001)).run()

See docs/serve.md for the repository layout, settings, endpoints and metrics. Names are
imported on first use, so `inferopt --help` (which reads the settings) stays fast and works
without the serving dependencies installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inferopt.serve.config import ConfigFile, ModelConfig, ServerConfig
    from inferopt.serve.errors import ServeError
    from inferopt.serve.runner import OnnxRunner, RunControl, Runner
    from inferopt.serve.server import BackgroundServer, Server

_HOMES = {
    "BackgroundServer": "server",
    "ConfigFile": "config",
    "ModelConfig": "config",
    "OnnxRunner": "runner",
    "RunControl": "runner",
    "Runner": "runner",
    "ServeError": "errors",
    "Server": "server",
    "ServerConfig": "config",
}
__all__ = [
    "BackgroundServer",
    "ConfigFile",
    "ModelConfig",
    "OnnxRunner",
    "RunControl",
    "Runner",
    "ServeError",
    "Server",
    "ServerConfig",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'inferopt.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(f"inferopt.serve.{_HOMES[name]}"), name)
