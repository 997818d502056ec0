"""What goes into and out of a model: names, dtypes, shapes with symbolic dims, batch and
sequence axes, and what each input is (ids into a table, a mask, a scalar, a recurrent state).
It drives generated inputs (profiling, parity checks, pass verification, warm-up) and server
metadata. `inferopt.discovery` fills in what the graph tells and running the model confirms.

The spec round-trips through the ONNX file's ``metadata_props`` so that what was found or
stated (which axis is the sequence, the range of token ids, an image's size) survives saving
and reloading.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import onnx

from inferopt.errors import InputError

METADATA_KEY = "inferopt.iospec"
FOUND_KEY = "inputs_found"  # IOSpec.extra: what discovery found, or why no input ran
Dim = int | str  # a fixed size, or the name of a symbolic dimension

# How a generated value is made. values: random within value_range (else standard normal);
# ids: integers within value_range (indices into a table); mask: every position valid;
# scalar: a rank-0 setting (a sample rate, say), within value_range; state: zeros, the initial
# state of a recurrent model.
Role = Literal["values", "ids", "mask", "scalar", "state"]
_MASK_WORDS = ("mask",)  # random masks make meaningless inputs: masks are generated valid
TEXT_DTYPE = "object"  # ONNX strings, and outputs that are not tensors (sequences, maps)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name, e.g. "float32", "int64"; "object" for strings and non-tensors
    shape: tuple[Dim, ...]
    value_range: tuple[float, float] | None = None  # [low, high] for generated sample values
    role: Role = "values"
    # A mask's value at a padded position: 0 where 1/True marks a real token (Hugging Face's
    # attention_mask), 1 where True marks padding (PyTorch's key_padding_mask).
    pad_value: float = 0.0
    kind: str = "tensor"  # or the ONNX type of a non-tensor output, e.g. "seq(map(int64,float))"

    @property
    def is_tensor(self) -> bool:
        return self.kind == "tensor"

    @property
    def np_dtype(self) -> np.dtype[Any]:
        return np.dtype(self.dtype)

    def describe(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        if not self.is_tensor:
            return f"{self.name}: {self.kind}"
        text = f"{self.name}: {self.dtype}[{dims}]"
        if self.role == "mask":
            mark = "True" if self.dtype == "bool" else "1"
            return (
                f"{text} (mask: {mark} marks {'padding' if self.pad_value else 'a real position'})"
            )
        if self.value_range is not None and self.role in ("ids", "scalar"):
            low, high = self.value_range
            values = f"{low:g}" if low == high else f"{low:g}..{high:g}"
            return f"{text} ({self.role} {values})"
        return text if self.role == "values" else f"{text} ({self.role})"


@dataclass(frozen=True)
class IOSpec:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batch_axis: int | None = 0
    seq_axis: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Tensors whose batch axis is not `batch_axis`: a recurrent state [2, batch, 128] has 1, a
    # scalar None (one value for the whole batch).
    batch_axes: dict[str, int | None] = field(default_factory=dict)
    # Sizes for free dims that are neither batch nor sequence (an image's height and width, an
    # audio window), by dim name: found by running the model, or stated by the user.
    dims: dict[str, int] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise InputError(f"model has no input named {name!r}; inputs are {self.input_names}")

    def with_axes(self, batch_axis: int | None, seq_axis: int | None) -> IOSpec:
        return replace(self, batch_axis=batch_axis, seq_axis=seq_axis)

    def with_value_ranges(self, ranges: dict[str, tuple[float, float]]) -> IOSpec:
        inputs = tuple(
            replace(t, value_range=ranges[t.name]) if t.name in ranges else t for t in self.inputs
        )
        return replace(self, inputs=inputs)

    def with_inputs(self, inputs: tuple[TensorSpec, ...]) -> IOSpec:
        return replace(self, inputs=inputs)

    def with_dtypes_of(self, other: IOSpec) -> IOSpec:
        """This spec with the dtypes `other` declares for the same names (a pass that turns a
        model's float32 inputs into float16 keeps everything else about them)."""

        def update(
            specs: tuple[TensorSpec, ...], new: tuple[TensorSpec, ...]
        ) -> tuple[TensorSpec, ...]:
            dtypes = {t.name: t.dtype for t in new}
            return tuple(replace(t, dtype=dtypes.get(t.name, t.dtype)) for t in specs)

        return replace(
            self,
            inputs=update(self.inputs, other.inputs),
            outputs=update(self.outputs, other.outputs),
        )

    @property
    def tensor_outputs(self) -> tuple[TensorSpec, ...]:
        """The outputs that are tensors (sequences and maps cannot be compared or batched)."""
        return tuple(t for t in self.outputs if t.is_tensor)

    def batch_axis_of(self, name: str) -> int | None:
        """The batch axis of the input or output `name` (None: it has none)."""
        return self.batch_axes.get(name, self.batch_axis)

    def seq_axis_of(self, spec: TensorSpec) -> int | None:
        """The sequence axis of `spec`, if it has one (a free dim at the model's seq axis)."""
        axis = self.seq_axis
        if axis is None or spec.name in self.batch_axes or len(spec.shape) <= axis:
            return None
        return axis if isinstance(spec.shape[axis], str) else None

    def concrete_shape(self, spec: TensorSpec, batch: int, seq: int) -> tuple[int, ...]:
        """The shape of `spec` at this batch size and sequence length; other free dims take
        their size from `dims`, else 1."""
        batch_axis, seq_axis = self.batch_axis_of(spec.name), self.seq_axis_of(spec)
        shape = []
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int):
                shape.append(dim)
            elif axis == batch_axis:
                shape.append(batch)
            elif axis == seq_axis:
                shape.append(seq)
            else:
                shape.append(self.dims.get(dim, 1))
        return tuple(shape)

    def sample_inputs(
        self,
        batch: int = 1,
        seq: int = 16,
        seed: int = 0,
        lengths: tuple[int, ...] | None = None,
    ) -> dict[str, np.ndarray]:
        """Generated inputs of the right names, dtypes and shapes that the model accepts: ids
        within their table, valid masks, scalars and states as found (see `Role`).

        `lengths` (one per row, each <= `seq`) makes a right-padded batch: positions past a
        row's length hold the input's pad value (a mask's padding mark, else 0). Raises
        InputError for sizes below 1 or lengths that do not fit."""
        if batch < 1 or seq < 1:
            raise InputError(f"batch and sequence length must be >= 1, got {batch} and {seq}")
        if problem := problem_of(self):  # see inferopt.discovery
            raise InputError(problem)
        if lengths is not None and (
            len(lengths) != batch or not all(0 < n <= seq for n in lengths)
        ):
            raise InputError(f"lengths {list(lengths)} do not fit {batch} rows of length {seq}")
        rng = np.random.default_rng(seed)
        feeds = {}
        for t in self.inputs:
            values = sample(t, self.concrete_shape(t, batch, seq), rng)
            if lengths is not None:
                values = _pad_tail(values, t, self, lengths)
            feeds[t.name] = values
        return feeds

    def describe(self) -> list[str]:
        lines = [f"input  {t.describe()}" for t in self.inputs]
        lines += [f"output {t.describe()}" for t in self.outputs]
        axes = f"batch axis: {self.batch_axis}, sequence axis: {self.seq_axis}"
        if self.batch_axes:
            axes += ", except " + ", ".join(f"{k}: {v}" for k, v in self.batch_axes.items())
        lines.append(axes)
        if self.dims:
            lines.append("sizes: " + ", ".join(f"{k}={v}" for k, v in self.dims.items()))
        return lines

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> IOSpec:
        def tensor(d: dict[str, Any]) -> TensorSpec:
            vr = d.get("value_range")
            return TensorSpec(
                d["name"],
                d["dtype"],
                tuple(d["shape"]),
                tuple(vr) if vr is not None else None,
                d.get("role", "values"),
                float(d.get("pad_value", 0.0)),
                d.get("kind", "tensor"),
            )

        return IOSpec(
            inputs=tuple(tensor(d) for d in data["inputs"]),
            outputs=tuple(tensor(d) for d in data["outputs"]),
            batch_axis=data.get("batch_axis"),
            seq_axis=data.get("seq_axis"),
            extra=dict(data.get("extra", {})),
            batch_axes=dict(data.get("batch_axes", {})),
            dims=dict(data.get("dims", {})),
        )


def sample(spec: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Values for `spec` at `shape`, made as its role says (see `Role`)."""
    dtype = spec.np_dtype
    if spec.role == "mask":
        return np.full(shape, 1 - spec.pad_value).astype(dtype)
    if spec.role == "state":
        return np.zeros(shape, dtype=dtype)
    if dtype == np.object_:
        words = np.array(["alpha", "beta", "gamma", "delta"], dtype=np.object_)
        return rng.choice(words, size=shape)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        low, high = spec.value_range or (0, 100)
        return rng.integers(int(low), int(high) + 1, size=shape).astype(dtype)
    if spec.value_range is not None:
        low, high = spec.value_range
        return rng.uniform(low, high, size=shape).astype(dtype)
    return rng.standard_normal(size=shape).astype(dtype)


def with_found(io: IOSpec, trials: int, problem: str | None) -> IOSpec:
    """`io` recording what discovery found: the runs it took, and why no input ran (None)."""
    return replace(io, extra={**io.extra, FOUND_KEY: {"trials": trials, "problem": problem}})


def problem_of(io: IOSpec) -> str | None:
    """Why generated inputs do not run for this model, if discovery found none."""
    found = io.extra.get(FOUND_KEY)
    problem = found.get("problem") if isinstance(found, dict) else None
    return str(problem) if problem else None


def needs_discovery(io: IOSpec) -> bool:
    """Whether inputs were never looked for (a model from elsewhere, or an older file)."""
    return FOUND_KEY not in io.extra


def suspect_input(io: IOSpec) -> str | None:
    """The input most likely to make a model's outputs non-finite on generated values: a
    mask (all padding gives a softmax of nothing), then ids, then a scalar setting."""
    for role in ("mask", "ids", "scalar"):
        spec = next((t for t in io.inputs if t.role == role), None)
        if spec is not None:
            return f"{role} {spec.name!r} ({spec.describe()})"
    return None


def pad_value_of(spec: TensorSpec) -> float:
    """What a padded position of `spec` holds: a mask's padding mark, else 0."""
    return spec.pad_value if spec.role == "mask" else 0.0


def _pad_tail(
    values: np.ndarray, spec: TensorSpec, io: IOSpec, lengths: tuple[int, ...]
) -> np.ndarray:
    batch_axis, seq_axis = io.batch_axis_of(spec.name), io.seq_axis_of(spec)
    if batch_axis is None or seq_axis is None:
        return values
    values = values.copy()
    for row, length in enumerate(lengths):
        index: list[Any] = [slice(None)] * values.ndim
        index[batch_axis], index[seq_axis] = row, slice(length, None)
        values[tuple(index)] = pad_value_of(spec)
    return values


def _type_text(tp: onnx.TypeProto) -> str:
    """An ONNX type as text, e.g. seq(map(int64,tensor(float)))."""
    which = tp.WhichOneof("value")
    if which == "tensor_type":
        return f"tensor({onnx.helper.tensor_dtype_to_np_dtype(tp.tensor_type.elem_type).name})"
    if which == "sequence_type":
        return f"seq({_type_text(tp.sequence_type.elem_type)})"
    if which == "map_type":
        key = onnx.helper.tensor_dtype_to_np_dtype(tp.map_type.key_type).name
        return f"map({key},{_type_text(tp.map_type.value_type)})"
    if which == "optional_type":
        return f"optional({_type_text(tp.optional_type.elem_type)})"
    return which or "unknown"


def _value_info_spec(value: onnx.ValueInfoProto, index: int) -> TensorSpec:
    tp = value.type
    if tp.WhichOneof("value") == "optional_type":  # an optional tensor: its element's spec
        tp = tp.optional_type.elem_type
    if tp.WhichOneof("value") != "tensor_type" or not tp.tensor_type.elem_type:
        # A sequence or map (ZipMap's class probabilities, say): one element per batch row.
        return TensorSpec(
            value.name, TEXT_DTYPE, (f"{value.name}_dim0_{index}",), kind=_type_text(tp)
        )
    ttype = tp.tensor_type
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type)).name
    shape: list[Dim] = []
    for axis, d in enumerate(ttype.shape.dim):
        # ONNX Runtime reads a declared size of -1 or 0 as "any size", as does an unnamed dim.
        if d.HasField("dim_value") and d.dim_value > 0:
            shape.append(int(d.dim_value))
        else:
            # "?" is how some converters write "unknown": not a name that ties two dims.
            named = d.dim_param if d.dim_param not in ("", "?") else None
            shape.append(named or f"{value.name}_dim{axis}_{index}")
    role: Role = "mask" if any(w in value.name.lower() for w in _MASK_WORDS) else "values"
    if not shape and role == "values":
        role = "scalar"
    # A first guess, which discovery confirms by running: a boolean mask named for padding
    # follows PyTorch (True marks padding), any other mask Hugging Face (1 marks a token).
    padding = role == "mask" and dtype == "bool" and "pad" in value.name.lower()
    return TensorSpec(value.name, dtype, tuple(shape), role=role, pad_value=float(padding))


def infer_axes(inputs: tuple[TensorSpec, ...]) -> tuple[int | None, int | None]:
    """Batch axis: 0 when every input's first dim is symbolic. Sequence axis: the first later
    axis that is symbolic in some input under a name other than the batch dim's."""
    if not inputs or not all(t.shape and isinstance(t.shape[0], str) for t in inputs):
        return None, None
    batch_names = {t.shape[0] for t in inputs}
    for t in inputs:
        for axis, dim in enumerate(t.shape[1:], start=1):
            if isinstance(dim, str) and dim not in batch_names:
                return 0, axis
    return 0, None


def from_onnx(proto: onnx.ModelProto) -> IOSpec:
    """The IOSpec stored in the model's metadata, else one read from its graph signature."""
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            return IOSpec.from_json(json.loads(prop.value))
    return from_signature(proto)


def from_signature(proto: onnx.ModelProto) -> IOSpec:
    """The IOSpec read from the graph's inputs and outputs alone (initializers that are also
    graph inputs are inputs with a default: they are left out)."""
    initializers = {i.name for i in proto.graph.initializer}
    graph_inputs = [v for v in proto.graph.input if v.name not in initializers]
    inputs = tuple(_value_info_spec(v, i) for i, v in enumerate(graph_inputs))
    outputs = tuple(_value_info_spec(v, i) for i, v in enumerate(proto.graph.output))
    batch_axis, seq_axis = infer_axes(inputs)
    return IOSpec(inputs, outputs, batch_axis, seq_axis)


def set_metadata(proto: onnx.ModelProto, key: str, value: str) -> None:
    """Set one metadata_props entry, replacing any earlier one with that key."""
    kept = [p for p in proto.metadata_props if p.key != key]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=key, value=value)


def attach(proto: onnx.ModelProto, spec: IOSpec) -> None:
    """Store `spec` in the model's metadata (replacing any earlier one)."""
    set_metadata(proto, METADATA_KEY, json.dumps(spec.to_json()))
