"""`Model`: an ONNX graph with its IOSpec and provenance (where it came from, what was done to
it). Transformations return a new Model; the ONNX file carries the spec and the provenance in
its metadata, so a saved model explains itself."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from inferopt import external
from inferopt import iospec as iospec_mod
from inferopt.compat import modernize
from inferopt.errors import ModelLoadError
from inferopt.iospec import IOSpec, needs_discovery
from inferopt.parity import ParityReport
from inferopt.runtime import SessionConfig, create_session

PROVENANCE_KEY = "inferopt.provenance"


@dataclass(frozen=True)
class Provenance:
    source: str  # what the user gave: a path, a zoo name, a module's class name
    kind: str  # "onnx" | "torch" | "huggingface" | "zoo"
    exporter: str | None = None  # "dynamo" | "torchscript" when exported from PyTorch
    exporter_note: str | None = None  # why a fallback exporter was used
    parity: ParityReport | None = None
    steps: tuple[dict[str, Any], ...] = ()  # transformations applied, in order, with options

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["parity"] = self.parity.to_json() if self.parity else None
        return data

    @staticmethod
    def from_json(data: dict[str, Any]) -> Provenance:
        parity = data.get("parity")
        return Provenance(
            source=data["source"],
            kind=data["kind"],
            exporter=data.get("exporter"),
            exporter_note=data.get("exporter_note"),
            parity=ParityReport.from_json(parity) if parity else None,
            steps=tuple(data.get("steps", ())),
        )


@dataclass(frozen=True)
class Model:
    proto: onnx.ModelProto
    io: IOSpec
    provenance: Provenance
    _session_cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        return Path(self.provenance.source).stem or "model"

    @property
    def size_bytes(self) -> int:
        """Bytes of the model as saved: its graph, and its external data files if it has any."""
        on_disk = external.external_bytes(self.proto)
        if not external.fits(self.proto):  # built by hand: ByteSize() would fail over 2 GiB
            return external.inline_bytes(self.proto) + on_disk
        return int(self.proto.ByteSize()) + on_disk

    @property
    def data_dir(self) -> Path | None:
        """The folder this model's weights are read from, when they stay on disk (a model
        over 2 GiB, see inferopt.external); None when they are all in `proto`."""
        return external.data_dir(self.proto)

    def __reduce__(self) -> tuple[type[Model], tuple[Any, ...]]:
        """Pickled as its graph, IOSpec and provenance (for Ray tasks, subprocesses): the
        cached ONNX Runtime sessions cannot be pickled, and are made again where it runs."""
        return type(self), (self.proto, self.io, self.provenance)

    def with_io(self, io: IOSpec) -> Model:
        return replace(self, io=io)  # same graph, so its sessions stay valid and shared

    def session(self, config: SessionConfig | None = None) -> Any:
        """A (cached) ONNX Runtime session for this model under `config`."""
        config = config or SessionConfig()
        key = repr(config)
        if key not in self._session_cache:
            self._session_cache[key] = create_session(self.proto, config, label=self.name)
        return self._session_cache[key]

    def run(
        self, feeds: dict[str, np.ndarray], config: SessionConfig | None = None
    ) -> dict[str, np.ndarray]:
        """Outputs by name. Float feeds are cast to the float type each input declares, so
        the same feeds run a model whose inputs became float16 (fp16:keep_io_types=false)."""
        session = self.session(config)
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, _cast_floats(session, feeds)), strict=True))

    def with_found_inputs(
        self, shapes: dict[str, tuple[int, ...]] | None = None, *, adapt_axes: bool = True
    ) -> Model:
        """This model with the inputs it accepts found from its graph and by running it
        (see inferopt.discovery); `shapes` are sizes the user stated (--input-shape)."""
        from inferopt import discovery

        runner = discovery.session_runner(self.session())
        found = discovery.discover(runner, self.proto, self.io, shapes, adapt_axes=adapt_axes)
        return self.with_io(found.io)

    def save(self, path: str | Path) -> Path:
        """Write the model with its IOSpec and provenance in the file's metadata. Weights kept
        on disk are copied beside it (one data file becomes `<name>.data`); a graph too
        large for one protobuf writes its weights there too."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        proto = self.stamped_proto()
        folder = self.data_dir
        if folder is not None:
            external.copy_beside(proto, folder, path)
            onnx.save_model(proto, str(path))
            return path
        large = not external.fits(proto)
        onnx.save_model(proto, str(path), save_as_external_data=large, location=f"{path.name}.data")
        return path

    def stamped_proto(self) -> onnx.ModelProto:
        """A copy of the proto with the IOSpec and provenance in its metadata, as saved.
        Weights kept on disk stay references (relative to `data_dir`)."""
        proto = onnx.ModelProto()
        proto.CopyFrom(self.proto)
        external.set_data_dir(proto, None)  # where this process finds them, not the model's
        iospec_mod.attach(proto, self.io)
        iospec_mod.set_metadata(proto, PROVENANCE_KEY, json.dumps(self.provenance.to_json()))
        return proto


_FLOAT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}


def _cast_floats(session: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    wanted = {i.name: _FLOAT_TYPES.get(i.type) for i in session.get_inputs()}
    cast = {}
    for name, value in feeds.items():
        dtype = wanted.get(name)
        is_float = isinstance(value, np.ndarray) and value.dtype.kind == "f"
        cast[name] = value.astype(dtype) if dtype and is_float and value.dtype != dtype else value
    return cast


def _read_provenance(proto: onnx.ModelProto, default: Provenance) -> Provenance:
    for prop in proto.metadata_props:
        if prop.key == PROVENANCE_KEY:
            return Provenance.from_json(json.loads(prop.value))
    return default


def from_proto(proto: onnx.ModelProto, provenance: Provenance, *, verify: bool = True) -> Model:
    """Wrap a proto; with `verify`, check it and make sure ONNX Runtime can load it. A proto
    holding more weights than protobuf can serialize has them moved to a data file first
    (in place, see inferopt.external.spill)."""
    if not external.fits(proto):
        external.spill(proto)
    proto = modernize(proto)  # old IR rules the graph passes cannot keep (see compat)
    sessions: dict[str, Any] = {}
    if verify:
        _check(proto, provenance.source)
        # Loading it in ONNX Runtime is the check; keep the session for the model's first run.
        config = SessionConfig()
        sessions[repr(config)] = create_session(proto, config, label=provenance.source)
    return Model(proto, iospec_mod.from_onnx(proto), provenance, sessions)


def load_onnx(
    path: str | Path, *, verify: bool = True, shapes: dict[str, tuple[int, ...]] | None = None
) -> Model:
    """Read an .onnx file (with its external-data files beside it). Weights that would not
    fit in one protobuf (over 2 GiB) stay in their files, read by ONNX Runtime from there
    (see inferopt.external). With `verify`, a model from elsewhere (no inferopt metadata)
    gets the inputs it accepts found by running it; `shapes` are input sizes the user
    stated (--input-shape)."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except DecodeError as exc:
        raise ModelLoadError(f"{path}: not an ONNX model (protobuf parse failed: {exc})") from exc
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot read it as ONNX: {exc}") from exc
    external.open_data(proto, path.parent, str(path))
    provenance = _read_provenance(proto, Provenance(source=str(path), kind="onnx"))
    model = from_proto(proto, provenance, verify=verify)
    if verify and (shapes or needs_discovery(model.io)):
        model = model.with_found_inputs(shapes)
    return model


def _check(proto: onnx.ModelProto, source: str) -> None:
    if not proto.HasField("graph") or not proto.ir_version:
        raise ModelLoadError(f"{source}: not an ONNX model (no graph or IR version)")
    folder = external.data_dir(proto)
    checked: onnx.ModelProto | None = proto
    if folder is not None:
        external.check_files(proto, folder, source)
        checked = external.checkable(proto)
    if checked is None:
        return  # ONNX Runtime's load is the check
    try:
        # full_check runs shape inference too, which catches many truncated/corrupt graphs.
        onnx.checker.check_model(checked, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelLoadError(f"{source}: invalid ONNX model: {first}") from exc
