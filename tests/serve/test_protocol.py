"""The request decoder and validator: every bad input is a BadRequest naming the input and
the problem; property tests throw malformed bodies at it and see nothing but BadRequest."""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inferopt.iospec import IOSpec, TensorSpec
from inferopt.serve import protocol, tensors
from inferopt.serve.errors import BadRequest
from inferopt.serve.protocol import InferRequest, InferResponse, RequestedOutput

IO = IOSpec(
    inputs=(
        TensorSpec("input_ids", "int64", ("batch", "seq")),
        TensorSpec("attention_mask", "int64", ("batch", "seq")),
    ),
    outputs=(TensorSpec("embedding", "float32", ("batch", 4)),),
    batch_axis=0,
    seq_axis=1,
)


def body(inputs: list[dict], **extra: object) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def tensor(name: str, shape: list[int], data: list, datatype: str = "INT64") -> dict:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def binary_body(header: dict, *parts: bytes) -> tuple[bytes, str]:
    head = orjson.dumps(header)
    return head + b"".join(parts), str(len(head))


def decode_and_check(raw: bytes, header_length: str | None = None) -> InferRequest:
    request = protocol.parse_http(raw, header_length)
    protocol.validate(request, IO)
    return request


GOOD = [tensor("input_ids", [1, 3], [1, 2, 3]), tensor("attention_mask", [1, 3], [[1, 1, 1]])]


def test_json_request_decodes_flat_and_nested_data() -> None:
    request = decode_and_check(body(GOOD, id="r1", parameters={"timeout": 5000, "priority": 2}))
    assert request.inputs["input_ids"].tolist() == [[1, 2, 3]]
    assert request.inputs["attention_mask"].dtype == np.int64
    assert (request.id, request.timeout_us, request.priority) == ("r1", 5000, 2)


def test_binary_request_decodes_every_tensor_in_order() -> None:
    ids = np.array([[5, 6]], np.int64)
    mask = np.array([[1, 0]], np.int64)
    header = {
        "inputs": [
            {
                "name": n,
                "shape": [1, 2],
                "datatype": "INT64",
                "parameters": {"binary_data_size": 16},
            }
            for n in ("input_ids", "attention_mask")
        ],
        "outputs": [{"name": "embedding", "parameters": {"binary_data": True}}],
    }
    raw, length = binary_body(header, ids.tobytes(), mask.tobytes())
    request = decode_and_check(raw, length)
    assert np.array_equal(request.inputs["input_ids"], ids)
    assert np.array_equal(request.inputs["attention_mask"], mask)
    assert request.outputs == (RequestedOutput("embedding", binary=True),)


BAD_REQUESTS = [
    (b"{not json", "malformed JSON"),
    (b"[1, 2]", "JSON object"),
    (body([]), "non-empty list"),
    (body([tensor("input_ids", [1, 3], [1, 2, 3], "INT65"), GOOD[1]]), "unknown datatype"),
    (body([tensor("input_ids", [1, 4], [1, 2, 3]), GOOD[1]]), "input 'input_ids': shape"),
    (
        body([tensor("input_ids", [1, 3], [1, 2, 3], "INT32"), GOOD[1]]),
        "input 'input_ids': datatype INT32 but the model expects INT64",
    ),
    (body([tensor("input_ids", [3], [1, 2, 3]), GOOD[1]]), "input 'input_ids': shape [3] has rank"),
    (body([GOOD[0]]), "missing inputs ['attention_mask']"),
    (body([*GOOD, tensor("extra", [1], [1])]), "unknown inputs ['extra']"),
    (body([GOOD[0], GOOD[0], GOOD[1]]), "input 'input_ids' is given twice"),
    (body([tensor("input_ids", [1, 3], [1, 2.5, 3]), GOOD[1]]), "must be integers"),
    (body([tensor("input_ids", [1, 3], [1, "a", 3]), GOOD[1]]), "input 'input_ids'"),
    (body([tensor("input_ids", [1, 3], [[1, 2], [3]]), GOOD[1]]), "not a regular array"),
    (
        body([tensor("input_ids", [2, 3], [1] * 6), GOOD[1]]),
        "input 'attention_mask': dimension 0 (batch) is 1 but input 'input_ids' has 2",
    ),
    (body([tensor("input_ids", [1, -3], [1, 2, 3]), GOOD[1]]), "non-negative integers"),
    (body([tensor("input_ids", [0, 3], []), GOOD[1]]), "holds no elements"),
    (
        body([{"name": "input_ids", "shape": [1, 3], "datatype": "INT64"}, GOOD[1]]),
        "neither 'data' nor a binary_data_size",
    ),
    (body(GOOD, outputs=[{"name": "nope"}]), "unknown output 'nope'"),
    (body(GOOD, parameters={"timeout": "soon"}), "'timeout' must be a non-negative integer"),
    (body(GOOD, parameters={"sequence_id": 7}), "sequence batching"),
    (body(GOOD, id=5), "'id' must be a string"),
    (body([tensor("input_ids", [1, 3], [1, 2, 2**70]), GOOD[1]]), "input 'input_ids'"),
]


@pytest.mark.parametrize(("raw", "message"), BAD_REQUESTS)
def test_bad_json_requests_name_the_problem(raw: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)):
        decode_and_check(raw)


def test_binary_sizes_that_do_not_add_up_are_refused() -> None:
    header = {
        "inputs": [
            {
                "name": "input_ids",
                "shape": [1, 2],
                "datatype": "INT64",
                "parameters": {"binary_data_size": 16},
            },
            GOOD[1],
        ]
    }
    raw, length = binary_body(header, b"\0" * 24)  # 8 bytes too many
    with pytest.raises(BadRequest, match="add up to 16 bytes but the body carries 24"):
        decode_and_check(raw, length)
    raw, length = binary_body(header, b"\0" * 8)  # too few
    with pytest.raises(BadRequest, match="input 'input_ids': binary_data_size 16 runs past"):
        decode_and_check(raw, length)
    header["inputs"][0]["parameters"]["binary_data_size"] = 8  # says 8, shape needs 16
    raw, length = binary_body(header, b"\0" * 8)
    with pytest.raises(BadRequest, match=r"input 'input_ids': shape .* needs 16 bytes, got 8"):
        decode_and_check(raw, length)
    with pytest.raises(BadRequest, match="Inference-Header-Content-Length"):
        decode_and_check(raw, "99999")
    with pytest.raises(BadRequest, match="Inference-Header-Content-Length"):
        decode_and_check(raw, "x")


def test_bytes_tensors_round_trip_in_json_and_binary() -> None:
    array = np.array([b"hello", b"", "é".encode()], dtype=np.object_)
    raw = tensors.to_raw(array)
    assert raw[:4] == struct.pack("<I", 5)
    assert tensors.from_raw(raw, "BYTES", (3,), "x").tolist() == array.tolist()
    assert tensors.from_json(["hello", "", "é"], "BYTES", (3,), "x").tolist() == array.tolist()
    with pytest.raises(BadRequest, match="x: BYTES element of 9 bytes runs past"):
        tensors.from_raw(struct.pack("<I", 9) + b"abc", "BYTES", (1,), "x")


def test_response_is_json_or_header_plus_binary() -> None:
    out = np.arange(8, dtype=np.float32).reshape(2, 4)
    content, headers = protocol.encode_http(InferResponse("m", "1", {"embedding": out}, id="q"))
    document = json.loads(content)
    assert headers["content-type"] == "application/json"
    assert document["id"] == "q"
    assert document["outputs"][0]["data"] == out.ravel().tolist()
    content, headers = protocol.encode_http(
        InferResponse("m", "1", {"embedding": out}, binary=frozenset({"embedding"}))
    )
    length = int(headers[protocol.HEADER_LENGTH])
    meta = json.loads(content[:length])["outputs"][0]
    assert meta["parameters"]["binary_data_size"] == 32
    assert np.array_equal(np.frombuffer(content[length:], np.float32).reshape(2, 4), out)


@pytest.mark.parametrize("datatype", sorted(set(tensors.DATATYPES) - {"BYTES"}))
def test_raw_round_trip_every_datatype(datatype: str) -> None:
    dtype = tensors.DATATYPES[datatype]
    array = (np.arange(6) % 2).astype(dtype).reshape(2, 3)
    back = tensors.from_raw(tensors.to_raw(array), datatype, (2, 3), "x")
    assert back.dtype == dtype and np.array_equal(back, array)


def test_bool_bytes_are_true_when_nonzero_as_in_cpp() -> None:
    flags = tensors.from_raw(bytes([0, 1, 2, 255]), "BOOL", (2, 2), "flag")
    assert flags.dtype == np.bool_ and flags.tolist() == [[False, True], [True, True]]
    assert flags.view(np.uint8).max() == 1  # normalised: the model sees 0/1 only


COLUMNS = IOSpec(
    inputs=(TensorSpec("w", "object", ("batch",)), TensorSpec("x", "float32", ("batch", 2))),
    outputs=(TensorSpec("label", "object", ("batch",)), TensorSpec("y", "float32", ("batch", 2))),
)


def test_batch_only_tensors_are_columns_in_tritons_view() -> None:
    w, x = COLUMNS.inputs
    assert protocol.batch_only(w) and not protocol.batch_only(x)
    meta = protocol.tensor_metadata(w, column=True)
    assert meta == {"name": "w", "datatype": "BYTES", "shape": [-1, 1]}
    assert protocol.config_tensor(meta, batching=True, column=True) == {
        "name": "w",
        "data_type": "TYPE_STRING",
        "dims": [1],
        "reshape": {"shape": []},
    }
    flat = protocol.config_tensor(protocol.tensor_metadata(x), batching=False, column=False)
    assert flat == {"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 2]}


def test_batch_only_inputs_come_as_columns_or_as_the_model_has_them() -> None:
    names = frozenset({"w"})
    words = np.array([[b"a"], [b"b"]], dtype=np.object_)
    x = np.zeros((2, 2), np.float32)
    request, advertised = protocol.from_columns(InferRequest({"w": words, "x": x}), names)
    assert request.inputs["w"].shape == (2,) and request.inputs["x"] is x and advertised
    protocol.validate(request, COLUMNS)
    own, advertised = protocol.from_columns(InferRequest({"w": words[:, 0], "x": x}), names)
    assert own.inputs["w"].shape == (2,) and not advertised
    with pytest.raises(BadRequest, match=re.escape("input 'w': shape [1, 2], but the model")):
        protocol.from_columns(InferRequest({"w": words.reshape(1, 2), "x": x}), names)
    outputs = {"label": words[:, 0], "y": x}
    shaped = protocol.to_columns(outputs, frozenset({"label"}))
    assert shaped["label"].shape == (2, 1) and shaped["y"] is x
    assert protocol.to_columns(outputs, frozenset()) is outputs


# ---- property tests: malformed requests give BadRequest, never anything else ----

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
NAMES = st.sampled_from(["input_ids", "attention_mask", "other", ""])
DATATYPES = st.sampled_from([*tensors.DATATYPES, "FP8", "int64", ""])
SHAPES = st.lists(st.integers(-2, 4), max_size=3) | JSON_VALUES
TENSORS = st.fixed_dictionaries(
    {"name": NAMES, "datatype": DATATYPES, "shape": SHAPES},
    optional={
        "data": JSON_VALUES | st.lists(st.integers(-(2**65), 2**65), max_size=12),
        "parameters": st.dictionaries(
            st.sampled_from(["binary_data_size", "binary_data", "x"]),
            st.integers(-4, 64) | st.booleans(),
            max_size=2,
        ),
    },
)
DOCUMENTS = st.fixed_dictionaries(
    {"inputs": st.lists(TENSORS, max_size=3) | JSON_VALUES},
    optional={
        "id": JSON_VALUES,
        "parameters": st.dictionaries(
            st.sampled_from(["timeout", "priority", "binary_data_output", "sequence_id"]),
            JSON_VALUES,
            max_size=3,
        ),
        "outputs": st.lists(st.fixed_dictionaries({"name": NAMES}), max_size=2) | JSON_VALUES,
    },
)
# No example database: the tests leave nothing behind in the working tree.
CHECKED = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def _only_bad_request(raw: bytes, header_length: str | None = None) -> None:
    try:
        decode_and_check(raw, header_length)
    except BadRequest as exc:
        assert str(exc)  # a message, never an empty one


@CHECKED
@given(DOCUMENTS)
def test_structured_garbage_is_a_bad_request(document: dict) -> None:
    _only_bad_request(json.dumps(document).encode())


@CHECKED
@given(DOCUMENTS, st.binary(max_size=64), st.integers(-5, 400) | st.text(max_size=4))
def test_binary_garbage_is_a_bad_request(document: dict, tail: bytes, length: object) -> None:
    head = json.dumps(document).encode()
    header_length = str(len(head)) if isinstance(length, int) and length % 2 else str(length)
    _only_bad_request(head + tail, header_length)


@CHECKED
@given(st.binary(max_size=200))
def test_random_bytes_are_a_bad_request(raw: bytes) -> None:
    _only_bad_request(raw)


@CHECKED
@given(
    st.binary(max_size=64),
    st.sampled_from(sorted(tensors.DATATYPES)),
    st.lists(st.integers(0, 5), max_size=3),
)
def test_raw_tensor_garbage_is_a_bad_request(raw: bytes, datatype: str, shape: list) -> None:
    try:
        array = tensors.from_raw(raw, datatype, tuple(shape), "x")
    except BadRequest:
        return
    assert array.shape == tuple(shape)
