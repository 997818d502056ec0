"""A candidate's fidelity as the budget counts it: every output's every channel, alone and in
padded batches, NaN never agreeing, intervals, and the rule that decides within budget. The
models (tests/fixtures/damage.py) are small graphs, each the kind of damage a whole-output
cosine at batch 1 cannot see."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from inferopt.data import Dataset
from inferopt.model import Model
from inferopt.search.auto import BaselineFigures, SearchConfig, SearchResult
from inferopt.search.fidelity import Condition, Fidelity, Judge, run_outputs
from inferopt.search.metric import resolve_budget
from inferopt.search.report import honesty
from inferopt.search.select import Budget, Choice, Scored
from inferopt.search.store import Outcome

sys.path.insert(0, str(Path(__file__).parents[1] / "fixtures"))
from damage import detection_head, pooled_encoder


def _sentences(model: Model, count: int = 40) -> Dataset:
    """One-row samples of mixed lengths (3 to 14 tokens), real tokens only."""
    rng = np.random.default_rng(2)
    samples = []
    for i in range(count):
        length = 3 + (i * 5) % 12
        samples.append(
            {
                "input_ids": rng.integers(0, 50, (1, length)).astype(np.int64),
                "attention_mask": np.ones((1, length), np.int64),
            }
        )
    return Dataset(tuple(samples)).for_model(model.io)


def _images(model: Model, count: int = 60) -> Dataset:
    x = np.random.default_rng(3).random((count, 8), dtype=np.float32)
    return Dataset.from_arrays({"x": x}).for_model(model.io)


def test_a_zeroed_channel_beside_large_ones_is_seen_and_named() -> None:
    baseline, damaged = detection_head(), detection_head(objectness=False)
    data = _images(baseline)
    reference = run_outputs(baseline, data)
    judge = Judge("agreement", "agreement", decisions={"det": "sign"})
    fid = judge.measure(run_outputs(damaged, data), reference)
    assert fid.cosine > 0.9999  # the old check: blind to it
    assert fid.metric_drop < 1e-4
    assert fid.channel_drop > 0.4 and fid.drop_high >= fid.drop
    assert "output 'det' channel 4" in fid.decided_by()
    assert not Budget.parse("10%", "point").allows(fid.budget_drop(1.0, True, False), 1.0)


def test_a_lost_mask_shows_in_padded_batches_only() -> None:
    baseline, unmasked = pooled_encoder(), pooled_encoder(use_mask=False)
    data = _sentences(baseline)
    fid = Judge("embedding", "embedding").measure(
        run_outputs(unmasked, data), run_outputs(baseline, data)
    )
    alone, batched = fid.conditions
    assert (alone.name, batched.name) == ("alone", "batched")
    assert alone.metric_drop == 0.0 and alone.channel_drop < 1e-9  # no padding alone
    assert batched.channel_drop > 0.01
    assert "batched" in fid.decided_by()


def test_nan_never_agrees() -> None:
    baseline = detection_head()
    data = _images(baseline)
    reference = run_outputs(baseline, data)
    broken = run_outputs(baseline, data)
    broken.alone[0]["det"] = np.full_like(broken.alone[0]["det"], np.nan)
    fid = Judge("agreement", "agreement").measure(broken, reference)
    assert fid.drop == 1.0 and fid.drop_high == 1.0
    assert "NaN" in fid.decided_by()


def test_an_identical_candidate_drops_nothing_with_an_interval_of_zero() -> None:
    model = pooled_encoder()
    data = _sentences(model)
    fid = Judge("embedding", "embedding").measure(
        run_outputs(model, data), run_outputs(model, data)
    )
    assert fid.metric_drop == 0.0 and fid.drop_high < 1e-9  # float re-association at most
    assert Fidelity.from_json(fid.to_json()) == fid


@pytest.mark.parametrize(("rule", "within"), [("upper", False), ("point", True)])
def test_the_rule_decides_against_the_interval_or_the_point(rule: str, within: bool) -> None:
    budget = Budget.parse("0.5%", rule)  # type: ignore[arg-type]
    candidate = Scored("x", drop=0.003, gain=1.5, size_ratio=1.0, drop_high=0.008)
    assert budget.admits(candidate, 1.0) is within


def _result_with(fid: Fidelity, rule: str) -> SearchResult:
    config = SearchConfig(max_drop=Budget.parse("0.5%", rule))  # type: ignore[arg-type]
    baseline = BaselineFigures(1000, 1.0, None, 1.0, fid)
    outcome = Outcome([], "fuse,fp16", "precision", 1.0, fidelity=fid)
    result = SearchResult(
        "m", config, baseline, "embedding", "zoo", [outcome], Choice(None, (), ())
    )
    result.checks = {"samples": 40, "conditions": [{"name": "alone", "batch": 1}], "outputs": {},
                     "interval": "95% percentile bootstrap over the held-out samples"}  # fmt: skip
    return result


def test_the_report_says_when_the_budget_is_finer_than_the_data_or_the_noise() -> None:
    # A drop of 0.3% whose interval reaches 1.2%: 40 samples cannot settle a 0.5% budget.
    straddles = Condition("alone", 0.003, (0.0, 0.012), 0.0, (0.0, 0.0), "")
    fid = Fidelity("embedding", 1.0, 0.997, conditions=(straddles,), samples=40)
    lines = honesty(_result_with(fid, "upper"))
    assert any("upper end of the drop's 95% interval" in line for line in lines)
    finer = next(line for line in lines if "finer than 40 held-out samples" in line)
    assert "counted over budget" in finer and "samples would settle" in finer
    assert any("below the metric's noise floor" in line for line in lines)


@pytest.fixture(scope="module")
def head_with_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("det")
    detection_head().save(folder / "det.onnx")
    np.savez(folder / "data.npz", x=np.random.default_rng(3).random((100, 8), dtype=np.float32))
    return str(folder / "det.onnx"), str(folder / "data.npz")


def test_the_search_never_calls_a_damaged_channel_within_budget(
    head_with_data: tuple[str, str], tmp_path: Path
) -> None:
    from inferopt.search.auto import optimize

    model, data = head_with_data
    config = SearchConfig(time_budget_s=300, training=False, fresh=True)
    result = optimize(model, tmp_path / "out", data=data, config=config)
    static = next(o for o in result.outcomes if o.text == "fuse,int8-static")
    assert static.failed is not None and "damaged output 'det' channel 4" in static.failed
    # This head runs in microseconds: whether a candidate beats the original is noise here,
    # so either answer is right, as long as nothing damaged is one.
    assert result.chosen is not None or result.kept_original
    if result.chosen is not None:
        assert result.chosen.fidelity is not None and result.chosen.fidelity.drop_high <= 0.005
    fallback = [o for o in result.outcomes if "int8-static:fallback" in o.text]
    assert fallback, "a damaged int8 recipe gets its float fallback tried"


def test_an_explicit_recipe_that_damages_a_channel_exits_2_naming_it(
    head_with_data: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from inferopt.cli import main

    model, data = head_with_data
    code = main(["optimize", model, "--recipe", "int8-static", "--data", data,
                 "--out", str(tmp_path / "o")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "damaged output 'det' channel 4" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_retrieval_is_the_embedding_default_and_is_measured_in_padded_batches() -> None:
    from inferopt.search.metric import Metric

    baseline, unmasked = pooled_encoder(), pooled_encoder(use_mask=False)
    data = _sentences(baseline)
    reference = run_outputs(baseline, data)
    metric = Metric.resolve(None, data, baseline)
    assert (metric.name, metric.builtin) == ("retrieval", "retrieval")
    fid = metric.judge(data, reference).measure(run_outputs(unmasked, data), reference)
    alone, batched = fid.conditions
    assert alone.metric_drop == 0.0 and alone.figures["ndcg@10"] == 1.0  # no padding alone
    assert batched.metric_drop > 0.01  # the batched rows, against the baseline's alone
    assert batched.figures["ndcg@10"] == pytest.approx(1 - batched.metric_drop)
    assert set(batched.figures) == {"ndcg@10", "recall@10", "spearman", "nn_agreement", "cosine"}
    assert batched.metric_interval[0] <= batched.metric_drop <= batched.metric_interval[1]
    assert fid.agreement == 1.0 and fid.figures == alone.figures
    assert Fidelity.from_json(fid.to_json()) == fid
    embedding = Judge("embedding", "embedding").measure(run_outputs(unmasked, data), reference)
    assert embedding.conditions[1].figures == batched.figures  # the same figures beside


def test_the_report_states_the_default_budget_and_warns_when_the_data_is_too_coarse() -> None:
    noise = Fidelity("retrieval", 1.0, 1.0, conditions=(
        Condition("alone", 0.0, (0.0, 0.0), 1e-12, (0.0, 1e-12), ""),), samples=40)  # fmt: skip
    wide = Condition("batched", 0.004, (0.0, 0.012), 0.0, (0.0, 0.0), "")
    candidate = Fidelity("retrieval", 1.0, 0.996, conditions=(wide,), samples=40)
    result = _result_with(noise, "upper")
    result.metric = "retrieval"
    result.config = SearchConfig(max_drop=resolve_budget(None, "retrieval"))
    result.outcomes[0] = Outcome([], "fuse,fp16", "precision", 1.0, fidelity=candidate)
    lines = honesty(result)
    assert lines[0].startswith("budget: max drop 1% of mean nDCG@10 (default for retrieval)")
    assert any(line.startswith("noise floor") and "half-width 0.0000" in line for line in lines)
    assert not any("noise floor (95% upper" in line for line in lines)
    coarse = next(line for line in lines if "over half the budget" in line)
    assert "+-0.006 for fuse,fp16 (batched)" in coarse and "about 58 samples" in coarse
    result.config = SearchConfig(max_drop=Budget.parse("2%"))
    assert not any("over half the budget" in line for line in honesty(result))
