"""What the HTTP app and the gRPC service share: the repository, the metrics, the settings,
whether the server is draining, and the rules both apply (readiness, management access)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from inferopt import __version__
from inferopt.serve.config import ServerConfig
from inferopt.serve.errors import Forbidden, Unauthorized
from inferopt.serve.metrics import Metrics
from inferopt.serve.repository import Repository

SERVER_NAME = "inferopt"
EXTENSIONS = ("binary_tensor_data", "model_repository", "statistics", "model_configuration")


@dataclass
class Context:
    repository: Repository
    metrics: Metrics
    config: ServerConfig
    draining: bool = False  # set on SIGTERM: not ready any more, queued work still finishes

    @property
    def ready(self) -> bool:
        return self.repository.ready and not self.draining

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def check_management(self, authorization: str | None) -> None:
        """Load and unload are allowed only when turned on, and with the token if one is set."""
        if not self.config.management_enabled:
            raise Forbidden(
                "the model management API is off; start the server with --management "
                "(and --management-token-file) to load and unload models"
            )
        token = self.config.management_token
        if token is None:
            return
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise Unauthorized("load and unload need the header 'Authorization: Bearer <token>'")
