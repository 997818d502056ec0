"""Settings: `ModelConfig` (one per model: batching, queue, deadlines, threads) and
`ServerConfig` (one per server: addresses, limits, management API). Each setting is declared
once, here, with its help text; the CLI flags and the config-file keys are derived from it.

Model settings come in layers, later ones winning:
built-in defaults < CLI flags < `[defaults]` of --config < the model folder's `serve.toml` <
`[models.NAME]` of --config (the operator has the last word).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

from inferopt.serve.errors import ConfigError

MODEL_CONFIG_FILE = "serve.toml"  # optional, inside a model's folder
SequenceBatching = Literal["auto", "pad", "bucket"]


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class ModelConfig:
    max_batch_size: int = field(
        default=32,
        metadata=_help(
            "most rows one execution runs; larger requests are split. 0: run each request as "
            "sent, never merged or split (the default for models without a batch axis)"
        ),
    )
    max_queue_delay_ms: float = field(
        default=5.0,
        metadata=_help("longest a request is held back to fill a batch (not at low load)"),
    )
    max_queue_size: int = field(
        default=256,
        metadata=_help("requests waiting or running per model version; more get 429"),
    )
    max_queue_wait_ms: float | None = field(
        default=None,
        metadata=_help(
            "target time in the server (queued and running): requests beyond an adaptive "
            "limit on those pending, which keeps measured answers under it, get 429; keeps "
            "the queue short under overload. None: bounded by max_queue_size only"
        ),
    )
    default_timeout_ms: float | None = field(
        default=None,
        metadata=_help("deadline of requests that give no `timeout` parameter; none by default"),
    )
    instances: int = field(
        default=1, metadata=_help("batches of this model that run at the same time")
    )
    intra_op_threads: int = field(
        default=0,
        metadata=_help("ONNX Runtime threads per running batch; 0: the cores / instances"),
    )
    sequence_batching: SequenceBatching = field(
        default="auto",
        metadata=_help(
            "requests of different sequence lengths: 'pad' to the batch's longest (needs an "
            "attention mask), 'bucket' (only equal lengths share a batch), or 'auto' (pad "
            "when the model has an input named like a mask)"
        ),
    )
    max_padding: float = field(
        default=0.1,
        metadata=_help(
            "when padding: the most padding tokens a merged batch may carry per real token; a "
            "batch forms around the oldest request from those nearest its length. 0: only "
            "equal lengths merge"
        ),
    )
    prefix_cache_tokens: int = field(
        default=4096,
        metadata=_help(
            "generators: prompt tokens whose KV cache is kept for prompts that start the same "
            "(a shared system prompt), least recently used out; 0: no prefix caching"
        ),
    )
    warmup_seq_len: int = field(default=16, metadata=_help("sequence length of warm-up runs"))
    input_shapes: str | None = field(
        default=None,
        metadata=_help(
            "sizes for warm-up inputs, as inferopt's --input-shape writes them, space-separated "
            "(e.g. 'images:1,3,640,640'); none: found from the graph and by running it"
        ),
    )
    warmup_data: str | None = field(
        default=None,
        metadata=_help(
            ".npz of real inputs keyed by input name (relative to the model's folder): warm-up "
            "runs inputs like them, as Triton's model_warmup does"
        ),
    )

    def __post_init__(self) -> None:
        _at_least(self.max_batch_size, 0, "max_batch_size")
        _at_least(self.max_queue_delay_ms, 0, "max_queue_delay_ms")
        _at_least(self.max_queue_size, 1, "max_queue_size")
        _at_least(self.instances, 1, "instances")
        _at_least(self.intra_op_threads, 0, "intra_op_threads")
        _at_least(self.max_padding, 0, "max_padding")
        _at_least(self.warmup_seq_len, 1, "warmup_seq_len")
        _at_least(self.prefix_cache_tokens, 0, "prefix_cache_tokens")
        for name in ("max_queue_wait_ms", "default_timeout_ms"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.sequence_batching not in get_args(SequenceBatching):
            raise ValueError(
                f"sequence_batching must be one of {get_args(SequenceBatching)}, "
                f"got {self.sequence_batching!r}"
            )

    def threads(self, cores: int | None = None) -> int:
        """The intra-op threads each running batch gets."""
        if self.intra_op_threads:
            return self.intra_op_threads
        return max(1, (cores or os.cpu_count() or 1) // self.instances)

    def overlay(self, data: Mapping[str, Any], source: str) -> ModelConfig:
        """This config with the settings in `data` (from a file or flags) applied."""
        hints = get_type_hints(ModelConfig)
        known = {f.name for f in fields(ModelConfig)}
        changes: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                raise ConfigError(
                    f"{source}: unknown model setting {key!r}; settings are {sorted(known)}"
                )
            changes[key] = _check_type(key, value, hints[key], source)
        try:
            return replace(self, **changes)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from exc


def _at_least(value: float, low: float, name: str) -> None:
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def _check_type(key: str, value: Any, hint: Any, source: str) -> Any:
    allowed = get_args(hint) or (hint,)
    if isinstance(value, bool):  # TOML booleans are ints to Python; no setting takes one
        ok = bool in allowed
    elif isinstance(value, int):
        ok = int in allowed or float in allowed
    elif isinstance(value, float):
        ok = float in allowed
    else:
        ok = isinstance(value, str) and (str in allowed or value in allowed)
    if not ok:
        raise ConfigError(f"{source}: setting {key!r} cannot be {value!r}")
    return value


@dataclass(frozen=True)
class ServerConfig:
    host: str = field(default="127.0.0.1", metadata=_help("address to listen on"))
    http_port: int = field(default=8000, metadata=_help("HTTP port; 0 picks a free one"))
    grpc_port: int | None = field(
        default=8001, metadata=_help("gRPC port; 0 picks a free one; None: no gRPC")
    )
    max_body_bytes: int = field(
        default=64 * 2**20, metadata=_help("largest HTTP request body or gRPC message")
    )
    management: bool = field(default=False, metadata=_help("serve the load/unload API"))
    management_token: str | None = field(
        default=None, metadata=_help("bearer token the load/unload API requires")
    )
    drain_timeout_s: float = field(
        default=30.0, metadata=_help("on SIGTERM, the longest wait for queued work")
    )
    access_log: bool = field(default=False, metadata=_help("log every HTTP request"))

    def __post_init__(self) -> None:
        for name, port in (("http_port", self.http_port), ("grpc_port", self.grpc_port)):
            if port is not None and not 0 <= port <= 65535:
                raise ValueError(f"{name} must be in 0..65535, got {port}")
        _at_least(self.max_body_bytes, 1024, "max_body_bytes")
        _at_least(self.drain_timeout_s, 0, "drain_timeout_s")
        if self.management_token is not None and not self.management_token.strip():
            raise ValueError("management_token must not be empty")

    @property
    def management_enabled(self) -> bool:
        return self.management or self.management_token is not None


@dataclass(frozen=True)
class ConfigFile:
    """The --config file: `[defaults]` for every model and `[models.NAME]` for one."""

    defaults: Mapping[str, Any] = field(default_factory=dict)
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source: str = "built-in defaults"

    @staticmethod
    def read(path: Path) -> ConfigFile:
        data = _read_toml(path)
        unknown = set(data) - {"defaults", "models"}
        if unknown:
            raise ConfigError(
                f"{path}: unknown tables {sorted(unknown)}; use [defaults] and [models.NAME]"
            )
        defaults = data.get("defaults", {})
        models = data.get("models", {})
        if not isinstance(defaults, dict) or not isinstance(models, dict):
            raise ConfigError(f"{path}: [defaults] and [models.NAME] must be tables")
        for name, table in models.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: [models.{name}] must be a table")
        ConfigFile._check(ModelConfig(), defaults, models, str(path))
        return ConfigFile(defaults, models, str(path))

    @staticmethod
    def _check(
        base: ModelConfig, defaults: Mapping[str, Any], models: Mapping[str, Any], source: str
    ) -> None:
        """Fail at start-up, not at the first load, on a typo in any table."""
        base = base.overlay(defaults, f"{source} [defaults]")
        for name, table in models.items():
            base.overlay(table, f"{source} [models.{name}]")

    def for_model(self, name: str, base: ModelConfig, folder: Path | None) -> ModelConfig:
        """`base` (built-in defaults and flags) with every layer for model `name` applied."""
        config = base.overlay(self.defaults, f"{self.source} [defaults]")
        if folder is not None and (folder / MODEL_CONFIG_FILE).is_file():
            path = folder / MODEL_CONFIG_FILE
            config = config.overlay(_read_toml(path), str(path))
        return config.overlay(self.models.get(name, {}), f"{self.source} [models.{name}]")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
