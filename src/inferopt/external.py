"""Weights kept on disk: models whose tensors live in external-data files beside the graph.

Protobuf cannot serialize a message over 2 GiB, so ONNX stores larger models' tensors in
separate files: each such tensor names a file (relative to the .onnx file's folder), an offset
and a length (ONNX's external-data format, onnx/docs/ExternalData.md). inferopt keeps those
weights where they are: a Model's proto holds the graph and the references only, and the
folder the references are relative to is recorded in the proto's own metadata under
`DATA_DIR_KEY`. So wherever the proto goes (a pass, a new session, a search candidate) its
weights can be found, and ONNX Runtime maps them from that folder instead of receiving a
serialized copy. The key describes this process's files, not the model: `Model.save` never
writes it, and `load_onnx` replaces whatever a file carries.

A proto that holds more than protobuf can serialize (a module exported from PyTorch, say) has
its large tensors moved out (`spill`) to a folder removed when the process exits.
"""

from __future__ import annotations

import atexit
import errno
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
from onnx import helper
from onnx.external_data_helper import (
    convert_model_to_external_data,
    load_external_data_for_model,
    load_external_data_for_tensor,
    write_external_data_tensors,
)

from inferopt.errors import ModelLoadError

DATA_DIR_KEY = "inferopt.data_dir"
PROTOBUF_LIMIT = 2**31 - 1  # bytes; protobuf refuses to serialize a larger message
# Room left under the limit for everything in a graph that is not tensor data (nodes, names,
# shapes): tens of MiB even for graphs of a hundred thousand nodes.
_STRUCTURE_ROOM = 64 * 2**20
_SPILL_FILE = "weights.data"
# Tensors smaller than this stay in (or are read into) the graph even when the weights stay on
# disk: shapes, scalars, biases and norms, which ONNX Runtime's shape inference, constant
# folding (onnxscript folds inputs of up to 8192 elements) and our graph analyses read, often
# through code that cannot know the data folder. Their total is capped by _SMALL_BUDGET.
SMALL_BYTES = 64 * 2**10
_SMALL_BUDGET = 256 * 2**20
_COPY_CHUNK = 64 * 2**20


def tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model: initializers, sparse initializers, node attributes, in the
    main graph, its subgraphs and its functions."""
    yield from _graph_tensors(proto.graph)
    for function in proto.functions:
        for node in function.node:
            yield from _node_tensors(node)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for graph in attr.graphs:
            yield from _graph_tensors(graph)


def is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def has_external_data(proto: onnx.ModelProto) -> bool:
    return any(is_external(t) for t in tensors(proto))


def tensor_bytes(tensor: onnx.TensorProto) -> int:
    """The bytes of a tensor's values, from its type and shape (strings: their lengths);
    never reads the data, so it costs nothing for a 2 GiB tensor."""
    if is_external(tensor):
        length = _entries(tensor).get("length")
        if length is not None:
            return int(length)
    if tensor.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in tensor.string_data)
    try:
        itemsize = ir.DataType(tensor.data_type).itemsize
    except ValueError:  # an undefined or unknown type: no values to count
        return 0
    return math.ceil(math.prod(tensor.dims) * itemsize)


def inline_bytes(proto: onnx.ModelProto) -> int:
    """Bytes of tensor values held inside the proto itself."""
    return sum(tensor_bytes(t) for t in tensors(proto) if not is_external(t))


def external_bytes(proto: onnx.ModelProto) -> int:
    """Bytes of tensor values the proto refers to in external-data files."""
    return sum(tensor_bytes(t) for t in tensors(proto) if is_external(t))


def fits(proto: onnx.ModelProto, extra: int = 0) -> bool:
    """Whether the proto (with `extra` more bytes of tensor data) can be serialized. Counted
    from shapes: `ByteSize()` would encode the whole message to find out, and fail over 2 GiB."""
    return inline_bytes(proto) + extra <= PROTOBUF_LIMIT - _STRUCTURE_ROOM


def data_dir(proto: onnx.ModelProto) -> Path | None:
    """The folder the proto's external data is relative to, or None: all its data is inside."""
    for prop in proto.metadata_props:
        if prop.key == DATA_DIR_KEY:
            return Path(prop.value)
    return None


def set_data_dir(proto: onnx.ModelProto, folder: Path | None) -> None:
    """Record (None: forget) where the proto's external data is; changes `proto` in place."""
    kept = [p for p in proto.metadata_props if p.key != DATA_DIR_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    if folder is not None:
        proto.metadata_props.add(key=DATA_DIR_KEY, value=str(Path(folder).resolve()))


def open_data(proto: onnx.ModelProto, folder: Path, source: str) -> None:
    """Make the proto, just read from a file in `folder`, refer to its weights where they
    are: check every data file, then load the data into the proto if the whole fits in one
    protobuf (as every small model always was), else record the folder (see data_dir) and
    load only its small tensors (see SMALL_BYTES).

    Raises ModelLoadError when a data file is missing, unsafe or too short."""
    set_data_dir(proto, None)  # a key saved by some other tool describes some other machine
    if not has_external_data(proto):
        return
    check_files(proto, folder, source)
    if fits(proto, external_bytes(proto)):
        try:
            load_external_data_for_model(proto, str(folder))
        except (onnx.checker.ValidationError, OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise ModelLoadError(f"{source}: cannot read its external data: {first}") from exc
    else:
        set_data_dir(proto, folder)
        _load_small(proto, folder)


def _load_small(proto: onnx.ModelProto, folder: Path) -> None:
    """Read the external tensors under SMALL_BYTES into the proto, smallest first, up to
    _SMALL_BUDGET bytes in all (and never past what one protobuf can carry)."""
    small = [t for t in tensors(proto) if is_external(t) and tensor_bytes(t) < SMALL_BYTES]
    room = PROTOBUF_LIMIT - _STRUCTURE_ROOM - inline_bytes(proto)
    budget = min(_SMALL_BUDGET, room)
    for tensor in sorted(small, key=tensor_bytes):
        budget -= tensor_bytes(tensor)
        if budget < 0:
            return
        load_external_data_for_tensor(tensor, str(folder))
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def locations(proto: onnx.ModelProto) -> list[str]:
    """The external-data files the proto refers to, relative to its data folder, in order."""
    found = {_entries(t).get("location", ""): None for t in tensors(proto) if is_external(t)}
    return list(found)


def check_files(proto: onnx.ModelProto, folder: Path, source: str) -> None:
    """Raise ModelLoadError unless every external tensor's file is a regular file inside
    `folder` (no absolute paths, `..` or links: a model from elsewhere must not make us read
    other files) and long enough for the tensor's offset and length."""
    sizes: dict[str, int] = {}
    for tensor in tensors(proto):
        if not is_external(tensor):
            continue
        entries = _entries(tensor)
        location = entries.get("location", "")
        if location not in sizes:
            sizes[location] = _data_file_size(folder, location, tensor.name, source)
        try:
            end = int(entries.get("offset", 0)) + tensor_bytes(tensor)
        except ValueError:  # not a number: a corrupt or hand-edited file
            raise ModelLoadError(
                f"{source}: cannot read its external data: tensor {tensor.name!r} has an "
                f"offset or length that is not a number"
            ) from None
        if end > sizes[location]:
            raise ModelLoadError(
                f"{source}: cannot read its external data: tensor {tensor.name!r} needs bytes "
                f"up to {end} of {location}, which has {sizes[location]}"
            )


def _data_file_size(folder: Path, location: str, name: str, source: str) -> int:
    relative = Path(location)
    why = None
    if not location or relative.is_absolute() or ".." in relative.parts:
        why = f"its location {location!r} is not a path inside the model's folder"
    elif (folder / relative).is_symlink():
        why = f"{location} is a symbolic link"
    elif not (folder / relative).is_file():
        why = f"{location} is missing from {folder}"
    if why is not None:
        raise ModelLoadError(f"{source}: cannot read its external data (tensor {name!r}): {why}")
    return (folder / relative).stat().st_size


def _entries(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def spill(proto: onnx.ModelProto) -> None:
    """Move the proto's tensors of SMALL_BYTES or more into a data file in a folder of their
    own, removed when this process exits; changes `proto` in place (see data_dir).

    Raises ModelLoadError when the proto already refers to external data of its own: one
    proto has one data folder."""
    if has_external_data(proto):
        raise ModelLoadError(
            "the model holds over 2 GiB of weights in its graph besides external data; "
            "save it with all weights as external data first"
        )
    folder = Path(tempfile.mkdtemp(prefix="inferopt-weights-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    convert_model_to_external_data(proto, location=_SPILL_FILE, size_threshold=SMALL_BYTES)
    write_external_data_tensors(proto, str(folder))
    set_data_dir(proto, folder)


def scratch_dir() -> Path:
    """A new folder for weights a step writes (ONNX Runtime's optimized model, say), removed
    when this process exits: the model using them may outlive the step."""
    folder = Path(tempfile.mkdtemp(prefix="inferopt-weights-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def copy_beside(proto: onnx.ModelProto, folder: Path, path: Path) -> None:
    """Copy the data files `proto` refers to (in `folder`) beside `path`, where its graph is
    about to be written, and point `proto` at the copies. A single data file is named after
    the model (`model.onnx.data`, as ONNX writes it), so two models saved side by side never
    share one; several keep their names. Holes in sparse files stay holes."""
    names = locations(proto)
    renamed = {names[0]: f"{path.name}.data"} if len(names) == 1 else {n: n for n in names}
    for old, new in renamed.items():
        copy_file(folder / old, path.parent / new)
    for tensor in tensors(proto):
        if is_external(tensor):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = renamed[entry.value]


def copy_file(source: Path, target: Path) -> None:
    """Copy `source` to `target` (nothing to do when they are the same file), reading only
    the parts that hold data: a sparse file's holes are skipped, not written as zeros. The
    copy replaces `target` only once complete, so a session still mapping the old file (or
    a killed run) never sees a half-written one."""
    if target.exists() and os.path.samefile(source, target):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    try:
        with open(source, "rb") as src, open(partial, "wb") as dst:
            size = os.fstat(src.fileno()).st_size
            for start, end in _data_ranges(src.fileno(), size):
                _copy_range(src.fileno(), dst.fileno(), start, end)
            dst.truncate(size)  # the trailing hole, if any
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def _data_ranges(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each part of the file that holds data, by SEEK_DATA / SEEK_HOLE; the
    whole file where the file system cannot tell."""
    if not hasattr(os, "SEEK_DATA"):
        yield 0, size
        return
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: only a hole is left
                yield offset, size
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        offset = end


def _copy_range(src: int, dst: int, start: int, end: int) -> None:
    """In the kernel where it can (no copy passes through this process's memory)."""
    offset = start
    while offset < end:
        count = min(_COPY_CHUNK, end - offset)
        try:
            done = os.copy_file_range(src, dst, count, offset, offset)
        except (AttributeError, OSError):  # not Linux, or across file systems on old kernels
            done = os.pwrite(dst, os.pread(src, count, offset), offset)
        if done == 0:
            raise OSError(f"the data file shrank while it was copied (at byte {offset})")
        offset += done


def checkable(proto: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy of a proto with external data that onnx.checker can check without the data:
    its external initializers become graph inputs of the same type and shape (the checker
    would look for their files beside the current directory). None when external tensors sit
    elsewhere than among the main graph's initializers; ONNX Runtime's load then checks it."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    graph = copy.graph
    outside = [t for t in graph.initializer if is_external(t)]
    if sum(1 for t in tensors(copy) if is_external(t)) != len(outside):
        return None
    kept = [t for t in graph.initializer if not is_external(t)]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    listed = {value.name for value in graph.input}
    graph.input.extend(
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        for t in outside
        if t.name not in listed
    )
    return copy


def to_ir(proto: onnx.ModelProto) -> ir.Model:
    """The proto as an onnx-ir model whose external tensors read from the data folder (lazily,
    memory-mapped); serializing it back keeps them external, and keeps DATA_DIR_KEY."""
    model = ir.serde.deserialize_model(proto)
    folder = data_dir(proto)
    if folder is not None:
        ir.external_data.set_base_dir(model.graph, folder)
    return model
