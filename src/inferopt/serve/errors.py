"""Errors the server answers with. Each carries its HTTP status; the gRPC service maps the same
status to a gRPC code, so both protocols refuse the same requests the same way."""

from __future__ import annotations

import math

from inferopt.errors import InferoptError


def retry_after(seconds: float) -> int:
    """Whole seconds, at least 1: HTTP's Retry-After takes no fractions."""
    return max(1, math.ceil(seconds))


class ServeError(InferoptError):
    """A request the server refuses, with the HTTP status that says why."""

    status = 500

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s

    def retry_after_header(self) -> str | None:
        if self.retry_after_s is None:
            return None
        return str(retry_after(self.retry_after_s))


class BadRequest(ServeError):
    """Malformed request, or inputs that do not fit the model (the message names the input)."""

    status = 400


class Unauthorized(ServeError):
    status = 401


class Forbidden(ServeError):
    status = 403


class NotFound(ServeError):
    """Unknown model or version."""

    status = 404


class PayloadTooLarge(ServeError):
    status = 413


class UnsupportedEncoding(ServeError):
    status = 415


class Overloaded(ServeError):
    """Admission control refused the request: the queue is full, or its deadline cannot be met."""

    status = 429


class ModelFailed(ServeError):
    """The model itself failed on inputs that passed validation: the server's problem."""

    status = 500


class NotReady(ServeError):
    """The model (or server) is loading, unloading or failed to load."""

    status = 503


class DeadlineExceeded(ServeError):
    """The request's timeout passed before it could be answered."""

    status = 504


class ConfigError(InferoptError):
    """A server or model setting is invalid (bad config file, port in use, ...)."""
