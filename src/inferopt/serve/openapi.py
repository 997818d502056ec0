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


_STOP = {
    "nullable": True,
    "oneOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "maxItems": 4, "items": {"type": "string", "minLength": 1}},
    ],
}
_SAMPLING: dict[str, Any] = {
    "max_tokens": {"type": "integer", "minimum": 1, "nullable": True},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2, "nullable": True},
    "top_p": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 1},
    "top_k": {"type": "integer", "minimum": 0},
    "seed": {"type": "integer", "minimum": 0, "nullable": True},
    "stop": _STOP,
}
_OPENAI_COMMON: dict[str, Any] = {
    **_SAMPLING,
    "n": {"type": "integer", "enum": [1]},
    "stream": {"type": "boolean", "nullable": True},
    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
}
_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
        "content": {"type": "string"},
    },
}
_OPENAI_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": "string", "nullable": True},
                "code": {"type": "string", "nullable": True},
            },
        }
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
        422: "a parameter of the generation is wrong; the message names it",
        424: "the generation failed",
        429: "refused by admission control; see Retry-After",
        503: "not ready",
        504: "deadline passed before the request could run",
    }
    return {str(code): _json(_ERROR, reasons[code]) for code in codes}


def _operation(summary: str, ok: dict[str, Any], *errors: int, **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {"200": ok, **_errors(*errors)}, **extra}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _generation_paths(generators: list[str], params: list[Any], prefix: str) -> dict[str, Any]:
    """OIP's generate extension under `prefix` (serve/generation.py)."""
    request = {
        "type": "object",
        "required": ["text_input"],
        "properties": {
            "text_input": {"type": "string", "minLength": 1},
            "parameters": {"type": "object", "properties": _SAMPLING},
        },
    }
    codes = (400, 404, 413, 415, 422, 424, 429, 503, 504)
    return {
        f"{prefix}/{kind}": {
            "post": _operation(
                summary, _json({"type": "object"}, "text"), *codes, requestBody=_body(request)
            ),
            "parameters": params,
        }
        for kind, summary in (
            ("generate", "Generate text (generators only)"),
            ("generate_stream", "Generate text as server-sent events (generators only)"),
        )
    }


def _openai_paths(generators: list[str]) -> dict[str, Any]:
    """OpenAI's API over the generators (serve/openai.py)."""
    model: dict[str, Any] = {"type": "string"}
    if generators:
        model["enum"] = generators
    errors = {
        str(code): _json(_OPENAI_ERROR, why)
        for code, why in (
            (400, "invalid request; `param` names the field"),
            (404, "unknown model"),
            (429, "overloaded; see Retry-After"),
            (503, "not ready"),
            (504, "deadline passed"),
        )
    }

    def post(summary: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
        schema = {
            "type": "object",
            "required": required,
            "properties": {"model": model, **_OPENAI_COMMON, **properties},
        }
        ok = _json({"type": "object"}, "the completion (text/event-stream when streaming)")
        return {
            "post": {
                "summary": summary,
                "requestBody": _body(schema),
                "responses": {"200": ok, **errors},
            }
        }

    name = {"name": "model", "in": "path", "required": True, "schema": model}
    return {
        "/v1/models": {"get": _operation("The generators", _json({"type": "object"}, "list"))},
        "/v1/models/{model}": {
            "get": {
                "summary": "One generator",
                "parameters": [name],
                "responses": {"200": _json({"type": "object"}, "model"), **errors},
            },
        },
        "/v1/completions": post(
            "Complete a prompt", {"prompt": {"type": "string"}}, ["model", "prompt"]
        ),
        "/v1/chat/completions": post(
            "Answer a conversation",
            {
                "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
                "max_completion_tokens": {"type": "integer", "minimum": 1, "nullable": True},
            },
            ["model", "messages"],
        ),
    }


def document(models: list[str], generators: list[str] | None = None) -> dict[str, Any]:
    """The OpenAPI document; `models` are the names being served, `generators` those of
    them that are generators."""
    generators = generators or []
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
        paths.update(_generation_paths(generators, params, prefix))
    paths.update(_openai_paths(generators))
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
