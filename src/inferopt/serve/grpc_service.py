"""The gRPC side: `inference.GRPCInferenceService` on grpc.aio, in the same event loop as the
HTTP app and over the same repository. Inputs come as typed `contents` or, the fast path, as
`raw_input_contents`; outputs always go back as `raw_output_contents`, as Triton does.

(Named grpc_service, not grpc, so that `import grpc` inside the package means the library.)
"""

from __future__ import annotations

import math
from collections.abc import Awaitable
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf.json_format import ParseDict

from inferopt.serve import tensors
from inferopt.serve.context import Context
from inferopt.serve.errors import BadRequest, ServeError
from inferopt.serve.proto import grpc_service_pb2 as pb
from inferopt.serve.proto import grpc_service_pb2_grpc as pb_grpc
from inferopt.serve.protocol import InferRequest, InferResponse, RequestedOutput
from inferopt.serve.repository import Served

T = TypeVar("T")
Ctx = grpc.aio.ServicerContext[Any, Any]
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Which InferTensorContents field carries each datatype (FP16 and BF16: raw only).
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_UNSUPPORTED = ("sequence_id", "sequence_start", "sequence_end")
_OURS = "inferopt"  # the model configuration's key for our own settings


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, context: Context) -> None:
        self.context = context
        self.repository = context.repository

    async def ServerLive(self, request: pb.ServerLiveRequest, ctx: Ctx) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, ctx: Ctx) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.context.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, ctx: Ctx) -> pb.ModelReadyResponse:
        try:
            self.repository.get(request.name, request.version or None)
        except ServeError as exc:
            if exc.status == 404:
                await _abort(ctx, exc)
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, ctx: Ctx
    ) -> pb.ServerMetadataResponse:
        return ParseDict(self.context.server_metadata(), pb.ServerMetadataResponse())

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, ctx: Ctx
    ) -> pb.ModelMetadataResponse:
        served = await _answer(ctx, self._get(request.name, request.version))
        return ParseDict(served.metadata(), pb.ModelMetadataResponse())

    async def ModelConfig(self, request: pb.ModelConfigRequest, ctx: Ctx) -> pb.ModelConfigResponse:
        served = await _answer(ctx, self._get(request.name, request.version))
        config = served.model_config()
        del config[_OURS]  # Triton's message has no field for them; parsing the rest is strict
        return pb.ModelConfigResponse(config=ParseDict(config, pb.ModelConfig()))

    async def ModelInfer(self, request: pb.ModelInferRequest, ctx: Ctx) -> pb.ModelInferResponse:
        remaining = ctx.time_remaining()

        async def decoded() -> InferRequest:
            return decode(request, remaining)

        work = self.repository.infer(request.model_name, request.model_version or None, decoded)
        return encode(await _answer(ctx, work))

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, ctx: Ctx
    ) -> pb.ModelStatisticsResponse:
        try:
            self.context.check_whole_server("the statistics extension")
        except ServeError as exc:
            await _abort(ctx, exc)
        if request.name:
            versions = [await _answer(ctx, self._get(request.name, request.version))]
        else:
            versions = self.repository.served()
        stats = [v.metrics.to_json() for v in versions]
        return ParseDict({"model_stats": stats}, pb.ModelStatisticsResponse())

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, ctx: Ctx
    ) -> pb.RepositoryIndexResponse:
        entries = self.repository.index(ready_only=request.ready)
        return ParseDict({"models": entries}, pb.RepositoryIndexResponse())

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, ctx: Ctx
    ) -> pb.RepositoryModelLoadResponse:
        await _answer(ctx, self._manage(ctx, request.parameters, "load", request.model_name))
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, ctx: Ctx
    ) -> pb.RepositoryModelUnloadResponse:
        await _answer(ctx, self._manage(ctx, request.parameters, "unload", request.model_name))
        return pb.RepositoryModelUnloadResponse()

    async def _get(self, name: str, version: str) -> Served:
        return self.repository.get(name, version or None)

    async def _manage(self, ctx: Ctx, parameters: Any, action: str, name: str) -> None:
        metadata = dict(ctx.invocation_metadata() or ())
        authorization = metadata.get("authorization")
        self.context.check_management(authorization if isinstance(authorization, str) else None)
        refused = sorted(set(parameters) - {"unload_dependents"})
        if refused:
            raise BadRequest(f"parameters {refused} are not supported; models load from disk only")
        if action == "load":
            await self.repository.load(name)
        else:
            await self.repository.unload(name)


async def _answer(ctx: Ctx, work: Awaitable[T]) -> T:
    """`work`'s result; a ServeError becomes the matching gRPC status."""
    try:
        return await work
    except ServeError as exc:
        await _abort(ctx, exc)
        raise  # abort raises; this line only satisfies the type checker


async def _abort(ctx: Ctx, exc: ServeError) -> None:
    retry = exc.retry_after_header()
    if retry is not None:
        ctx.set_trailing_metadata((("retry-after", retry),))
    await ctx.abort(_CODES.get(exc.status, grpc.StatusCode.INTERNAL), exc.message)


# ---- messages <-> InferRequest / InferResponse ----


def decode(request: pb.ModelInferRequest, time_remaining: float | None = None) -> InferRequest:
    """An InferRequest from a ModelInferRequest; a gRPC deadline tightens the timeout."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} buffers for {len(request.inputs)} inputs"
        )
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        where = f"input {tensor.name!r}" if tensor.name else f"inputs[{index}]"
        if not tensor.name or tensor.name in inputs:
            raise BadRequest(f"{where}: every input needs a name of its own")
        shape = tensors.check_shape(list(tensor.shape), where)
        if raw:
            if tensor.HasField("contents"):
                raise BadRequest(f"{where}: has contents, but raw_input_contents is used")
            inputs[tensor.name] = tensors.from_raw(raw[index], tensor.datatype, shape, where)
        else:
            inputs[tensor.name] = _from_contents(tensor, shape, where)
    params = request.parameters
    for key in _UNSUPPORTED:
        if key in params and _value(params[key]):
            raise BadRequest(f"sequence batching ({key}) is not supported")
    timeout = _timeout_us(_int(params, "timeout"), time_remaining)
    for output in request.outputs:
        if "classification" in output.parameters:
            raise BadRequest(
                f"output {output.name!r}: the classification extension is not supported"
            )
    return InferRequest(
        inputs=inputs,
        outputs=tuple(RequestedOutput(o.name, binary=True) for o in request.outputs) or None,
        id=request.id or None,
        timeout_us=timeout,
        priority=_int(params, "priority") or 0,
        binary_output=True,
    )


def _from_contents(tensor: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    dtype = tensors.numpy_dtype(tensor.datatype, where)
    field = _CONTENTS.get(tensor.datatype)
    if field is None:
        raise BadRequest(f"{where}: {tensor.datatype} travels only in raw_input_contents")
    values = getattr(tensor.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise BadRequest(
            f"{where}: shape {list(shape)} needs {count} elements, {field} holds {len(values)}"
        )
    if tensor.datatype == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = list(values)
        return array.reshape(shape)
    wide = np.array(values)
    if dtype.kind in "iu" and wide.size:
        info = np.iinfo(dtype)
        if int(wide.min()) < info.min or int(wide.max()) > info.max:
            raise BadRequest(f"{where}: values out of range for {tensor.datatype}")
    return wide.astype(dtype).reshape(shape)


def _value(param: Any) -> Any:
    choice = param.WhichOneof("parameter_choice")
    return getattr(param, choice) if choice else None


def _int(params: Any, key: str) -> int | None:
    if key not in params:
        return None
    value = _value(params[key])
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"parameter {key!r} must be a non-negative integer")
    return value


def _timeout_us(timeout: int | None, time_remaining: float | None) -> int | None:
    if time_remaining is None:
        return timeout
    remaining = max(1, int(time_remaining * 1e6))  # 0 would mean "no timeout"
    return remaining if not timeout else min(timeout, remaining)


def encode(response: InferResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id or "",
    )
    for name, array in response.outputs.items():
        message.outputs.add(
            name=name, datatype=tensors.datatype_of(array.dtype), shape=list(array.shape)
        )
        message.raw_output_contents.append(tensors.to_raw(array))
    return message


def add_to_server(context: Context, server: grpc.aio.Server) -> None:
    # The generated registration function carries no annotations (protoc writes none).
    register = pb_grpc.add_GRPCInferenceServiceServicer_to_server
    register(InferenceService(context), server)  # type: ignore[no-untyped-call]
