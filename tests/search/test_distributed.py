"""The search on a Ray cluster: a real two-node local cluster (`ray.cluster_utils.Cluster`, each
node one CPU and the measurement resource), shared by the module to save its start-up.

- The search on the cluster gives the same candidates, skips and choice as a run here, with no
  two measurements overlapping on a node (each measurement's node, worker and wall times).
  `objective="size"` makes the choice a function of the candidates alone: latency ties between
  INT8 variants are decided by noise on a shared 2-core machine, whoever measures them.
- A worker killed mid-measurement (from outside, found by its task's process title) has its
  candidate run again.
- A node of other hardware is refused, or searched on separately with `hardware="group"`. The
  other hardware is real, not a patched probe: that node is started with this process's CPU
  affinity cut to one core, so its raylet and workers really have one usable core, which the
  fingerprint counts (`usable_cores`), and the probe runs there as a Ray task.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from inferopt import hardware
from inferopt.cli import main
from inferopt.errors import InputError
from inferopt.search import auto, space
from inferopt.search.auto import SearchConfig, optimize
from inferopt.search.distributed import (
    RESOURCE,
    ClusterError,
    RayConfig,
    RayExecutor,
    RaySearch,
    Span,
    measurement_nodes,
    optimize_on_ray,
)
from inferopt.search.screen import ThroughputShape

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]
NODE: dict[str, Any] = {"num_cpus": 1, "resources": {RESOURCE: 1}}
# Size: a choice that does not hang on latency noise (see the module's docstring).
SAME = SearchConfig(objective="size", time_budget_s=300, training=False, shortlist=2, fresh=True)
QUICK = SearchConfig(time_budget_s=300, training=False, shortlist=1, fresh=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    local = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    try:
        local.add_node(**NODE)
        local.wait_for_nodes()
        ray.init(address=local.address, log_to_driver=False)
        yield local
    finally:
        ray.shutdown()
        local.shutdown()


@pytest.fixture
def few_candidates(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Three candidates, a family each: enough to exercise the path in seconds."""
    texts = ["fuse", "fuse,int8-dynamic", "fuse,int8-static"]
    real = space.candidates

    def some(facts: space.Facts, training: Any) -> list[space.Candidate]:
        return [c for c in real(facts, training) if c.text in texts]

    monkeypatch.setattr(auto.space, "candidates", some)
    return texts


def assert_one_at_a_time(spans: list[Span]) -> None:
    """No two measurements overlap on a node (the resource allows one per node)."""
    by_node: dict[str, list[Span]] = {}
    for span in spans:
        by_node.setdefault(span.node_id, []).append(span)
    for node, runs in by_node.items():
        runs.sort(key=lambda s: s.start)
        for before, after in itertools.pairwise(runs):
            assert after.start >= before.end, f"{before} and {after} overlap on {node}"


def test_the_search_on_two_nodes_chooses_as_a_local_run(cluster: Cluster, tmp_path: Path) -> None:
    start = time.perf_counter()
    local = optimize("digits-cnn", None, config=SAME)
    local_s = time.perf_counter() - start
    lines: list[str] = []
    start = time.perf_counter()
    [search] = optimize_on_ray(
        "digits-cnn", tmp_path / "out", cluster=RayConfig(cluster.address), config=SAME,
        progress=lines.append,
    )  # fmt: skip
    ray_s = time.perf_counter() - start
    print(f"digits-cnn search: {local_s:.1f} s here, {ray_s:.1f} s on two Ray nodes")
    got = search.result
    assert [o.text for o in got.outcomes] == [o.text for o in local.outcomes]
    assert got.skipped == local.skipped
    assert [o.failed for o in got.outcomes] == [o.failed for o in local.outcomes]
    assert [s.name for s in got.choice.feasible] == [s.name for s in local.choice.feasible]
    assert got.chosen is not None and local.chosen is not None
    assert got.chosen.text == local.chosen.text
    # Every measurement ran on a measurement node, both nodes were used, one at a time each.
    labels = {n.label for n in search.nodes}
    assert len(search.nodes) == 2 and {o.node for o in got.outcomes} <= labels
    assert {s.node_id for s in search.spans} == {n.node_id for n in search.nodes}
    measured = {s.label for s in search.spans}
    assert {o.text for o in got.outcomes} <= measured
    assert {"baseline", "baseline outputs", "threads", "both objectives"} <= measured
    assert any(label.startswith("confirm ") for label in measured)
    assert_one_at_a_time(search.spans)
    assert any(f"on {got.outcomes[0].node}" in line for line in lines)  # progress names nodes
    manifest = json.loads((tmp_path / "out" / "inferopt.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["hardware_fingerprint"] == search.fingerprint
    assert {n["node_id"] for n in manifest["measured_on"]["nodes"]} == {
        n.node_id for n in search.nodes
    }


def kill_once(title: str, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first worker process seen running the task titled `title` (Ray titles a
    worker `ray::<task name>` while it runs the task)."""
    me = psutil.Process()
    while not stop.is_set() and not killed:
        for process in me.children(recursive=True):
            try:
                if process.cmdline()[:1] == [title]:
                    process.send_signal(signal.SIGKILL)
                    killed.append(process.pid)
                    return
            except psutil.Error:
                continue
        time.sleep(0.01)


def test_a_worker_lost_mid_measurement_has_its_candidate_run_again(
    cluster: Cluster, few_candidates: list[str]
) -> None:
    victim = "fuse,int8-static"
    killed: list[int] = []
    stop = threading.Event()
    watcher = threading.Thread(
        target=kill_once, args=(f"ray::inferopt measure {victim}", killed, stop), daemon=True
    )
    watcher.start()
    try:
        [search] = optimize_on_ray("digits-cnn", cluster=RayConfig(cluster.address), config=QUICK)
    finally:
        stop.set()
        watcher.join()
    assert killed, "the watcher never saw the measurement running"
    outcomes = {o.text: o for o in search.result.outcomes}
    assert list(outcomes) == few_candidates
    assert outcomes[victim].failed is None and outcomes[victim].fidelity is not None
    [rerun] = [s for s in search.spans if s.label == victim]
    assert rerun.pid != killed[0]  # measured again, by another worker
    assert outcomes[victim].node in {n.label for n in search.nodes}
    assert_one_at_a_time(search.spans)


@contextmanager
def one_core() -> Iterator[None]:
    """Processes started inside inherit an affinity of one core: a node started here has one
    usable core, whatever this machine has. Only the calling thread's affinity changes."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@pytest.fixture
def odd_node(cluster: Cluster) -> Iterator[Any]:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two usable cores to start a node with fewer")
    with one_core():
        node = cluster.add_node(**NODE)
    try:
        cluster.wait_for_nodes()
        yield node
    finally:
        cluster.remove_node(node)


def test_a_node_of_other_hardware_is_refused(cluster: Cluster, odd_node: Any) -> None:
    here = hardware.probe()
    with pytest.raises(ClusterError) as refused:
        optimize_on_ray("digits-mlp", cluster=RayConfig(cluster.address), config=QUICK)
    message = str(refused.value)
    assert odd_node.node_id[:8] in message and here.fingerprint() in message
    assert f"usable_cores 1 there vs {here.usable_cores} here" in message
    assert "--ray-hardware group" in message and "\n" not in message


def test_grouped_nodes_are_searched_once_per_kind_of_machine(
    cluster: Cluster, odd_node: Any, tmp_path: Path, few_candidates: list[str]
) -> None:
    searches = optimize_on_ray(
        "digits-mlp", tmp_path, cluster=RayConfig(cluster.address, hardware="group"),
        config=QUICK,
    )  # fmt: skip
    by_size = sorted(searches, key=lambda s: len(s.nodes))
    assert [len(s.nodes) for s in by_size] == [1, 2]
    assert by_size[0].nodes[0].node_id == odd_node.node_id
    assert by_size[0].hardware["usable_cores"] == 1
    for search in searches:
        assert_measured_on_its_own_nodes(search)
        texts = [o.text for o in search.result.outcomes]  # then INT8 fallbacks, if any
        assert texts[: len(few_candidates)] == few_candidates
        manifest = json.loads((tmp_path / search.fingerprint / "inferopt.json").read_text())
        assert manifest["hardware_fingerprint"] == search.fingerprint
        assert manifest["hardware"]["usable_cores"] == search.hardware["usable_cores"]


def assert_measured_on_its_own_nodes(search: RaySearch) -> None:
    assert {s.node_id for s in search.spans} <= {n.node_id for n in search.nodes}
    assert_one_at_a_time(search.spans)


def test_an_error_of_ours_in_a_measurement_comes_back_as_itself(cluster: Cluster) -> None:
    executor = RayExecutor(measurement_nodes(), RayConfig(cluster.address))
    with pytest.raises(InputError) as raised:
        executor.run("parse", ThroughputShape.parse, "wide")
    assert type(raised.value) is InputError  # not Ray's wrapper, whose text is a traceback
    assert str(raised.value).startswith("--throughput-shape 'wide'")


def test_a_cluster_without_measurement_nodes_says_how_to_start_one(cluster: Cluster) -> None:
    with pytest.raises(ClusterError, match=r"none of the cluster's 2 nodes declares .*ray start"):
        optimize_on_ray("digits-mlp", cluster=RayConfig(cluster.address, resource="elsewhere"))


def test_the_cli_refuses_an_unreachable_cluster_in_one_line() -> None:
    # A process of its own: this one is connected to the module's cluster.
    done = subprocess.run(
        [sys.executable, "-m", "inferopt.cli", "optimize", "digits-mlp", "--no-training",
         "--ray", "127.0.0.1:9"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "cannot reach 127.0.0.1:9" in done.stderr + done.stdout
    assert "ray start --head" in done.stderr + done.stdout


def test_the_cli_takes_ray_hardware_only_with_ray() -> None:
    assert main(["optimize", "digits-mlp", "--ray-hardware", "group"]) == 2
    assert main(["optimize", "digits-mlp", "--recipe", "fuse", "--ray", "auto"]) == 2
    with pytest.raises(ValueError, match="hardware must be one of"):
        RayConfig("auto", hardware="share")  # type: ignore[arg-type]
