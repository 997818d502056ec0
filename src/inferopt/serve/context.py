"""What the HTTP app and the gRPC service share: the repository, the metrics, the settings,
whether the server is draining, and the rules both apply (readiness, management access)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from inferopt import __version__
from inferopt.serve.config import ServerConfig
from inferopt.serve.errors import Forbidden, NotFound, Unauthorized
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
    # Set when this process is one replica of several (Ray Serve): the figures of the whole
    # server are then Ray's, summed over replicas, and the repository rolls out through Ray.
    replica: str | None = None

    @property
    def ready(self) -> bool:
        return self.repository.ready and not self.draining

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def check_whole_server(self, what: str) -> None:
        """Refuse `what` (/metrics, statistics) in a replica: its own figures are not the
        server's, and a proxy would show one replica, chosen at random, as the whole."""
        if self.replica is not None:
            raise NotFound(
                f"{what} is not served under Ray Serve: this answer would come from one "
                f"replica ({self.replica}) of several. Ray exports every replica's metrics on "
                "each node's metrics port, labelled by replica; sum over them (docs/scaleout.md)"
            )

    def check_management(self, authorization: str | None) -> None:
        """Load and unload are allowed only when turned on, and with the token if one is set."""
        if self.replica is not None:
            raise Forbidden(
                "the model management API is off under Ray Serve: versions roll out through "
                "Ray's config (run `inferopt serve REPO --ray ...` again, or `serve deploy`)"
            )
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
