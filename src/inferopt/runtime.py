"""The one place ONNX Runtime sessions are created: providers, threads, optimization level,
memory arena and profiling are all chosen here, so every measurement runs the same way."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import onnx
import onnxruntime as ort

from inferopt import external
from inferopt.errors import ModelLoadError, first_line

GraphLevel = Literal["disable", "basic", "extended", "all"]
_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# Preference order when the caller asks for "best available".
_PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
# ONNX Runtime's session config keys (onnxruntime_session_options_config_keys.h).
_DATA_FOLDER = "session.model_external_initializers_file_folder_path"
_OPTIMIZED_DATA_FILE = "session.optimized_model_external_initializers_file_name"
_OPTIMIZED_DATA_MIN_BYTES = "session.optimized_model_external_initializers_min_size_in_bytes"


@dataclass(frozen=True)
class SessionConfig:
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 0  # 0: ONNX Runtime's default (one per physical core)
    inter_op_threads: int = 0
    graph_optimization: GraphLevel = "all"
    memory_arena: bool = True
    profile_prefix: str | None = None  # set to write an ONNX Runtime profile (per-op timings)
    optimized_model_path: str | None = None  # set to save the graph after ORT's optimizations
    # With optimized_model_path: the file (beside it) that gets the optimized model's weights,
    # for models over 2 GiB, whose optimized graph cannot hold them.
    optimized_model_data: str | None = None
    # ORT's pool threads spin between runs: good for back-to-back runs in one session, wasted
    # CPU in a server where many sessions and the event loop share the cores.
    allow_spinning: bool = True

    def __post_init__(self) -> None:
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ValueError("thread counts must be >= 0 (0 means ONNX Runtime's default)")
        if self.graph_optimization not in _LEVELS:
            raise ValueError(f"graph_optimization must be one of {sorted(_LEVELS)}")
        unknown = set(self.providers) - set(ort.get_available_providers())
        if unknown:
            raise ValueError(
                f"execution providers {sorted(unknown)} are not available; "
                f"this onnxruntime has {ort.get_available_providers()}"
            )


def best_providers() -> tuple[str, ...]:
    """The accelerated providers this onnxruntime build offers, best first, CPU last."""
    available = set(ort.get_available_providers())
    return tuple(p for p in _PROVIDER_ORDER if p in available)


def session_options(config: SessionConfig) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
    options.graph_optimization_level = _LEVELS[config.graph_optimization]
    options.enable_cpu_mem_arena = config.memory_arena
    options.log_severity_level = 3  # errors only: ORT's warnings are noise to our users
    if config.profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = config.profile_prefix
    if config.optimized_model_path is not None:
        options.optimized_model_filepath = config.optimized_model_path
    if config.optimized_model_data is not None:
        options.add_session_config_entry(_OPTIMIZED_DATA_FILE, config.optimized_model_data)
        # Small tensors stay in the graph, where readers without the data folder find them.
        options.add_session_config_entry(_OPTIMIZED_DATA_MIN_BYTES, str(external.SMALL_BYTES))
    if not config.allow_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def create_session(
    model: onnx.ModelProto | str | Path,
    config: SessionConfig | None = None,
    *,
    label: str | None = None,
    data_dir: str | Path | None = None,
) -> ort.InferenceSession:
    """An InferenceSession for a model proto or file; failures become ModelLoadError.

    External data is read (memory-mapped) by ONNX Runtime from `data_dir`, or for a proto
    from the folder it records (inferopt.external); a file's own folder otherwise. A proto
    never crosses as more than its graph: one holding over 2 GiB itself raises
    ModelLoadError (inferopt.model.from_proto moves such weights out first)."""
    config = config or SessionConfig()
    name = label or (str(model) if not isinstance(model, onnx.ModelProto) else "model")
    options = session_options(config)
    source: Any = str(model)
    if isinstance(model, onnx.ModelProto):
        if not external.fits(model):
            raise ModelLoadError(
                f"{name}: its graph holds {external.inline_bytes(model) / 2**30:.2f} GiB of "
                "weights, more than one protobuf can carry; move them to external data"
            )
        data_dir = data_dir or external.data_dir(model)
        source = model.SerializeToString()
    elif data_dir is not None:  # read as bytes: ORT takes the folder only for a model in memory
        source = Path(model).read_bytes()
    if data_dir is not None:
        options.add_session_config_entry(_DATA_FOLDER, str(data_dir))
    try:
        return ort.InferenceSession(source, sess_options=options, providers=list(config.providers))
    except Exception as exc:  # ORT raises its own pybind types; map them to one clear line
        raise ModelLoadError(f"{name}: ONNX Runtime cannot load it: {first_line(exc)}") from exc
