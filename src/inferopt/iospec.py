"""What goes into and out of a model: names, dtypes, shapes with symbolic dims, batch and
sequence axes. It drives dummy-input generation (profiling, parity checks) and server metadata.

The spec round-trips through the ONNX file's ``metadata_props`` so that overrides (which axis is
the sequence, the value range of token ids) survive saving and reloading.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import onnx

from inferopt.errors import InputError

METADATA_KEY = "inferopt.iospec"
Dim = int | str  # a fixed size, or the name of a symbolic dimension

_MASK_WORDS = ("mask",)  # inputs named like this get ones: random masks make meaningless inputs


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name, e.g. "float32", "int64"
    shape: tuple[Dim, ...]
    value_range: tuple[float, float] | None = None  # [low, high] for generated sample values

    @property
    def np_dtype(self) -> np.dtype[Any]:
        return np.dtype(self.dtype)

    def describe(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclass(frozen=True)
class IOSpec:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batch_axis: int | None = 0
    seq_axis: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

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

    def concrete_shape(self, spec: TensorSpec, batch: int, seq: int) -> tuple[int, ...]:
        """The shape of `spec` at this batch size and sequence length (other symbols: 1)."""
        shape = []
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int):
                shape.append(dim)
            elif axis == self.batch_axis:
                shape.append(batch)
            elif axis == self.seq_axis:
                shape.append(seq)
            else:
                shape.append(1)
        return tuple(shape)

    def sample_inputs(self, batch: int = 1, seq: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs of the right names, dtypes and shapes, within each input's value range."""
        if batch < 1 or seq < 1:
            raise InputError(f"batch and sequence length must be >= 1, got {batch} and {seq}")
        rng = np.random.default_rng(seed)
        return {t.name: sample(t, self.concrete_shape(t, batch, seq), rng) for t in self.inputs}

    def describe(self) -> list[str]:
        lines = [f"input  {t.describe()}" for t in self.inputs]
        lines += [f"output {t.describe()}" for t in self.outputs]
        lines.append(f"batch axis: {self.batch_axis}, sequence axis: {self.seq_axis}")
        return lines

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> IOSpec:
        def tensor(d: dict[str, Any]) -> TensorSpec:
            vr = d.get("value_range")
            return TensorSpec(
                d["name"], d["dtype"], tuple(d["shape"]), tuple(vr) if vr is not None else None
            )

        return IOSpec(
            inputs=tuple(tensor(d) for d in data["inputs"]),
            outputs=tuple(tensor(d) for d in data["outputs"]),
            batch_axis=data.get("batch_axis"),
            seq_axis=data.get("seq_axis"),
            extra=dict(data.get("extra", {})),
        )


def sample(spec: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random values for `spec` at `shape`: masks are ones, others within the value range."""
    dtype = spec.np_dtype
    if any(word in spec.name.lower() for word in _MASK_WORDS):
        return np.ones(shape, dtype=dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        low, high = spec.value_range or (0, 100)
        return rng.integers(int(low), int(high) + 1, size=shape).astype(dtype)
    if spec.value_range is not None:
        low, high = spec.value_range
        return rng.uniform(low, high, size=shape).astype(dtype)
    return rng.standard_normal(size=shape).astype(dtype)


def _value_info_spec(value: onnx.ValueInfoProto, index: int) -> TensorSpec:
    ttype = value.type.tensor_type
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type)).name
    shape: list[Dim] = []
    for axis, d in enumerate(ttype.shape.dim):
        if d.HasField("dim_value"):
            shape.append(int(d.dim_value))
        else:
            shape.append(d.dim_param or f"{value.name}_dim{axis}_{index}")
    return TensorSpec(value.name, dtype, tuple(shape))


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
