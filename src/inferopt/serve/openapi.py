"""The server's OpenAPI 3 description of itself, served on /v2/openapi.json.

Written here rather than generated from the routes: the request and response bodies are the
Open Inference Protocol's, which no route signature expresses. The `model` parameter lists the
models being served, so API tools (and our schemathesis run) exercise real models.
"""

from __future__ import annotations

from typing import Any

from inferopt import __version__
from inferopt.serve.tensors import DATATYPES

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}
_PARAMETERS = {"type": "object", "additionalProperties": True}
_TENSOR_META: dict[str, Any] = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string", "enum": list(DATATYPES)},
        "shape": {"type": "array", "items": {"type": "integer"}},
    },
}
_INPUT = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": list(DATATYPES)},
        "parameters": _PARAMETERS,
        "data": {"type": "array", "items": {}},
    },
}
_INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {
            "type": "object",
            "properties": {
                "timeout": {"type": "integer", "minimum": 0, "description": "microseconds"},
                "priority": {"type": "integer", "minimum": 0},
                "binary_data_output": {"type": "boolean"},
            },
            "additionalProperties": True,
        },
        "inputs": {"type": "array", "minItems": 1, "items": _INPUT},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": _PARAMETERS},
            },
        },
    },
}
_INFER_RESPONSE = {
    "type": "object",
    "required": ["model_name", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "outputs": {
            "type": "array",
            "items": {**_TENSOR_META, "properties": {**_TENSOR_META["properties"], "data": {}}},
        },
    },
}
_METADATA = {
    "type": "object",
    "required": ["name", "versions", "platform", "inputs", "outputs"],
    "properties": {
        "name": {"type": "string"},
        "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"},
        "inputs": {"type": "array", "items": _TENSOR_META},
        "outputs": {"type": "array", "items": _TENSOR_META},
    },
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    reasons = {
        400: "malformed request, or inputs that do not fit the model",
        401: "missing or wrong management token",
        403: "management API is off",
        404: "unknown model or version",
        413: "body too large",
        415: "unsupported Content-Encoding",
        429: "refused by admission control; see Retry-After",
        503: "not ready",
        504: "deadline passed before the request could run",
    }
    return {str(code): _json(_ERROR, reasons[code]) for code in codes}


def _operation(summary: str, ok: dict[str, Any], *errors: int, **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {"200": ok, **_errors(*errors)}, **extra}


def document(models: list[str]) -> dict[str, Any]:
    """The OpenAPI document; `models` are the names being served."""
    name_schema: dict[str, Any] = {"type": "string"}
    if models:
        name_schema["enum"] = models
    model = {"name": "model", "in": "path", "required": True, "schema": name_schema}
    version = {
        "name": "version",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
    ok = {"description": "OK"}
    paths: dict[str, Any] = {
        "/v2/health/live": {"get": _operation("Liveness", ok)},
        "/v2/health/ready": {"get": _operation("Readiness of every model", ok, 503)},
        "/v2": {"get": _operation("Server metadata", _json({"type": "object"}, "metadata"))},
        "/v2/models/stats": {"get": _operation("Statistics of every model", ok)},
        "/v2/repository/index": {
            "post": _operation(
                "Models in the repository and their state",
                _json({"type": "array", "items": {"type": "object"}}, "index"),
                400,
                413,
                requestBody={
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"ready": {"type": "boolean"}},
                            }
                        }
                    },
                },
            )
        },
        "/metrics": {"get": _operation("Prometheus metrics", ok)},
    }
    for prefix, params in (
        ("/v2/models/{model}", [model]),
        ("/v2/models/{model}/versions/{version}", [model, version]),
    ):
        paths[prefix] = {
            "get": _operation("Model metadata", _json(_METADATA, "metadata"), 400, 404, 503),
            "parameters": params,
        }
        for suffix, summary in (
            ("/ready", "Model readiness"),
            ("/config", "Model configuration"),
            ("/stats", "Model statistics"),
        ):
            paths[prefix + suffix] = {
                "get": _operation(summary, ok, 400, 404, 503),
                "parameters": params,
            }
        paths[prefix + "/infer"] = {
            "post": _operation(
                "Inference",
                _json(_INFER_RESPONSE, "the outputs"),
                400,
                404,
                413,
                415,
                429,
                503,
                504,
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": _INFER_REQUEST}},
                },
            ),
            "parameters": params,
        }
    for action in ("load", "unload"):
        paths[f"/v2/repository/models/{{model}}/{action}"] = {
            "post": _operation(f"{action.title()} a model", ok, 400, 401, 403, 404, 413),
            "parameters": [{**model, "schema": {"type": "string"}}],
        }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "inferopt inference server (Open Inference Protocol v2)",
            "version": __version__,
        },
        "paths": paths,
    }
