"""The search end to end on the zoo's MLP and CNN (small, so each candidate takes about a
second): the artifact, the selection rule as applied, the original kept when nothing beats it,
the cache, resuming after an interruption, the none-within-budget path, and bad input."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import user_metrics

from inferopt.cli import main
from inferopt.errors import InputError
from inferopt.search import auto
from inferopt.search.auto import SearchConfig, optimize
from inferopt.search.select import TIE, Budget
from inferopt.sources import load

pytestmark = pytest.mark.slow
QUICK = SearchConfig(time_budget_s=300, training=False, shortlist=2)


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of this test's own, so candidates from other tests are not found there."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("INFEROPT_CACHE", str(cache))
    return cache


def test_search_writes_the_chosen_model_and_every_candidate(tmp_path: Path) -> None:
    # The CNN: static INT8 makes it clearly faster (about 2x), where the MLP's candidates
    # may all tie with the original (then the original is kept: see below).
    out = tmp_path / "cnn"
    result = optimize("digits-cnn", out, config=QUICK)
    assert sorted(p.name for p in out.iterdir()) == [
        "inferopt.json", "model.onnx", "report.html", "report.json", "report.md",
    ]  # fmt: skip
    manifest = json.loads((out / "inferopt.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert manifest["status"] == "complete" and result.chosen is not None
    assert manifest["recipe_text"] == result.chosen.text == report["chosen"]
    assert manifest["hardware_fingerprint"] and manifest["hardware"]["libraries"]
    assert manifest["provenance"]["steps"][0]["pass"] == "fuse"
    texts = [c["text"] for c in report["candidates"]]
    assert texts[0] == "fuse" and any(t.endswith("int8-static") for t in texts)
    # The rule as applied: the chosen is within budget, confirmed, and no confirmed
    # candidate within budget is faster by more than the tie margin.
    chosen = next(c for c in report["candidates"] if c["text"] == report["chosen"])
    assert chosen["within_budget"] and chosen["full"] is not None
    rivals = [c for c in report["candidates"] if c["within_budget"] and c["full"]]
    assert all(c["gain"] * (1 - TIE) <= chosen["gain"] for c in rivals)  # faster ones are ties
    assert any(c["pareto_speed"] for c in report["candidates"])
    assert (out / "report.html").read_text().count("data:image/png;base64") == 2
    assert load(out).provenance.steps  # the artifact is a model source like any other


def test_a_second_run_reuses_finished_candidates(tmp_path: Path, own_cache: Path) -> None:
    first = optimize("digits-mlp", tmp_path / "a", config=QUICK)
    again = optimize("digits-mlp", tmp_path / "b", config=QUICK)
    assert not any(o.cached for o in first.outcomes)
    assert all(o.cached for o in again.outcomes)
    assert [o.text for o in again.outcomes] == [o.text for o in first.outcomes]
    fresh = optimize("digits-mlp", None, config=SearchConfig(**{**vars(QUICK), "fresh": True}))
    assert not any(o.cached for o in fresh.outcomes)


def test_an_interrupted_search_keeps_its_best_and_resumes(
    tmp_path: Path, own_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_screen = auto.screen
    calls = []

    def interrupted(candidate, bench, train_s=None):  # type: ignore[no-untyped-def]
        calls.append(candidate.text)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_screen(candidate, bench)

    monkeypatch.setattr(auto, "screen", interrupted)
    out = tmp_path / "mlp"
    with pytest.raises(KeyboardInterrupt):
        optimize("digits-mlp", out, config=QUICK)
    manifest = json.loads((out / "inferopt.json").read_text())
    assert manifest["status"] == "in-progress"  # the best of the first two, not presented as done
    assert (out / "model.onnx").is_file()
    monkeypatch.setattr(auto, "screen", real_screen)
    resumed = optimize("digits-mlp", out, config=QUICK)
    assert [o.cached for o in resumed.outcomes[:2]] == [True, True]
    assert not any(o.cached for o in resumed.outcomes[2:])
    finished = json.loads((out / "inferopt.json").read_text())["status"]
    assert finished in ("complete", "original-kept")  # done either way; which is measured


def test_when_nothing_is_within_budget_the_closest_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_path = tmp_path / "mlp.onnx"
    model = load("digits-mlp")
    model.save(model_path)
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, image=rng.random((60, 1, 8, 8), dtype=np.float32))
    feeds = {"image": np.load(data)["image"][::5]}  # the held-out fifth, as the search splits
    monkeypatch.setattr(user_metrics, "REFERENCE", model.run(feeds)["logits"])
    out = tmp_path / "out"
    config = SearchConfig(
        max_drop=Budget.parse("0"), metric="user_metrics:distance_to_reference",
        time_budget_s=300, training=False,
    )  # fmt: skip
    monkeypatch.setattr(auto.space, "candidates", lambda facts, training: _lossy())
    result = optimize(str(model_path), out, data=data, config=config)
    assert result.chosen is None and len(result.choice.closest) >= 2
    manifest = json.loads((out / "inferopt.json").read_text())
    assert manifest["status"] == "no-candidate-within-budget"
    assert not (out / "model.onnx").exists()
    closest = sorted(p.name for p in (out / "closest").iterdir())
    assert len(closest) == len(result.choice.closest) and all(
        (out / "closest" / c / "model.onnx").is_file() for c in closest
    )


def _lossy() -> list[auto.space.Candidate]:
    from inferopt.passes.recipe import Recipe

    return [
        auto.space.Candidate(Recipe.parse("fp16"), "precision"),
        auto.space.Candidate(Recipe.parse("int8-dynamic"), "int8-dynamic"),
    ]


def test_a_time_budget_too_small_for_the_baseline_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(InputError, match="too small: loading and measuring the baseline"):
        optimize("digits-mlp", out, config=SearchConfig(time_budget_s=0.01, training=False))
    assert not out.exists()


def test_cli_searches_and_reproduces_from_the_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "searched"
    code = main(["optimize", "digits-cnn", "--out", str(out), "--no-training",
                 "--time-budget", "300"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and "before / after" in printed and "candidates" in printed
    again = tmp_path / "again"
    code = main(["optimize", "--recipe-from", str(out / "inferopt.json"), "--out", str(again)])
    assert code == 0
    first = json.loads((out / "inferopt.json").read_text())["recipe"]
    assert json.loads((again / "inferopt.json").read_text())["recipe"] == first


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-drop", "150%"], "must not be over 100%"),
        (["--max-drop", "-1"], "must be a number >= 0"),
        (["--metric", "user_metrics:raises"], "raised ZeroDivisionError"),
        (["--metric", "user_metrics:returns_text"], "not a number"),
        (["--data", "missing.npz"], "no such data file"),
        (["--data", "MISMATCHED"], "do not match the model's inputs"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "out"
    if "MISMATCHED" in args:
        mismatched = tmp_path / "pixels.npz"
        np.savez(mismatched, pixels=np.zeros((20, 64), dtype=np.float32))
        args = [str(mismatched) if a == "MISMATCHED" else a for a in args]
    code = main(["optimize", "digits-mlp", "--out", str(out), "--no-training", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_time_budget_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["optimize", "--time-budget", "0"])
    assert exit_info.value.code == 2 and "must be positive" in capsys.readouterr().err


@pytest.mark.parametrize("objective", ["size", "memory"])
def test_other_objectives_choose_by_their_own_figure(objective: str) -> None:
    config = SearchConfig(objective=objective, time_budget_s=300, training=False, shortlist=2)  # type: ignore[arg-type]
    result = optimize("digits-mlp", None, config=config)
    if result.chosen is None:  # no candidate beat the original: said, and measured
        assert objective == "memory" and result.kept_original
        return
    within = [
        o
        for o, s in zip(result.outcomes, result.scored(), strict=True)
        if o.full is not None and result.config.budget.allows(s.drop, result.baseline.score)
    ]
    if objective == "size":
        assert result.chosen.size_bytes == min(o.size_bytes for o in within)
    else:
        assert result.baseline.memory_bytes and result.chosen.memory_bytes
        assert all(o.memory_bytes for o in within)


def test_when_no_candidate_beats_the_original_it_is_kept_and_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every candidate measured no faster than the original (a tiny model's honest outcome).
    from inferopt.search import screen

    def no_faster(*args, **kwargs):  # type: ignore[no-untyped-def]
        measured = screen_compare(*args, **kwargs)
        return dataclasses.replace(measured, speedup=min(measured.speedup, 0.9))

    screen_compare = screen.compare_latency
    monkeypatch.setattr(screen, "compare_latency", no_faster)
    out = tmp_path / "kept"
    result = optimize("digits-mlp", out, config=QUICK)
    assert result.chosen is None and result.kept_original
    manifest = json.loads((out / "inferopt.json").read_text())
    assert manifest["status"] == "original-kept" and manifest["recipe"] == []
    kept = load(out / "model.onnx")
    assert kept.proto.graph == load("digits-mlp").proto.graph  # the original, unchanged
    again = tmp_path / "again"
    assert main(["optimize", "--recipe-from", str(out / "inferopt.json"), "--out", str(again)]) == 0
