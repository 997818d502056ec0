"""The model repository: which model versions are loaded, warmed and taking traffic.

Loading a model (at start-up, or through the repository API) reads its newest version, builds
its ONNX Runtime session, runs warm-up, and only then makes it the version that takes
traffic. The version it replaces drains: it finishes what it has queued, then stops. A load
that fails leaves the old version serving, and says why in the index. A version folder that
holds a generator artifact loads as a `GeneratorVersion` (serve/generators.py) instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from inferopt.errors import InferoptError, first_line
from inferopt.iospec import IOSpec, TensorSpec
from inferopt.serve import protocol
from inferopt.serve.batcher import Batcher, Draining
from inferopt.serve.config import ConfigFile, ModelConfig
from inferopt.serve.errors import (
    BadRequest,
    DeadlineExceeded,
    NotFound,
    NotReady,
    Overloaded,
    ServeError,
)
from inferopt.serve.generators import GeneratorVersion, is_generator
from inferopt.serve.layout import Layout, ModelSource, check_version
from inferopt.serve.metrics import Metrics, VersionMetrics
from inferopt.serve.protocol import InferRequest, InferResponse
from inferopt.serve.runner import Runner
from inferopt.serve.warmup import WrapRunner, load_and_warm

if TYPE_CHECKING:
    from inferopt.serve.gate import Refusal

log = logging.getLogger("inferopt.serve")
PLATFORM = "onnxruntime_onnx"
_OUTCOMES: dict[type[ServeError], str] = {
    BadRequest: "bad_request",
    NotFound: "not_found",
    NotReady: "not_ready",
    Overloaded: "rejected",
    DeadlineExceeded: "timeout",
}


class ModelVersion:
    """A loaded, warmed model version: its spec, settings and batcher."""

    def __init__(
        self,
        name: str,
        version: str,
        runner: Runner,
        config: ModelConfig,
        batcher: Batcher,
        metrics: VersionMetrics,
    ) -> None:
        self.name = name
        self.version = version
        self.io: IOSpec = runner.io
        self.config = config
        self.batcher = batcher
        self.metrics = metrics
        self.axes = batcher.axes
        # Triton's view: a batching model's tensors lead with the batch axis (max_batch_size
        # > 0, `dims` without it). Batch-only ones ([N]) are shown as Triton shows them,
        # [-1, 1], and taken as [b, 1] or [b] (see protocol.batch_only).
        self.batching = self.axes.batch == 0 and batcher.max_rows > 0
        self.column_inputs = self._batch_only(self.io.inputs)
        self.column_outputs = self._batch_only(self.io.outputs)
        # The HTTP gate's pre-formatted 429 responses, by (reason, Retry-After): kept here,
        # so they go with this version when it is replaced (see gate.refusal).
        self.refusals: dict[tuple[str, int], Refusal] = {}
        self.warning: str | None = None  # why it was loaded without warm-up, if it was

    async def infer(self, request: InferRequest) -> InferResponse:
        request, advertised = protocol.from_columns(request, self.column_inputs)
        protocol.validate(request, self.io)
        wanted = protocol.selected_outputs(request, self.io)
        now = time.monotonic()
        deadline = protocol.deadline_after(request.timeout_us, self.config.default_timeout_ms, now)
        results = await self.batcher.submit(request.inputs, deadline, request.priority)
        outputs = {o.name: results[o.name] for o in wanted}
        return InferResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=protocol.to_columns(outputs, self.column_outputs) if advertised else outputs,
            binary=frozenset(o.name for o in wanted if o.binary),
            id=request.id,
        )

    async def close(self) -> None:
        """Finish what is queued, then stop (see Batcher.close)."""
        await self.batcher.close()

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": PLATFORM,
            "inputs": [
                protocol.tensor_metadata(t, t.name in self.column_inputs) for t in self.io.inputs
            ],
            "outputs": [
                protocol.tensor_metadata(t, t.name in self.column_outputs) for t in self.io.outputs
            ],
        }

    def model_config(self) -> dict[str, Any]:
        """Triton's model configuration (what perf_analyzer and model_analyzer read), over HTTP
        and gRPC alike, plus our own settings under "inferopt" (HTTP only: Triton's message
        has no field for them), with the model's input spec ("inputs": each input's role and
        valid range, found by discovery), so that `inferopt bench` sends what the model
        accepts."""
        meta = self.metadata()
        config: dict[str, Any] = {
            "name": self.name,
            "platform": PLATFORM,
            "backend": "onnxruntime",
            "max_batch_size": self.batcher.max_rows if self.batching else 0,
            "input": [self._config_tensor(t, self.column_inputs) for t in meta["inputs"]],
            "output": [self._config_tensor(t, self.column_outputs) for t in meta["outputs"]],
            "instance_group": [{"count": self.config.instances, "kind": "KIND_CPU"}],
        }
        if self.batching:  # Triton refuses dynamic batching without a batch axis
            delay = int(self.config.max_queue_delay_ms * 1000)
            config["dynamic_batching"] = {"max_queue_delay_microseconds": delay}
        config["inferopt"] = {
            **asdict(self.config),
            "sequence_padding": self.axes.pad,
            "inputs": self.io.to_json(),
        }
        return config

    def _config_tensor(self, meta: dict[str, Any], columns: frozenset[str]) -> dict[str, Any]:
        return protocol.config_tensor(meta, self.batching, meta["name"] in columns)

    def _batch_only(self, specs: tuple[TensorSpec, ...]) -> frozenset[str]:
        if not self.batching:
            return frozenset()
        return frozenset(t.name for t in specs if protocol.batch_only(t))


@dataclass(frozen=True)
class State:
    """A model's entry in the repository index."""

    version: str
    state: str  # READY | LOADING | UNLOADING | UNAVAILABLE
    reason: str = ""


# What the repository serves under a name: a model version, or a generator's.
Served = ModelVersion | GeneratorVersion

__all__ = ["ModelVersion", "Repository", "Served", "WrapRunner"]


class Repository:
    def __init__(
        self,
        layout: Layout,
        base: ModelConfig,
        config_file: ConfigFile,
        metrics: Metrics,
        wrap_runner: WrapRunner | None = None,
    ) -> None:
        self.layout = layout
        self._wrap_runner = wrap_runner
        self._base = base
        self._config_file = config_file
        self._metrics = metrics
        self._served: dict[str, Served] = {}
        self._states: dict[str, State] = {}
        self._wanted: set[str] = set()  # models that should be serving: readiness waits for them
        self._locks: dict[str, asyncio.Lock] = {}
        self._draining: set[asyncio.Task[None]] = set()
        self._started = False

    # ---- what is served ----

    @property
    def ready(self) -> bool:
        return self._started and all(name in self._served for name in self._wanted)

    def get(self, name: str, version: str | None = None) -> Served:
        served = self._served.get(name)
        if served is None:
            state = self._states.get(name)
            if state is not None:
                detail = f": {state.reason}" if state.reason else ""
                raise NotReady(f"model {name!r} is {state.state.lower()}{detail}")
            raise NotFound(f"unknown model {name!r}; the repository has {self._known_names()}")
        if version is not None and check_version(version) != served.version:
            raise NotFound(
                f"model {name!r} has no version {version} loaded; it serves {served.version}"
            )
        return served

    def serving(self, name: str) -> ModelVersion | None:
        """The version of `name` taking /infer traffic, or None (unknown, loading, failed, or
        a generator, which /infer refuses after routing)."""
        served = self._served.get(name)
        return served if isinstance(served, ModelVersion) else None

    def served(self) -> list[Served]:
        return [self._served[name] for name in sorted(self._served)]

    def _known_names(self) -> list[str]:
        names = sorted(set(self._states) | set(self._served))
        return names[:20]

    async def infer(
        self, name: str, version: str | None, decode: Callable[[], Awaitable[InferRequest]]
    ) -> InferResponse:
        """Find the model, decode and run one request, and count its outcome. The body is
        decoded only once the model is known, so an unknown model costs no parsing."""
        try:
            served = self.get(name, version)
        except ServeError as exc:
            self._metrics.unknown_model(_outcome(exc))
            raise
        start = time.perf_counter()
        try:
            request = await decode()
            try:
                response = await served.infer(request)
            except Draining:  # swapped mid-way: the version that replaced it answers
                response = await self.get(name, version).infer(request)
        except ServeError as exc:
            served.metrics.finished(_outcome(exc), time.perf_counter() - start)
            raise
        except asyncio.CancelledError:
            served.metrics.finished("cancelled", time.perf_counter() - start)
            raise
        served.metrics.finished("success", time.perf_counter() - start)
        return response

    # ---- loading and unloading ----

    def configs(self) -> dict[str, ModelConfig]:
        """The settings of every model on disk (for the start-up thread budget)."""
        configs = {}
        for name in self.layout.names():
            try:
                configs[name] = self._config_for(self.layout.find(name))
            except InferoptError:
                continue  # reported when the model loads
        return configs

    def _config_for(self, source: ModelSource) -> ModelConfig:
        return self._config_file.for_model(source.name, self._base, source.folder)

    async def load_all(self) -> None:
        names = self.layout.names()
        self._wanted.update(names)
        for name in names:
            try:
                await self.load(name)
            except ServeError as exc:
                log.error("%s", exc.message)
        self._started = True

    async def load(self, name: str) -> None:
        """Load (or reload) the newest version of `name`; the old one serves until then."""
        async with self._lock(name):
            source = self.layout.find(name)
            old = self._served.get(name)
            if old is None:
                self._states[name] = State(source.version, "LOADING")
            try:
                version = await self._build(source)
            except Exception as exc:  # a file from disk can fail in any way: it is a failed load
                reason = str(exc) if isinstance(exc, InferoptError) else _reason(exc)
                if old is None:
                    self._states[name] = State(source.version, "UNAVAILABLE", reason)
                log.error("loading %s version %s failed: %s", name, source.version, reason)
                raise BadRequest(f"failed to load {name!r}: {reason}") from exc
            self._served[name] = version
            self._states[name] = State(version.version, "READY", version.warning or "")
            self._wanted.add(name)
            log.info("%s version %s is ready", name, version.version)
            if old is not None:
                self._drain(old)

    async def unload(self, name: str) -> None:
        async with self._lock(name):
            served = self._served.pop(name, None)
            self._wanted.discard(name)
            if served is None:
                if name not in self._states:
                    raise NotFound(f"model {name!r} is not loaded")
                return
            self._states[name] = State(served.version, "UNLOADING")
            await served.close()
            self._states[name] = State(served.version, "UNAVAILABLE", "unloaded")

    async def _build(self, source: ModelSource) -> Served:
        config = self._config_for(source)
        if is_generator(source):
            metrics = self._metrics.for_version(source.name, source.version)
            families = self._metrics.generation
            return await asyncio.to_thread(GeneratorVersion.load, source, config, metrics, families)
        loaded = await asyncio.to_thread(load_and_warm, source, config, self._wrap_runner)
        metrics = self._metrics.for_version(source.name, source.version)
        batcher = Batcher(loaded.runner, config, metrics, loaded.latency)
        version = ModelVersion(source.name, source.version, loaded.runner, config, batcher, metrics)
        version.warning = loaded.warning
        return version

    def _drain(self, old: Served) -> None:
        task = asyncio.create_task(old.close())
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        entries = []
        names = sorted(set(self.layout.names()) | set(self._states))
        for name in names:
            state = self._states.get(name, State("", "UNAVAILABLE", "not loaded"))
            if ready_only and state.state != "READY":
                continue
            entry = {"name": name, "version": state.version, "state": state.state}
            if state.reason:
                entry["reason"] = state.reason
            entries.append(entry)
        return entries

    async def close(self) -> None:
        """Finish every queued request of every version, then stop their batchers."""
        self._wanted.clear()
        closing = [served.close() for served in self._served.values()]
        await asyncio.gather(*closing, *self._draining)


def _reason(exc: Exception) -> str:
    """A failure that is not ours, as a sentence: what failed, and the library's first line."""
    return f"loading it failed with {type(exc).__name__}: {first_line(exc)}"


def _outcome(exc: ServeError) -> str:
    for kind, outcome in _OUTCOMES.items():
        if isinstance(exc, kind):
            return outcome
    return "model_error"
