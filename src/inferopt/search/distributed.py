"""The search with its measurements on a Ray cluster (`inferopt optimize --ray`).

    ray start --head --resources '{"inferopt_measure": 1}'
    ray start --address HEAD:6379 --resources '{"inferopt_measure": 1}'    # each machine
    inferopt optimize MODEL --ray HEAD:6379

The driver keeps the search's logic, the store and the artifact. Every timed measurement
(each candidate's build and screen, the baseline's timings, confirmations, threads) runs on a
measurement node: one that declares the resource `inferopt_measure` 1, so one measurement runs
per machine at a time. Before the search, each node's hardware fingerprint is probed there;
a node of other hardware is refused, or (`hardware="group"`) the search runs once per kind of
machine, so that no candidate measured on one kind is compared with one measured on another.

Candidates of a family start ahead of their turn, up to one per node (executor.Lookahead), but
their results are read in queue order: the search's sequential rules pick the candidates a run
on one machine would. Ray is imported only when a cluster is used."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from inferopt import hardware, rayaddress
from inferopt.errors import InferoptError, first_line
from inferopt.search.executor import Executor, Job

if TYPE_CHECKING:
    from inferopt.search.auto import Progress, SearchConfig, SearchResult

T = TypeVar("T")

RESOURCE = "inferopt_measure"  # what a measurement node declares, 1 per machine
Hardware = Literal["refuse", "group"]
HARDWARE: tuple[Hardware, ...] = ("refuse", "group")
MAX_RETRIES = 3  # a measurement whose worker or node is lost is run again, this many times
POLL_S = 5.0  # how often a wait checks that some node of the group is still alive
PROBE_TIMEOUT_S = 120.0  # a node's first task starts a worker that imports inferopt
# Ray 2.60 turns token authentication on for a head started where ~/.ray/auth_token exists;
# a driver that does not send the token is refused, with a reason that does not say so.
AUTH_HINT = "a cluster with token authentication needs RAY_AUTH_MODE=token and its token here"
NODE_ID_LABEL = "ray.io/node-id"  # the label Ray gives every node: tasks are kept to a group


class ClusterError(InferoptError):
    """The Ray cluster cannot run the search: unreachable, no measurement node, a node of other
    hardware, or a measurement lost more often than it may be retried."""


@dataclass(frozen=True)
class RayConfig:
    """Where a search's measurements run: the cluster at `address` ("auto", "ray://HOST:PORT"
    or "HOST:PORT", as `ray.init(address=...)` takes), on its nodes declaring `resource`.
    `hardware`: "refuse" a node whose fingerprint differs from this machine's, or "group" the
    nodes by fingerprint and search once per group. Raises ValueError for bad settings."""

    address: str
    hardware: Hardware = "refuse"
    resource: str = RESOURCE
    max_retries: int = MAX_RETRIES

    def __post_init__(self) -> None:
        if not self.address.strip():
            raise ValueError("the Ray address must be auto, ray://HOST:PORT or HOST:PORT")
        if self.hardware not in HARDWARE:
            raise ValueError(f"hardware must be one of {', '.join(HARDWARE)}, not {self.hardware}")
        if not self.resource:
            raise ValueError("the measurement resource must be named")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")


@dataclass(frozen=True)
class Node:
    """A measurement node, with the hardware its own probe reports."""

    node_id: str
    ip: str
    fingerprint: str
    hardware: dict[str, Any] = field(compare=False, hash=False)

    @property
    def label(self) -> str:
        return f"{self.ip}/{self.node_id[:8]}"


@dataclass(frozen=True)
class Span:
    """One measurement as it ran: where, in which worker process, and when (wall clock)."""

    label: str
    node_id: str
    pid: int
    start: float
    end: float


def _measure(label: str, fn: Callable[..., T], *args: Any) -> tuple[T, Span]:
    """The Ray task every measurement runs as, on a measurement node."""
    import ray

    start = time.time()
    value = fn(*args)
    node_id = ray.get_runtime_context().get_node_id()
    return value, Span(label, node_id, os.getpid(), start, time.time())


def _probe() -> tuple[str, dict[str, Any]]:
    info = hardware.probe()
    return info.fingerprint(), info.to_json()


class RayExecutor(Executor):
    """Each measurement as a Ray task on one of `nodes` (all of one fingerprint), holding the
    node's measurement resource, retried when its worker or node is lost. The Bench, models
    and datasets are put in the object store once. `spans`: every measurement that finished."""

    def __init__(self, nodes: Sequence[Node], config: RayConfig) -> None:
        import ray

        from inferopt.data import Dataset
        from inferopt.model import Model
        from inferopt.search.screen import Bench

        self.nodes = {n.node_id: n for n in nodes}
        self.width = len(nodes)
        self.spans: list[Span] = []
        self.config = config
        self._fingerprint = nodes[0].fingerprint
        self._bench, self._model, self._shared_types = Bench, Model, (Bench, Model, Dataset)
        self._shared: dict[int, tuple[Any, Any]] = {}  # id -> (object, its ObjectRef)
        # Ray sets OMP_NUM_THREADS=1 in a task that reserves no CPU: PyTorch would train on
        # one thread. A measurement gets what a process started on the machine would use.
        cores = str(nodes[0].hardware.get("usable_cores") or 1)
        self._task = ray.remote(_measure)
        self._options = dict(
            num_cpus=0,  # the custom resource alone says where and how many
            resources={config.resource: 1},
            max_retries=config.max_retries,
            retry_exceptions=False,  # errors of our own are answers, not losses
            label_selector={NODE_ID_LABEL: f"in({','.join(self.nodes)})"},
            runtime_env={"env_vars": {"OMP_NUM_THREADS": cores}},
        )

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def submit(self, label: str, fn: Callable[..., T], *args: Any) -> Job[T]:
        # The name is the worker's process title while it runs: `ray::inferopt measure fuse`.
        task = self._task.options(**self._options, name=f"inferopt measure {label}")
        return _RayJob(self, label, task.remote(label, fn, *[self._share(a) for a in args]))

    def _share(self, value: Any) -> Any:
        if not isinstance(value, self._shared_types):
            return value
        import ray

        model = value.baseline if isinstance(value, self._bench) else value
        if isinstance(model, self._model) and model.data_dir is not None:
            raise ClusterError(
                f"{model.name}: its weights stay in files on this machine (over 2 GiB); the "
                "search on a Ray cluster sends models to the nodes whole"
            )
        if id(value) not in self._shared:
            self._shared[id(value)] = (value, ray.put(value))  # held: the id stays unique
        return self._shared[id(value)][1]

    def any_alive(self) -> bool:
        return any(n["Alive"] and n["NodeID"] in self.nodes for n in _ray_nodes())


class _RayJob(Job[T]):
    def __init__(self, executor: RayExecutor, label: str, ref: Any) -> None:
        self._executor, self._label, self._ref = executor, label, ref
        self._done: list[T] = []  # its value, once in

    def result(self) -> T:
        if not self._done:
            value, span = self._wait()
            self.node = self._executor.nodes[span.node_id].label  # the label selector's nodes
            self._executor.spans.append(span)
            self._done.append(value)
        return self._done[0]

    def _wait(self) -> tuple[T, Span]:
        import ray
        from ray import exceptions as rx

        executor = self._executor
        while not ray.wait([self._ref], timeout=POLL_S)[0]:
            if not executor.any_alive():
                raise ClusterError(
                    f"measuring {self._label}: every measurement node of hardware "
                    f"{executor.fingerprint} is gone"
                )
        try:
            measured: tuple[T, Span] = ray.get(self._ref)
        except rx.RayTaskError as exc:
            if isinstance(exc.cause, InferoptError):  # ours: one line, as in a local search
                raise exc.cause from None
            raise
        except (rx.WorkerCrashedError, rx.NodeDiedError, rx.ObjectLostError) as exc:
            tries = executor.config.max_retries + 1
            raise ClusterError(
                f"measuring {self._label}: lost its worker or node {tries} times "
                f"({first_line(exc)})"
            ) from exc
        return measured

    def cancel(self) -> None:
        import ray

        ray.cancel(self._ref)


@contextmanager
def connected(address: str) -> Iterator[None]:
    """This process connected to the Ray cluster at `address`, for the duration. A process
    already connected (`ray.init`) keeps its connection. Raises ClusterError when the cluster
    cannot be reached."""
    import ray

    if ray.is_initialized():
        yield
        return
    _check_reachable(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
        detail = " ".join(str(exc).split())[:300]  # Ray's reason is often on a second line
        if not os.environ.get("RAY_AUTH_MODE"):
            detail += f" ({AUTH_HINT})"
        raise ClusterError(f"--ray {address}: cannot connect: {detail}") from exc
    try:
        yield
    finally:
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """Fail fast: `ray.init` retries an unreachable address for minutes."""
    target = address.removeprefix("ray://")
    if address == "auto":
        # Ray's own resolution (RAY_ADDRESS, else the latest `ray start` on this machine).
        from ray._private.services import canonicalize_bootstrap_address_or_die

        try:
            target = canonicalize_bootstrap_address_or_die(address)
        except (ConnectionError, ValueError) as exc:
            raise ClusterError(f"--ray auto: {first_line(exc)}") from exc
    try:
        rayaddress.probe(target)
    except ValueError as exc:
        raise ClusterError(f"--ray {address}: expected auto, ray://HOST:PORT or HOST:PORT") from exc
    except OSError as exc:
        raise ClusterError(
            f"--ray {address}: cannot reach {target} ({exc.strerror or exc}); start the "
            f"head there with `ray start --head --resources '{{\"{RESOURCE}\": 1}}'`"
        ) from exc


def measurement_nodes(resource: str = RESOURCE) -> list[Node]:
    """The alive nodes declaring `resource`, each with the fingerprint a task pinned to it
    reports. Raises ClusterError when none declares it, or one declares other than 1."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    alive = [n for n in _ray_nodes() if n["Alive"]]
    found = [n for n in alive if n["Resources"].get(resource, 0) > 0]
    if not found:
        raise ClusterError(
            f"none of the cluster's {len(alive)} nodes declares the resource {resource}: start "
            f"measurement nodes with `ray start --address HEAD:6379 --resources "
            f"'{{\"{resource}\": 1}}'`"
        )
    for n in found:
        if n["Resources"][resource] != 1:
            raise ClusterError(
                f"node {n['NodeManagerAddress']}/{n['NodeID'][:8]} declares {resource} "
                f"{n['Resources'][resource]:g}: declare 1, so that measurements on one "
                "machine do not overlap"
            )
    probe = ray.remote(_probe)
    refs = [
        probe.options(
            num_cpus=0,
            name="inferopt hardware probe",
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
        ).remote()
        for n in found
    ]
    try:
        probed = ray.get(refs, timeout=PROBE_TIMEOUT_S)
    except ray.exceptions.RayError as exc:
        raise ClusterError(f"probing the measurement nodes' hardware: {first_line(exc)}") from exc
    return [
        Node(n["NodeID"], n["NodeManagerAddress"], fingerprint, info)
        for n, (fingerprint, info) in zip(found, probed, strict=True)
    ]


def _ray_nodes() -> list[dict[str, Any]]:
    import ray

    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return nodes


def group(
    nodes: Sequence[Node], policy: Hardware, here: hardware.HardwareInfo
) -> dict[str, list[Node]]:
    """The nodes by fingerprint. With "refuse", every node must have this machine's
    (`here`): raises ClusterError naming the first that does not, both fingerprints and what
    differs."""
    groups: dict[str, list[Node]] = {}
    for node in nodes:
        groups.setdefault(node.fingerprint, []).append(node)
    if policy == "group":
        return groups
    for node in nodes:
        if node.fingerprint != here.fingerprint():
            raise ClusterError(
                f"Ray node {node.label} has hardware fingerprint {node.fingerprint}, this "
                f"machine {here.fingerprint()} ({_differences(here, node.hardware)}): figures "
                "from different machines are not compared; use nodes like this one, or "
                "--ray-hardware group for one search per kind of machine"
            )
    return groups


def _differences(here: hardware.HardwareInfo, there: dict[str, Any]) -> str:
    """The fields whose values change the fingerprint, as 'field there vs here'."""
    mine = here.to_json()
    changed = [
        f"{key} {there[key]} there vs {mine[key]} here"
        for key in mine
        if key in there
        and there[key] != mine[key]
        and hardware.HardwareInfo(**{**mine, key: there[key]}).fingerprint() != here.fingerprint()
    ]
    return "; ".join(changed[:3]) or "libraries or limits differ"


@dataclass
class RaySearch:
    """One search, on the measurement nodes of one kind of machine."""

    fingerprint: str
    nodes: tuple[Node, ...]
    result: SearchResult
    spans: list[Span]  # every measurement: node, worker process, start and end

    @property
    def hardware(self) -> dict[str, Any]:
        return self.nodes[0].hardware


def optimize_on_ray(
    source: Any,
    out: str | Path | None = None,
    *,
    cluster: RayConfig,
    data: str | Path | None = None,
    config: SearchConfig | None = None,
    progress: Progress | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> list[RaySearch]:
    """`inferopt.optimize` with every measurement on the cluster's measurement nodes: one
    search (at `out`), or with `cluster.hardware == "group"` one per kind of machine (at
    `out/<fingerprint>/`). Raises ClusterError (unreachable, no measurement node, a node of
    other hardware, a measurement lost too often) and what `optimize` raises."""
    from inferopt.search.auto import SearchConfig, optimize

    tell = progress or (lambda _: None)
    searches = []
    with connected(cluster.address):
        found = group(measurement_nodes(cluster.resource), cluster.hardware, hardware.probe())
        for fingerprint, nodes in found.items():
            where = None if out is None else Path(out)
            if where is not None and cluster.hardware == "group":
                where = where / fingerprint
            tell(
                f"measuring on {len(nodes)} Ray node(s) of hardware {fingerprint}: "
                + ", ".join(n.label for n in nodes)
            )
            executor = RayExecutor(nodes, cluster)
            result = optimize(
                source,
                where,
                data=data,
                config=config or SearchConfig(),
                progress=tell,
                shapes=shapes,
                executor=executor,
            )
            if result.out is not None:
                _record_hardware(result.out, nodes, cluster.address)
            searches.append(RaySearch(fingerprint, tuple(nodes), result, executor.spans))
    return searches


def _record_hardware(folder: Path, nodes: Sequence[Node], address: str) -> None:
    """The artifact's manifest states the nodes' hardware, not the driver's (which wrote it)."""
    from inferopt import artifact

    manifest = artifact.read_manifest(folder)
    manifest["hardware"] = nodes[0].hardware
    manifest["hardware_fingerprint"] = nodes[0].fingerprint
    manifest.setdefault("checks", {})["hardware_fingerprint"] = nodes[0].fingerprint
    manifest["measured_on"] = {
        "ray": address,
        "nodes": [{"node_id": n.node_id, "ip": n.ip} for n in nodes],
    }
    staging = folder / f".{artifact.MANIFEST}.partial"
    staging.write_text(json.dumps(manifest, indent=2, default=artifact.jsonable) + "\n")
    os.replace(staging, folder / artifact.MANIFEST)  # never half a manifest
