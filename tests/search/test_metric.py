"""The user's --metric function: called on the baseline first, so a broken one stops the
search at once with a message naming it."""

import numpy as np
import pytest

from inferopt.data import Dataset
from inferopt.errors import InputError
from inferopt.search.fidelity import Outputs
from inferopt.search.metric import Metric
from inferopt.sources import load


@pytest.fixture(scope="module")
def mlp_and_data() -> tuple[object, Dataset]:
    model = load("digits-mlp")
    rng = np.random.default_rng(0)
    x = rng.random((20, 1, 8, 8), dtype=np.float32)
    return model, Dataset.from_arrays({"image": x}, rng.integers(0, 10, 20))


def _rows(logits: np.ndarray) -> Outputs:
    return Outputs([{"logits": row[None]} for row in logits], None)


def test_user_function_scores_candidate_and_baseline(mlp_and_data) -> None:  # type: ignore[no-untyped-def]
    model, data = mlp_and_data
    metric = Metric.resolve("user_metrics:accuracy", data, model)
    logits = np.eye(10, dtype=np.float32)[np.asarray(data.labels)]
    reference = _rows(logits[::-1].copy())
    fid = metric.judge(data, reference).measure(_rows(logits), reference)
    assert fid.task_score == 1.0
    assert fid.baseline_task_score is not None and fid.baseline_task_score < 1.0
    assert fid.metric_drop < 0  # the candidate scores better than the reference here
    assert metric.baseline_score(_rows(logits), data) == 1.0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("user_metrics:raises", "raised ZeroDivisionError: no samples of class 3"),
        ("user_metrics:returns_text", "returned str, not a number"),
        ("user_metrics:returns_nan", "not a finite number"),
        ("user_metrics:missing", "has no function 'missing'"),
        ("no_such_module_here:f", "cannot import 'no_such_module_here'"),
        ("accuracy", "not one of top1, retrieval, embedding, agreement"),
    ],
)
def test_broken_metrics_are_named_in_the_error(mlp_and_data, spec: str, message: str) -> None:  # type: ignore[no-untyped-def]
    model, data = mlp_and_data
    with pytest.raises(InputError, match=message):
        metric = Metric.resolve(spec, data, model)
        metric.baseline_score(_rows(np.zeros((len(data), 10), dtype=np.float32)), data)


def test_top1_without_labels_is_refused(mlp_and_data) -> None:  # type: ignore[no-untyped-def]
    model, data = mlp_and_data
    unlabelled = Dataset(data.samples)
    with pytest.raises(InputError, match="needs labels"):
        Metric.resolve("top1", unlabelled, model)


def test_each_metric_states_its_default_budget() -> None:
    from inferopt.search.metric import budget_text, resolve_budget
    from inferopt.search.select import Budget

    retrieval = resolve_budget(None, "retrieval")
    assert (retrieval.value, retrieval.relative, retrieval.default_for) == (0.01, True, "retrieval")
    assert budget_text(retrieval, "retrieval") == "1% of mean nDCG@10 (default for retrieval)"
    for metric in ("top1", "embedding", "agreement", "user_metrics:accuracy"):
        assert resolve_budget(None, metric, "point") == Budget(0.005, True, "point", metric)
    given = Budget.parse("2%")
    assert resolve_budget(given, "retrieval") is given
    assert budget_text(given, "top1") == "2% of top-1 accuracy (given)"


def test_cli_metric_embedding_reaches_the_search(monkeypatch: pytest.MonkeyPatch) -> None:
    from inferopt.cli import main
    from inferopt.search import auto

    seen = []

    def stop(*args: object, config: auto.SearchConfig, **kwargs: object) -> None:
        seen.append(config)
        raise InputError("stopped here")

    monkeypatch.setattr(auto, "optimize", stop)
    assert main(["optimize", "digits-mlp", "--metric", "embedding", "--budget-rule", "point"]) == 2
    assert main(["optimize", "digits-mlp", "--max-drop", "0.2%"]) == 2
    (embedding, given) = seen
    assert embedding.metric == "embedding" and embedding.max_drop is None
    assert embedding.budget_rule == "point"
    assert given.budget.value == pytest.approx(0.002) and given.metric is None
    with pytest.raises(ValueError, match="known once optimize"):
        _ = embedding.budget
