"""Size and parameters: what the model file holds, by element type."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator

import numpy as np
import onnx
import onnx_ir as ir

from inferopt.model import Model
from inferopt.report.schema import SizeFigures


def size_figures(model: Model) -> SizeFigures:
    """Size as saved (the graph and any external-data files), and parameters (initializers
    and Constant tensors) by element type, counted from shapes: weights kept on disk are not
    read."""
    count: Counter[str] = Counter()
    size: Counter[str] = Counter()
    for tensor in _parameters(model.proto.graph):
        dtype = ir.DataType(tensor.data_type)
        elements = math.prod(tensor.dims)
        count[_dtype_name(dtype)] += elements
        size[_dtype_name(dtype)] += math.ceil(elements * dtype.itemsize)
    return SizeFigures(
        serialized_bytes=model.size_bytes,
        parameters=sum(count.values()),
        parameters_by_dtype=dict(count.most_common()),
        bytes_by_dtype=dict(size.most_common()),
    )


def _parameters(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        if node.op_type == "Constant":
            yield from (a.t for a in node.attribute if a.name == "value")


def _dtype_name(dtype: ir.DataType) -> str:
    """numpy's name where numpy has the type ("float32", "int8"), else ONNX's ("bfloat16")."""
    try:
        return np.dtype(dtype.numpy()).name
    except TypeError:
        return dtype.name.lower()
