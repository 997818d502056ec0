"""Tensors on the wire: the protocol's datatype names, and the conversion of JSON data and raw
little-endian bytes to numpy arrays and back. Every check names the tensor (`where`) so that a
client sees which input was wrong and why.

Written by hand because the format is the protocol's own (tritonclient's helpers are client
code with no validation); numpy does the heavy lifting.
"""

from __future__ import annotations

import functools
import math
import struct
from typing import Any

import numpy as np

from inferopt.serve.errors import BadRequest

# Open Inference Protocol datatype -> numpy dtype (little-endian, as on the wire).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),  # elements are `bytes`
}
_BY_NUMPY = {dtype.name: name for name, dtype in DATATYPES.items()}
MAX_ELEMENTS = 2**31  # far above any body we accept; keeps shape arithmetic sane
MAX_RANK = 16
_LENGTH = struct.Struct("<I")  # BYTES elements: a 4-byte little-endian length, then the bytes


@functools.lru_cache(maxsize=64)
def datatype_of(dtype: np.dtype[Any] | str) -> str:
    """The protocol datatype of a numpy dtype (or dtype name, as in an IOSpec). Cached:
    numpy's dtype naming costs microseconds, and every input and output is named per
    request."""
    name = np.dtype(dtype).name
    if name not in _BY_NUMPY:
        raise BadRequest(f"numpy dtype {name} has no Open Inference Protocol datatype")
    return _BY_NUMPY[name]


def numpy_dtype(datatype: Any, where: str) -> np.dtype[Any]:
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise BadRequest(
            f"{where}: unknown datatype {datatype!r}; datatypes are {', '.join(DATATYPES)}"
        )
    return DATATYPES[datatype]


def check_shape(shape: Any, where: str) -> tuple[int, ...]:
    """A shape from a request: a list of non-negative ints, of sane rank and size."""
    if not isinstance(shape, list | tuple):
        raise BadRequest(f"{where}: shape must be a list of integers, got {shape!r}")
    if len(shape) > MAX_RANK:
        raise BadRequest(f"{where}: shape has {len(shape)} dimensions; at most {MAX_RANK}")
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise BadRequest(f"{where}: shape must hold non-negative integers, got {shape!r}")
    if math.prod(shape) > MAX_ELEMENTS:
        raise BadRequest(f"{where}: shape {list(shape)} has too many elements")
    return tuple(int(d) for d in shape)


def from_json(data: Any, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    """The array that JSON `data` (flat or nested, row-major) describes."""
    dtype = numpy_dtype(datatype, where)
    if not isinstance(data, list):
        raise BadRequest(f"{where}: data must be a list, got {type(data).__name__}")
    if datatype == "BYTES":
        array = _bytes_from_json(data, where)
    else:
        try:
            parsed = np.array(data)  # numpy walks nested lists in C; far faster than Python
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise BadRequest(f"{where}: data is not a regular array of numbers: {exc}") from None
        array = _convert(parsed, dtype, datatype, where)
    expected = math.prod(shape)
    if array.size != expected:
        raise BadRequest(
            f"{where}: shape {list(shape)} needs {expected} elements, data holds {array.size}"
        )
    return array.reshape(shape)


def _convert(parsed: np.ndarray, dtype: np.dtype[Any], datatype: str, where: str) -> np.ndarray:
    kind = parsed.dtype.kind
    if parsed.size == 0:
        return parsed.astype(dtype)
    if datatype == "BOOL":
        if kind != "b":
            raise BadRequest(f"{where}: BOOL data must be true/false, got {parsed.dtype} values")
        return parsed
    if dtype.kind in "iu":
        if kind not in "iu":
            raise BadRequest(f"{where}: {datatype} data must be integers, got {_kind(kind)}")
        info = np.iinfo(dtype)
        if int(parsed.min()) < info.min or int(parsed.max()) > info.max:
            raise BadRequest(f"{where}: values out of range for {datatype}")
        return parsed.astype(dtype)
    if kind not in "iuf":
        raise BadRequest(f"{where}: {datatype} data must be numbers, got {_kind(kind)}")
    with np.errstate(over="ignore"):  # beyond FP16's range is inf, as a binary FP16 would be
        return parsed.astype(dtype)


def _kind(kind: str) -> str:
    return {"b": "booleans", "f": "floats", "U": "strings", "O": "mixed or non-numeric values"}.get(
        kind, "other values"
    )


def _bytes_from_json(data: list[Any], where: str) -> np.ndarray:
    flat: list[Any] = []
    stack = [data]
    while stack:  # iterative: nesting depth is the client's to choose
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, str):
            flat.append(item.encode())
        else:
            raise BadRequest(f"{where}: BYTES data must be strings, got {type(item).__name__}")
    array = np.empty(len(flat), dtype=np.object_)
    array[:] = flat
    return array


def from_raw(
    raw: bytes | memoryview, datatype: str, shape: tuple[int, ...], where: str
) -> np.ndarray:
    """The array held in `raw`: little-endian, row-major (BYTES: length-prefixed elements)."""
    dtype = numpy_dtype(datatype, where)
    count = math.prod(shape)
    if datatype == "BYTES":
        return _bytes_from_raw(raw, count, where).reshape(shape)
    if len(raw) != count * dtype.itemsize:
        raise BadRequest(
            f"{where}: shape {list(shape)} of {datatype} needs {count * dtype.itemsize} bytes, "
            f"got {len(raw)}"
        )
    if datatype == "BOOL":
        # Any nonzero byte is true, as C++ and Triton read it (perf_analyzer's random BOOL data
        # are random bytes). Normalised to 0/1: numpy would otherwise keep a "true" of 7, and
        # the model would see a bool that is neither.
        return np.frombuffer(raw, dtype=np.uint8).reshape(shape).astype(np.bool_)
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    # Native byte order and alignment: ONNX Runtime copies otherwise, or refuses.
    return np.require(array.astype(dtype.newbyteorder("="), copy=False), requirements=("A", "C"))


def _bytes_from_raw(raw: bytes | memoryview, count: int, where: str) -> np.ndarray:
    view = memoryview(raw)
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise BadRequest(f"{where}: BYTES data ends inside an element's 4-byte length")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise BadRequest(f"{where}: BYTES element of {length} bytes runs past the data")
        items.append(bytes(view[offset : offset + length]))
        offset += length
        if len(items) > count:
            break
    if len(items) != count:
        raise BadRequest(f"{where}: shape needs {count} BYTES elements, data holds {len(items)}+")
    array = np.empty(count, dtype=np.object_)
    array[:] = items
    return array


def to_raw(array: np.ndarray) -> bytes:
    """The wire bytes of `array`: little-endian, row-major (BYTES: length-prefixed)."""
    if array.dtype == np.object_ or array.dtype.kind in "SU":
        parts = []
        for item in array.ravel():
            data = item if isinstance(item, bytes) else str(item).encode()
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return np.ascontiguousarray(little).tobytes()


def to_json(array: np.ndarray, where: str) -> Any:
    """`data` for a JSON response: a flat array orjson serializes natively, or a list of
    strings for BYTES."""
    if array.dtype == np.object_ or array.dtype.kind in "SU":
        try:
            return [
                item.decode() if isinstance(item, bytes) else str(item) for item in array.ravel()
            ]
        except UnicodeDecodeError:
            raise BadRequest(
                f"{where}: holds bytes that are not UTF-8 text; ask for it with binary_data"
            ) from None
    return np.ascontiguousarray(array).ravel()
