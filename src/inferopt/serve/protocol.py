"""The Open Inference Protocol's inference request and response, as HTTP bodies (JSON, and the
binary tensor data extension), and the checks of a request against the model's IOSpec.

The gRPC service decodes its messages into the same `InferRequest`, so validation and batching
do not care which protocol a request came by.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import orjson

from inferopt.iospec import IOSpec, TensorSpec
from inferopt.serve import tensors
from inferopt.serve.errors import BadRequest

HEADER_LENGTH = "inference-header-content-length"
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
# Stateful (sequence) batching is Triton's, not ours: refuse it rather than silently ignore it.
_UNSUPPORTED = ("sequence_id", "sequence_start", "sequence_end")


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool = False


@dataclass(frozen=True)
class InferRequest:
    inputs: dict[str, np.ndarray]
    outputs: tuple[RequestedOutput, ...] | None = None  # None: every output
    id: str | None = None
    timeout_us: int | None = None  # the request's deadline, from the `timeout` parameter
    priority: int = 0  # 0: default; 1 is served first, then 2, ...
    binary_output: bool = False  # `binary_data_output`: the default for outputs not listed


@dataclass(frozen=True)
class InferResponse:
    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]  # in response order
    binary: frozenset[str] = field(default_factory=frozenset)  # outputs sent as raw bytes
    id: str | None = None


# ---- decoding an HTTP request body ----


def inference_path(path: str) -> dict[str, str] | None:
    """{"model": m} of `/v2/models/{m}/infer`, {"model": m, "version": v} of
    `/v2/models/{m}/versions/{v}/infer`, else None."""
    prefix, suffix = "/v2/models/", "/infer"
    if not path.startswith(prefix) or not path.endswith(suffix):
        return None
    parts = path[len(prefix) : -len(suffix)].split("/")
    if len(parts) == 1 and parts[0]:
        return {"model": parts[0]}
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return {"model": parts[0], "version": parts[2]}
    return None


def parse_http(body: bytes, header_length: str | None) -> InferRequest:
    """An inference request from an HTTP body (JSON, or JSON header + binary tensors)."""
    json_part, binary = _split_body(body, header_length)
    try:
        document = orjson.loads(json_part)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    if not isinstance(document, dict):
        raise BadRequest("the request must be a JSON object")
    parameters = _parameters(document.get("parameters"), "request")
    inputs = _http_inputs(document.get("inputs"), binary)
    return InferRequest(
        inputs=inputs,
        outputs=_http_outputs(document.get("outputs")),
        id=_request_id(document.get("id")),
        timeout_us=_int_parameter(parameters, "timeout", "request"),
        priority=_int_parameter(parameters, "priority", "request") or 0,
        binary_output=_bool_parameter(parameters, "binary_data_output", "request"),
    )


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        raise BadRequest(
            f"Inference-Header-Content-Length must be an integer, got {header_length!r}"
        ) from None
    if not 0 < length <= len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length is {length} but the body has {len(body)} bytes"
        )
    return body[:length], memoryview(body)[length:]


def _http_inputs(items: Any, binary: memoryview) -> dict[str, np.ndarray]:
    if not isinstance(items, list) or not items:
        raise BadRequest("'inputs' must be a non-empty list of tensors")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for index, item in enumerate(items):
        name, datatype, shape, params = _tensor_header(item, f"inputs[{index}]")
        where = f"input {name!r}"
        if name in inputs:
            raise BadRequest(f"{where} is given twice")
        size = _int_parameter(params, "binary_data_size", where)
        if size is None:
            if "data" not in item:
                raise BadRequest(f"{where} has neither 'data' nor a binary_data_size parameter")
            inputs[name] = tensors.from_json(item["data"], datatype, shape, where)
            continue
        if "data" in item:
            raise BadRequest(f"{where} has both 'data' and a binary_data_size parameter")
        if offset + size > len(binary):
            raise BadRequest(
                f"{where}: binary_data_size {size} runs past the body's binary part "
                f"({len(binary)} bytes after the JSON header)"
            )
        inputs[name] = tensors.from_raw(binary[offset : offset + size], datatype, shape, where)
        offset += size
    if offset != len(binary):
        raise BadRequest(
            f"binary_data_size of the inputs add up to {offset} bytes but the body carries "
            f"{len(binary)} bytes after the JSON header"
        )
    return inputs


def _tensor_header(item: Any, where: str) -> tuple[str, str, tuple[int, ...], dict[str, Any]]:
    if not isinstance(item, dict):
        raise BadRequest(f"{where} must be an object with name, datatype, shape")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"{where} needs a non-empty string 'name'")
    where = f"input {name!r}"
    datatype = item.get("datatype")
    tensors.numpy_dtype(datatype, where)
    if "shape" not in item:
        raise BadRequest(f"{where} has no 'shape'")
    shape = tensors.check_shape(item["shape"], where)
    return name, str(datatype), shape, _parameters(item.get("parameters"), where)


def _http_outputs(items: Any) -> tuple[RequestedOutput, ...] | None:
    if items is None:
        return None
    if not isinstance(items, list):
        raise BadRequest("'outputs' must be a list of {name, parameters}")
    outputs = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest(f"outputs[{index}] must be an object with a string 'name'")
        where = f"output {item['name']!r}"
        params = _parameters(item.get("parameters"), where)
        if params.get("classification"):
            raise BadRequest(f"{where}: the classification extension is not supported")
        binary = _bool_parameter(params, "binary_data", where)
        outputs.append(RequestedOutput(item["name"], binary))
    return tuple(outputs)


def _request_id(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise BadRequest(f"'id' must be a string, got {type(value).__name__}")


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{where}: 'parameters' must be an object")
    for key in _UNSUPPORTED:
        if value.get(key):
            raise BadRequest(f"{where}: sequence batching ({key}) is not supported")
    return value


def _int_parameter(params: dict[str, Any], key: str, where: str) -> int | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"{where}: parameter {key!r} must be a non-negative integer")
    return value


def _bool_parameter(params: dict[str, Any], key: str, where: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{where}: parameter {key!r} must be true or false")
    return value


# ---- checking a request against the model ----


def validate(request: InferRequest, io: IOSpec) -> None:
    """Every input the model needs, no other, each of the right datatype, rank and fixed dims;
    symbolic dims (batch, sequence) equal wherever they share a name."""
    given = set(request.inputs)
    missing = [name for name in io.input_names if name not in given]
    if missing:
        raise BadRequest(f"missing inputs {missing}; the model's inputs are {io.input_names}")
    extra = sorted(given - set(io.input_names))
    if extra:
        raise BadRequest(f"unknown inputs {extra}; the model's inputs are {io.input_names}")
    symbols: dict[str, tuple[int, str]] = {}
    for spec in io.inputs:
        _check_input(request.inputs[spec.name], spec, symbols)
    for output in request.outputs or ():
        if output.name not in io.output_names:
            raise BadRequest(
                f"unknown output {output.name!r}; the model's outputs are {io.output_names}"
            )


def _check_input(array: np.ndarray, spec: TensorSpec, symbols: dict[str, tuple[int, str]]) -> None:
    where = f"input {spec.name!r}"
    expected = tensors.datatype_of(spec.dtype)
    got = tensors.datatype_of(array.dtype)
    if got != expected:
        raise BadRequest(f"{where}: datatype {got} but the model expects {expected}")
    if array.ndim != len(spec.shape):
        raise BadRequest(
            f"{where}: shape {list(array.shape)} has rank {array.ndim} but the model expects "
            f"rank {len(spec.shape)} {_shape_text(spec)}"
        )
    if array.size == 0:
        raise BadRequest(f"{where}: shape {list(array.shape)} holds no elements")
    for axis, (dim, size) in enumerate(zip(spec.shape, array.shape, strict=True)):
        if isinstance(dim, int) and dim != size:
            raise BadRequest(
                f"{where}: dimension {axis} is {size} but the model expects {dim} "
                f"{_shape_text(spec)}"
            )
        if isinstance(dim, str):
            first = symbols.setdefault(dim, (size, spec.name))
            if first[0] != size:
                raise BadRequest(
                    f"{where}: dimension {axis} ({dim}) is {size} but input {first[1]!r} "
                    f"has {first[0]}"
                )


def _shape_text(spec: TensorSpec) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else "-1" for d in spec.shape) + "]"


def selected_outputs(request: InferRequest, io: IOSpec) -> tuple[RequestedOutput, ...]:
    if request.outputs is not None:
        return request.outputs
    return tuple(RequestedOutput(name, request.binary_output) for name in io.output_names)


# ---- encoding an HTTP response ----


def encode_http(response: InferResponse) -> tuple[bytes, dict[str, str]]:
    """The response body and its content headers (binary outputs follow the JSON header)."""
    outputs = []
    raw_parts: list[bytes] = []
    for name, array in response.outputs.items():
        entry: dict[str, Any] = {
            "name": name,
            "datatype": tensors.datatype_of(array.dtype),
            "shape": list(array.shape),
        }
        if name in response.binary:
            raw = tensors.to_raw(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            raw_parts.append(raw)
        else:
            entry["data"] = tensors.to_json(array, f"output {name!r}")
        outputs.append(entry)
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id is not None:
        document["id"] = response.id
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not raw_parts:
        return header, {"content-type": JSON_TYPE}
    headers = {"content-type": BINARY_TYPE, HEADER_LENGTH: str(len(header))}
    return b"".join([header, *raw_parts]), headers


def tensor_metadata(spec: TensorSpec, column: bool = False) -> dict[str, Any]:
    """`{name, datatype, shape}` with -1 for each symbolic dim. `column`: a batch-only tensor
    of a batching model, shown as Triton shows it, [-1, 1] (see `batch_only`)."""
    return {
        "name": spec.name,
        "datatype": tensors.datatype_of(spec.dtype),
        "shape": [-1, 1] if column else [d if isinstance(d, int) else -1 for d in spec.shape],
    }


# ---- Triton's model configuration, and its batch-only tensors ----


def batch_only(spec: TensorSpec) -> bool:
    """A tensor whose one axis is the batch ([N]). Triton's configuration of a batching model
    leaves the batch axis out of `dims`, which would leave nothing, and clients such as
    perf_analyzer then cannot shape a request: Triton shows such a tensor as dims [1] with
    reshape [] (metadata [-1, 1]), takes it as [b, 1] and gives it as [b, 1]."""
    return len(spec.shape) == 1 and isinstance(spec.shape[0], str)


def config_tensor(meta: dict[str, Any], batching: bool, column: bool) -> dict[str, Any]:
    """One `input` or `output` entry of Triton's configuration, from the tensor's metadata
    (`batching`: max_batch_size > 0, so `dims` leave out the batch axis; `column`: a
    batch-only tensor, its metadata [-1, 1])."""
    entry: dict[str, Any] = {
        "name": meta["name"],
        "data_type": config_datatype(meta["datatype"]),
        "dims": meta["shape"][1:] if batching else meta["shape"],
    }
    if column:
        entry["reshape"] = {"shape": []}
    return entry


def config_datatype(datatype: str) -> str:
    """Triton's configuration name of a datatype (its BYTES is TYPE_STRING)."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def from_columns(request: InferRequest, names: frozenset[str]) -> tuple[InferRequest, bool]:
    """`request` with its inputs among `names` (batch-only, advertised as [-1, 1]) that came
    as [b, 1] turned into [b], the model's own shape, which is also taken; and whether the
    answer's batch-only outputs go back as advertised, [b, 1]: yes, unless some batch-only
    input came in the model's own shape (a client that knows the model gets its shapes)."""
    columns: dict[str, np.ndarray] = {}
    advertised = True
    # In the request's order, so that an error names the same input whatever the hash seed.
    for name, array in request.inputs.items():
        if name not in names:
            continue
        if array.ndim == 2 and array.shape[1] == 1:
            columns[name] = array.reshape(array.shape[0])
        elif array.ndim == 1:
            advertised = False
        else:
            raise BadRequest(
                f"input {name!r}: shape {list(array.shape)}, but the model takes [-1, 1] (or [-1])"
            )
    if columns:
        request = replace(request, inputs={**request.inputs, **columns})
    return request, advertised


def to_columns(outputs: dict[str, np.ndarray], names: frozenset[str]) -> dict[str, np.ndarray]:
    """The outputs among `names` (batch-only) as [b, 1], as advertised."""
    if not names:
        return outputs
    return {
        name: array.reshape(-1, 1) if name in names and array.ndim == 1 else array
        for name, array in outputs.items()
    }


def deadline_after(timeout_us: int | None, default_ms: float | None, now: float) -> float | None:
    """The monotonic time by which a request must be answered (None: no deadline).
    A `timeout` of 0 means none, as in Triton."""
    if timeout_us:
        return now + timeout_us / 1e6
    if default_ms is not None:
        return now + default_ms / 1e3
    return None
