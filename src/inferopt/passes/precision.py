"""Lower-precision floats. fp16 converts the graph's float tensors and ops (ONNX Runtime's
converter), keeping fp32 inputs/outputs by default so callers need not change. bf16 stores
weights in bfloat16 with a Cast back to float32 in front of their consumers: the file halves,
and compute stays fp32 unless the CPU has bf16 kernels. Whether either is faster here is a
measurement, not a rule: on CPUs without fp16 arithmetic, fp16 graphs are usually slower."""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.transformers.float16 import convert_float_to_float16

from inferopt import hardware
from inferopt.model import Model
from inferopt.passes.base import Pass, PassContext, PassResult, Tolerance, copy_proto, toposort

# ops whose fp16 kernels ORT's CPU provider lacks or that lose too much range in fp16
FP16_BLOCKED = ("Range", "CumSum", "TopK", "NonMaxSuppression", "RoiAlign", "Resize")


def _no_fast_path_note(kind: str, context: PassContext) -> None:
    info = hardware.probe()
    fast = info.fp16_fast_path if kind == "fp16" else info.bf16_fast_path
    if not fast:
        context.notes.append(
            f"this CPU has no {kind} arithmetic ({', '.join(info.cpu_features) or 'no features'}): "
            f"{kind} ops run through conversions or slow kernels; judge by the measured latency"
        )


@dataclass(frozen=True)
class Float16(Pass):
    keep_io_types: bool = True
    name = "fp16"
    needs_weights_in_memory = True
    search = ({},)
    tolerance = Tolerance(min_cosine=0.999)

    def run(self, model: Model, context: PassContext) -> PassResult:
        _no_fast_path_note("fp16", context)
        proto = toposort(
            convert_float_to_float16(
                copy_proto(model.proto),
                keep_io_types=self.keep_io_types,
                op_block_list=list(FP16_BLOCKED),
            )
        )
        return PassResult(proto, {"keep_io_types": self.keep_io_types})


@dataclass(frozen=True)
class BFloat16Weights(Pass):
    min_elements: int = 1024  # small tensors (biases, scales) stay fp32: no size to win
    name = "bf16"
    needs_weights_in_memory = True
    search = ({},)
    tolerance = Tolerance(min_cosine=0.999)

    def run(self, model: Model, context: PassContext) -> PassResult:
        _no_fast_path_note("bf16", context)
        proto = copy_proto(model.proto)
        graph = proto.graph
        converted = 0
        for index, init in enumerate(list(graph.initializer)):
            if init.data_type != onnx.TensorProto.FLOAT:
                continue
            values = numpy_helper.to_array(init)
            if values.size < self.min_elements:
                continue
            original = init.name  # read before CopyFrom: `init` is the field being replaced
            stored = f"{original}__bf16"
            graph.initializer[index].CopyFrom(_bf16_tensor(values, stored))
            graph.node.insert(0, helper.make_node("Cast", [stored], [original], to=1))
            converted += 1
        return PassResult(proto, {"converted_initializers": converted})


def _bf16_tensor(values: np.ndarray, name: str) -> onnx.TensorProto:
    bits = values.astype(ml_dtypes.bfloat16).view(np.uint16)
    tensor = onnx.TensorProto(name=name, data_type=onnx.TensorProto.BFLOAT16)
    tensor.dims.extend(values.shape)
    tensor.raw_data = bits.tobytes()
    return tensor
