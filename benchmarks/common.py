"""Shared by the benchmark scripts: interleaved timing, result files, the machine's state.

Every comparison runs its candidates in rotating order within each round over the same inputs,
so slow drift on a shared machine (other processes, thermal state) hits all of them alike, and
each timed pass comes right after an untimed one of the same candidate (see `interleaved`);
the figure reported is the median over rounds, with the spread of per-round ratios.
Results made before 2026-12-04 17:30 UTC were timed without that settling pass: their ratios
are pulled towards 1 (int8_block: 1.51x at batch 1 then, 1.58x after, same recipe)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from inferopt import hardware

RESULTS = Path(__file__).parent / "results"
Runner = Callable[[], None]  # runs one candidate once over the whole input set


def interleaved(
    runners: dict[str, Runner], rounds: int = 9, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per round for each runner, candidates rotated each round. Each timed run comes
    right after an untimed one of the same runner: an ONNX Runtime session that runs right
    after another is up to 2x slower for its first ~70 ms (2-core AMD EPYC, measured in
    inferopt.measure.latency), which would add the same milliseconds to every runner and
    pull the ratios towards 1."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    names = list(runners)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            runners[name]()  # settle, untimed
            start = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - start)
    return times


def ort_runner(model: Any, feeds: Sequence[dict[str, Any]], config: Any = None) -> Runner:
    """One pass of an ONNX Runtime session (under `config`: threads, ...) over the feeds."""
    session = model.session(config)

    def run() -> None:
        for f in feeds:
            session.run(None, f)

    return run


def speedups(times: dict[str, list[float]], baseline: str) -> dict[str, dict[str, float]]:
    """Median round time, and speed-up over the baseline (median of per-round ratios) with the
    interquartile range of those ratios."""
    base = np.array(times[baseline])
    out = {}
    for name, t in times.items():
        ratios = base / np.array(t)
        q25, q50, q75 = np.percentile(ratios, [25, 50, 75])
        out[name] = {
            "median_s": float(np.median(t)),
            "speedup": float(q50),
            "iqr": [float(q25), float(q75)],
        }
    return out


def speedup_cell(timing: dict[str, Any]) -> str:
    """A `speedups()` entry as a table cell: median speed-up and the IQR of round ratios."""
    return f"{timing['speedup']:.2f}x [{timing['iqr'][0]:.2f}, {timing['iqr'][1]:.2f}]"


def machine() -> dict[str, Any]:
    info = hardware.probe()
    return {
        "cpu": info.cpu_model,
        "cores": info.usable_cores,
        "features": list(info.cpu_features),
        "fingerprint": info.fingerprint(),
        "libraries": info.libraries,
        "load_average": list(os.getloadavg()),
    }


@contextmanager
def contention() -> Iterator[dict[str, float]]:
    """Measure what else took the CPUs while the `with` body ran. The dict it yields is filled
    on exit with `other_share`, the CPU time of every other process (children count once
    they have been waited for), and `steal_share`, the time the hypervisor gave this VM's
    CPUs to other guests, each as a share of all cores over the wall time (0: none, 1: every
    core all the time).

    Why: a figure compute-bound on 2 cores (int4 decode) loses speed to any other process,
    while a bandwidth-bound one (fp32 decode) barely does, so a busy machine pulls their ratio
    down (#16: 2.26x fp32 with other work running, 2.81x on a quiet machine). The load
    average cannot tell this benchmark's own threads from others'."""
    import psutil

    me = psutil.Process()
    cores = psutil.cpu_count() or 1

    def busy() -> tuple[float, float]:
        t = psutil.cpu_times()
        idle = t.idle + getattr(t, "iowait", 0.0)
        steal = getattr(t, "steal", 0.0)
        guests = getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)  # counted in user
        return sum(t) - idle - steal - guests, steal

    def own() -> float:
        t = me.cpu_times()
        return float(t.user + t.system + t.children_user + t.children_system)

    figures: dict[str, float] = {}
    start, (busy0, steal0), own0 = time.perf_counter(), busy(), own()
    yield figures
    wall = (time.perf_counter() - start) * cores
    busy1, steal1 = busy()
    figures["other_share"] = max(0.0, (busy1 - busy0) - (own() - own0)) / wall
    figures["steal_share"] = (steal1 - steal0) / wall


def save(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        **payload,
    }
    payload["machine"] = {**machine(), **payload.get("machine", {})}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], note: str = ""
) -> dict[str, Any]:
    """A table the renderer turns into markdown in docs/benchmarks.md."""
    return {"title": title, "columns": list(columns), "rows": [list(r) for r in rows], "note": note}


def fidelity_row(model: Any, reference: Any, data: Any, metric: str) -> dict[str, Any]:
    """What search.fidelity says of `model` against the baseline's `reference` outputs
    (search.fidelity.Outputs) on `data`: the drop with its 95% upper bound and what decided it,
    and the first output's mean and worst-row cosine to the baseline alone and in padded
    batches of 8 (where a lost attention mask shows)."""
    from inferopt.search.fidelity import run_outputs
    from inferopt.search.metric import Metric

    judge = Metric.resolve(metric, data, model).judge(data, reference)
    got = run_outputs(model, data)
    fid = judge.measure(got, reference)
    first = next(iter(reference.alone[0]))
    truth = [r[first].ravel() for r in reference.alone]

    def cosines(rows: Any) -> list[float]:
        return [_cosine(a, r[first].ravel()) for a, r in zip(truth, rows, strict=True)]

    alone = cosines(got.alone)
    batched = cosines(got.batched) if got.batched is not None else alone
    return {
        "fidelity": fid,
        "drop": f"{fid.drop:.4f} [{fid.drop_high:.4f}]",
        "decided_by": fid.decided_by(),
        "cosine_alone": f"{np.mean(alone):.4f} (worst {min(alone):.3f})",
        "cosine_batched": f"{np.mean(batched):.4f} (worst {min(batched):.3f})",
    }


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300))
