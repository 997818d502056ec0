"""Bring models written under old ONNX IR rules up to the rules every graph pass assumes.

IR version 3 and earlier require every initializer to be listed among the graph's inputs too
(ONNX IR.md; the ONNX checker enforces it, "in initializer but not in graph input"). IR
version 4 lifted that rule (onnx/onnx#1449, #2115): an initializer that is not an input is a
constant, and one that is also an input is an input with a default value. onnx-ir and
onnxscript, which the graph passes are built on, write IR>=4 graphs: a weight they fold or
create becomes an initializer that is not an input, which an IR-3 model may not have.
"""

from __future__ import annotations

import onnx

# The first IR version in which an initializer need not be a graph input.
CONSTANT_INITIALIZERS_IR = 4


def modernize(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model under IR version 4 if it was written under 3 or earlier; else `proto` itself.

    What changes: `ir_version` becomes 4, and the main graph's inputs that name an initializer
    are dropped, so each initializer becomes a plain constant. Why that keeps the model's
    meaning: under IR<=3 those inputs were listed only because the IR demanded it, and ONNX
    Runtime treats every initializer of an IR<=3 model as a constant that no feed may replace
    (its C API docs, `Graph_GetInitializers`: "For ONNX IR version < 4, all initializers are
    constant"). Kept as inputs under IR 4 they would become overridable inputs with defaults,
    which ONNX Runtime and onnxscript then may not fold or fuse. inferopt's IOSpec already
    leaves initializers out of a model's inputs, so the model's signature is unchanged.

    The opsets are not touched: IR and opset versions are independent (ONNX Versioning.md),
    and ONNX Runtime runs an IR-4 model at any opset it runs under IR 3. Models from IR>=4
    are returned as they are: there an initializer that is also an input keeps meaning an
    input with a default. A model without opset imports (IR<3) is left alone too, since IR>=3
    requires them.
    """
    if proto.ir_version >= CONSTANT_INITIALIZERS_IR or not proto.opset_import:
        return proto
    new = onnx.ModelProto()
    new.CopyFrom(proto)
    new.ir_version = CONSTANT_INITIALIZERS_IR
    # Only the main graph: a subgraph's inputs are bound by position to its node's operands,
    # so no exporter lists a subgraph's initializers among them.
    constants = {init.name for init in new.graph.initializer}
    kept = [value for value in new.graph.input if value.name not in constants]
    del new.graph.input[:]
    new.graph.input.extend(kept)
    return new


def map_types(proto: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """The main graph's outputs and value_info whose type holds a map (ZipMap's class
    probabilities, `seq(map(int64, float))`), by name. onnx-ir, which the graph passes and the
    FLOP count read models with, has no map type yet."""
    found = {}
    for value in (*proto.graph.output, *proto.graph.value_info):
        if _has_map(value.type):
            found[value.name] = value.type
    return found


def _has_map(tp: onnx.TypeProto) -> bool:
    which = tp.WhichOneof("value")
    if which == "map_type":
        return True
    if which == "sequence_type":
        return _has_map(tp.sequence_type.elem_type)
    if which == "optional_type":
        return _has_map(tp.optional_type.elem_type)
    return False


def without_types(proto: onnx.ModelProto, names: dict[str, onnx.TypeProto]) -> onnx.ModelProto:
    """A copy with the types of `names` left out (a value without a declared type is valid to
    ONNX Runtime and onnx-ir, which infer it), so onnx-ir can read the rest of the graph."""
    new = onnx.ModelProto()
    new.CopyFrom(proto)
    for value in (*new.graph.output, *new.graph.value_info):
        if value.name in names:
            value.ClearField("type")
    return new


def with_types(proto: onnx.ModelProto, types: dict[str, onnx.TypeProto]) -> onnx.ModelProto:
    """`proto` with the graph outputs named in `types` given those types back (in place)."""
    for value in proto.graph.output:
        if value.name in types and not value.type.WhichOneof("value"):
            value.type.CopyFrom(types[value.name])
    return proto
