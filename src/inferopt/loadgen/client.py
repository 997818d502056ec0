"""Request makers for HTTP (httpx, JSON or the binary tensor extension) and gRPC (grpc.aio).

Each client encodes its input pool once, up front, and answers `infer()` with an outcome (see
stats.OUTCOMES) rather than raising: an error is a result to count, not a reason to stop. Every
answer also goes into the client's `tally`, by status, with the server's first message for
each failing status, so that a failing run can say why.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import grpc
import httpx
import orjson

from inferopt.iospec import IOSpec
from inferopt.loadgen.http1 import HttpError, Pool, encode_post
from inferopt.loadgen.inputs import BenchError, TensorMeta, Tensors, datatype_of
from inferopt.loadgen.stats import Tally
from inferopt.serve.proto import grpc_service_pb2 as pb
from inferopt.serve.proto import grpc_service_pb2_grpc as pb_grpc

Protocol_ = Literal["http", "grpc"]
_STATUS_OUTCOMES = {200: "ok", 429: "429", 503: "503", 504: "504"}
_GRPC_OUTCOMES = {
    grpc.StatusCode.OK: "ok",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "429",
    grpc.StatusCode.UNAVAILABLE: "503",
    grpc.StatusCode.DEADLINE_EXCEEDED: "504",
}
_MESSAGE_CHARS = 300  # of a server's error message, kept to say why requests failed


@dataclass(frozen=True)
class Target:
    url: str  # host:port (a scheme, if given, is dropped)
    model: str
    protocol: Protocol_ = "http"
    binary: bool = False  # HTTP: the binary tensor extension instead of JSON
    timeout_s: float = 30.0  # per request; a request past it counts as "timeout"

    def __post_init__(self) -> None:
        if self.protocol not in ("http", "grpc"):
            raise ValueError(f"protocol must be http or grpc, got {self.protocol!r}")
        if not self.model:
            raise ValueError("the model name must not be empty")
        if not self.timeout_s > 0:
            raise ValueError(f"the request timeout must be > 0 s, got {self.timeout_s}")

    @property
    def address(self) -> str:
        return self.url.split("://", 1)[-1].rstrip("/")

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit():
            raise BenchError(f"{self.url}: give the server as host:port")
        return host.strip("[]"), int(port)


class Client(Protocol):
    tally: Tally

    async def metadata(self) -> list[TensorMeta]: ...

    async def spec(self) -> IOSpec | None: ...

    def prepare(self, pool: Sequence[Tensors]) -> None: ...

    async def infer(self) -> str: ...

    async def close(self) -> None: ...


def make_client(target: Target) -> Client:
    if target.protocol == "grpc":
        return GrpcClient(target)
    return HttpClient(target)


class HttpClient:
    """Metadata through httpx (once); inference through the lean keep-alive Pool."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._http = httpx.AsyncClient(base_url=f"http://{target.address}", timeout=10.0)
        self._pool = Pool(*target.host_port)
        self._requests: itertools.cycle[bytes] | None = None
        self.tally = Tally()

    async def metadata(self) -> list[TensorMeta]:
        try:
            response = await self._http.get(f"/v2/models/{self.target.model}")
        except httpx.TransportError as exc:
            raise BenchError(f"cannot reach http://{self.target.address}: {exc!r}") from exc
        if response.status_code != 200:
            raise BenchError(_refusal(self.target, response.status_code, response.text))
        inputs = response.json().get("inputs", [])
        return [TensorMeta(i["name"], i["datatype"], tuple(i["shape"])) for i in inputs]

    async def spec(self) -> IOSpec | None:
        """The model's input spec where the server publishes one (inferopt's own server: in
        the model configuration, under "inferopt"); None from any other server."""
        try:
            response = await self._http.get(f"/v2/models/{self.target.model}/config")
            config = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):  # no /config (MLServer), or not JSON
            return None
        ours = config.get("inferopt") if isinstance(config, dict) else None
        published = ours.get("inputs") if isinstance(ours, dict) else None
        if not isinstance(published, dict):
            return None
        try:
            return IOSpec.from_json(published)
        except (KeyError, TypeError, ValueError):  # a spec of another shape: not ours to read
            return None

    def prepare(self, pool: Sequence[Tensors]) -> None:
        encode = _binary_body if self.target.binary else _json_body
        path = f"/v2/models/{self.target.model}/infer"
        requests = [encode_post(self.target.address, path, *encode(t)) for t in pool]
        self._requests = itertools.cycle(requests)

    async def infer(self) -> str:
        assert self._requests is not None, "prepare() first"
        try:
            async with asyncio.timeout(self.target.timeout_s):
                status, body = await self._pool.send(next(self._requests))
        except TimeoutError:
            self.tally.add_failure("timeout", lambda: _no_answer(self.target))
            return "timeout"
        except (OSError, HttpError, asyncio.IncompleteReadError) as exc:
            self.tally.add("connection", _one_line(repr(exc)))
            return "other"
        if status == 200:
            self.tally.add("ok")
            return "ok"
        self.tally.add_failure(str(status), lambda: _error_message(body))
        return _STATUS_OUTCOMES.get(status, "other")

    async def close(self) -> None:
        await self._pool.close()
        await self._http.aclose()


def _refusal(target: Target, status: int, text: str) -> str:
    if status == 404:
        return f"model {target.model!r} not found at {target.address}: {text.strip()[:200]}"
    return f"{target.address} answered {status} for model {target.model!r}: {text.strip()[:200]}"


def _error_message(body: bytes) -> str:
    """The server's error: the Open Inference Protocol's {"error": ...}, else the body."""
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError:
        decoded = None
    if isinstance(decoded, dict) and isinstance(decoded.get("error"), str):
        return _one_line(decoded["error"])
    return _one_line(body.decode("utf-8", errors="replace"))


def _no_answer(target: Target) -> str:
    return f"no answer within --timeout ({target.timeout_s:g} s)"


def _one_line(text: str) -> str:
    return " ".join(text.split())[:_MESSAGE_CHARS]


def _json_body(tensors: Tensors) -> tuple[bytes, dict[str, str]]:
    inputs = [
        {
            "name": name,
            "shape": list(array.shape),
            "datatype": datatype_of(array),
            "data": array.ravel().tolist(),
        }
        for name, array in tensors.items()
    ]
    return orjson.dumps({"inputs": inputs}), {"Content-Type": "application/json"}


def _binary_body(tensors: Tensors) -> tuple[bytes, dict[str, str]]:
    raws = [array.astype(array.dtype.newbyteorder("<")).tobytes() for array in tensors.values()]
    inputs = [
        {
            "name": name,
            "shape": list(array.shape),
            "datatype": datatype_of(array),
            "parameters": {"binary_data_size": len(raw)},
        }
        for (name, array), raw in zip(tensors.items(), raws, strict=True)
    ]
    # Outputs in binary too: decoding JSON numbers would cost the generator CPU.
    header = orjson.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}})
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return header + b"".join(raws), headers


class GrpcClient:
    def __init__(self, target: Target) -> None:
        self.target = target
        self._channel = grpc.aio.insecure_channel(target.address)
        # The generated stub is untyped; its methods are called as documented in the .proto.
        self._stub: Any = pb_grpc.GRPCInferenceServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._requests: itertools.cycle[pb.ModelInferRequest] | None = None
        self.tally = Tally()

    async def metadata(self) -> list[TensorMeta]:
        request = pb.ModelMetadataRequest(name=self.target.model)
        try:
            response = await self._stub.ModelMetadata(request, timeout=10.0)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                message = f"model {self.target.model!r} not found at {self.target.address}"
                raise BenchError(f"{message}: {exc.details()}") from exc
            where = f"grpc://{self.target.address}"
            raise BenchError(f"cannot reach {where}: {exc.code().name} {exc.details()}") from exc
        return [TensorMeta(i.name, i.datatype, tuple(i.shape)) for i in response.inputs]

    async def spec(self) -> IOSpec | None:
        """None: Triton's ModelConfig message has no field for our spec (our server publishes
        it over HTTP only)."""
        return None

    def prepare(self, pool: Sequence[Tensors]) -> None:
        self._requests = itertools.cycle([self._request(tensors) for tensors in pool])

    def _request(self, tensors: Tensors) -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(model_name=self.target.model)
        for name, array in tensors.items():
            request.inputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
            request.raw_input_contents.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
        return request

    async def infer(self) -> str:
        assert self._requests is not None, "prepare() first"
        try:
            await self._stub.ModelInfer(next(self._requests), timeout=self.target.timeout_s)
        except grpc.aio.AioRpcError as exc:
            if (
                exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                and exc.details() == "Deadline Exceeded"
            ):
                self.tally.add_failure("timeout", lambda: _no_answer(self.target))
                return "timeout"  # our own deadline, not the server's 504
            self.tally.add(exc.code().name, _one_line(exc.details() or ""))
            return _GRPC_OUTCOMES.get(exc.code(), "other")
        self.tally.add("ok")
        return "ok"

    async def close(self) -> None:
        await self._channel.close()
