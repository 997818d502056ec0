"""Ray cluster addresses, shared by `serve --ray` and `optimize --ray`: a check that fails in
seconds when nothing listens, because `ray.init` retries an unreachable address for minutes."""

from __future__ import annotations

import socket

CONNECT_TIMEOUT_S = 5.0


def probe(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> tuple[str, int]:
    """Open and close a TCP connection to `address` (HOST:PORT, or ray://HOST:PORT).

    Returns (host, port). Raises:
        ValueError: `address` is not HOST:PORT with a numeric port.
        OSError: nothing answered at it within `timeout_s`.
    """
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT or ray://HOST:PORT, got {address!r}")
    socket.create_connection((host, int(port)), timeout=timeout_s).close()
    return host, int(port)
