"""What the search remembers between runs: each finished candidate's model and figures, kept
under the cache in a folder keyed by everything that would change them (the baseline model,
the data, the metric, the machine, inferopt's version). A re-run, or a run after an
interruption, loads finished candidates instead of building and measuring them again.

Each candidate is written to a temporary folder and renamed into place, so an interrupted
write leaves nothing that looks finished."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from inferopt import cache, hardware
from inferopt.artifact import ArtifactError
from inferopt.data import Dataset
from inferopt.model import Model, load_onnx
from inferopt.search.evaluate import LatencyComparison
from inferopt.search.fidelity import Fidelity

OUTCOME = "outcome.json"
MODEL = "model.onnx"
# Bumped when what an outcome records changes meaning, so older stored outcomes are not read.
# outcome-3: latency probes settled before each timed round (search.evaluate); outcome-2's
# read candidates up to 1.7x slow (fuse: 0.67x probe against 1.10x confirmed on minilm).
SCHEMA = "outcome-3: latency probes settled; fidelity alone and batched, per channel, intervals"


@dataclass(frozen=True)
class Outcome:
    """One candidate, built and measured (or failed, with the reason)."""

    recipe: list[dict[str, Any]]  # Recipe.to_json()
    text: str  # the recipe as the user would write it
    family: str  # what kind of change: graph, precision, int8-dynamic, int8-static, train
    seconds: float  # to build and screen it
    fidelity: Fidelity | None = None
    probe: LatencyComparison | None = None  # the short latency probe (screening)
    full: LatencyComparison | None = None  # the full interleaved comparison (shortlist)
    size_bytes: int = 0
    memory_bytes: int | None = None  # peak resident memory to load and run, when measured
    failed: str | None = None  # why it could not be built or run
    rejected: str | None = None  # screened out: fidelity only on a sample, far over budget
    notes: tuple[str, ...] = ()
    cached: bool = field(default=False, compare=False)  # loaded from an earlier run
    node: str | None = field(default=None, compare=False)  # the Ray node that screened it

    @property
    def latency(self) -> LatencyComparison | None:
        return self.full or self.probe

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("cached")
        data["fidelity"] = self.fidelity.to_json() if self.fidelity else None
        return data

    @staticmethod
    def from_json(data: dict[str, Any]) -> Outcome:
        def part(kind: Any, key: str) -> Any:
            return kind(**data[key]) if data.get(key) else None

        return Outcome(
            recipe=data["recipe"],
            text=data["text"],
            family=data["family"],
            seconds=data["seconds"],
            fidelity=Fidelity.from_json(data["fidelity"]) if data.get("fidelity") else None,
            probe=part(LatencyComparison, "probe"),
            full=part(LatencyComparison, "full"),
            size_bytes=data["size_bytes"],
            memory_bytes=data.get("memory_bytes"),
            failed=data.get("failed"),
            rejected=data.get("rejected"),
            notes=tuple(data.get("notes", ())),
            cached=True,
            node=data.get("node"),
        )


class Store:
    """The finished candidates of one search (one baseline, data, metric and machine)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @staticmethod
    def for_search(
        baseline: Model, datasets: Sequence[Dataset], metric: str, fingerprint: str | None = None
    ) -> Store:
        """`fingerprint`: the hardware the candidates are measured on (default: this machine)."""
        key = search_key(baseline, datasets, metric, fingerprint)
        return Store(cache.cache_dir("search", key))

    def get(self, recipe: list[dict[str, Any]]) -> Outcome | None:
        path = self.folder / _candidate_key(recipe) / OUTCOME
        if not path.is_file():
            return None
        return Outcome.from_json(json.loads(path.read_text()))

    def model(self, outcome: Outcome) -> Model:
        """The candidate's model, read only when it is needed (they are tens of MiB)."""
        path = self.folder / _candidate_key(outcome.recipe) / MODEL
        if not path.is_file():
            raise ArtifactError(
                f"candidate {outcome.text}: its model is missing from {path.parent}"
            )
        return load_onnx(path, verify=False)

    def put(self, outcome: Outcome, model: Model | None) -> None:
        final = self.folder / _candidate_key(outcome.recipe)
        staging = final.with_name(f".{final.name}.partial-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        if model is not None:
            model.save(staging / MODEL)
        (staging / OUTCOME).write_text(json.dumps(outcome.to_json(), indent=1) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)


def search_key(
    baseline: Model, datasets: Sequence[Dataset], metric: str, fingerprint: str | None = None
) -> str:
    digest = hashlib.sha256()
    # The graph, not the whole proto: metadata (provenance, IOSpec) differs between a fresh
    # export and the same model read back from the cache.
    digest.update(baseline.proto.graph.SerializeToString(deterministic=True))
    for data in datasets:
        digest.update(f"dataset {len(data)}".encode())
        data.update_digest(digest)
    digest.update(metric.encode())
    digest.update(SCHEMA.encode())
    digest.update((fingerprint or hardware.probe().fingerprint()).encode())
    digest.update(metadata.version("inferopt").encode())
    return digest.hexdigest()[:16]


def _candidate_key(recipe: list[dict[str, Any]]) -> str:
    blob = json.dumps(recipe, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
