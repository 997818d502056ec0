"""The candidate store: round trip, and nothing half-written is ever read back."""

from pathlib import Path

import pytest

from inferopt.artifact import ArtifactError
from inferopt.search.evaluate import Fidelity, LatencyComparison
from inferopt.search.store import Outcome, Store
from inferopt.sources import load


def test_outcomes_and_models_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path)
    model = load("digits-mlp")
    recipe = [{"pass": "fuse", "options": {"transformer": True, "cnn": True}}]
    outcome = Outcome(
        recipe, "fuse", "graph", 1.5,
        fidelity=Fidelity("top1", 0.999, 1.0, 0.97, 0.97),
        probe=LatencyComparison(1.0, 0.5, 2.0, 0.1, 3, 16),
        size_bytes=model.size_bytes,
    )  # fmt: skip
    assert store.get(recipe) is None
    store.put(outcome, model)
    got = store.get(recipe)
    assert got is not None
    again = store.model(got)
    assert got.cached and got.fidelity == outcome.fidelity and got.probe == outcome.probe
    assert again is not None and again.size_bytes > 0


def test_a_failed_candidate_is_stored_without_a_model(tmp_path: Path) -> None:
    store = Store(tmp_path)
    recipe = [{"pass": "int8-static", "options": {}}]
    store.put(Outcome(recipe, "int8-static", "int8-static", 0.2, failed="no data"), None)
    got = store.get(recipe)
    assert got is not None and got.failed == "no data"
    with pytest.raises(ArtifactError, match="its model is missing"):
        store.model(got)


def test_a_partial_write_is_not_read(tmp_path: Path) -> None:
    store = Store(tmp_path)
    recipe = [{"pass": "fuse", "options": {}}]
    store.put(Outcome(recipe, "fuse", "graph", 0.1, failed="x"), None)
    (next(tmp_path.iterdir()) / "outcome.json").unlink()  # as if interrupted mid-write
    assert store.get(recipe) is None
