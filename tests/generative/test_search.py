"""The search on generators, on the trained zoo tiny-llama: every variant built, measured and
judged against the budget with intervals; the choice, the Pareto set and the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferopt.generative.fidelity import FidelityConfig
from inferopt.generative.search import GeneratorSearchConfig, pareto, search_generator, verdict
from inferopt.measure.interval import Interval

FAST = FidelityConfig(windows=6, window_tokens=64, greedy_prompts=2, greedy_tokens=8)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFEROPT_CACHE", str(tmp_path / "cache"))


def test_search_measures_every_variant_and_keeps_the_fastest_within_budget(
    zoo_tiny_llama_artifact: Path,
) -> None:
    config = GeneratorSearchConfig(
        variants=("fp32", "int8-weight", "int4-weight", "w8a8"), threads=(1,), rounds=2,
        decode_tokens=8, prompt_tokens=32, fidelity=FAST,
    )  # fmt: skip
    lines: list[str] = []
    result = search_generator(zoo_tiny_llama_artifact, config, progress=lines.append)
    assert [c.variant for c in result.candidates] == list(config.variants)
    for c in result.candidates:
        assert c.decode_tokens_per_s > 0 and c.ttft_s > 0 and c.size_bytes > 0
        assert c.memory_bytes > c.size_bytes  # plus the KV cache at the capped context
        if c.variant != "fp32":
            assert c.fidelity["perplexity_change"]["low"] <= c.fidelity["perplexity_change_point"]
    fp32 = result.candidates[0]
    assert all(c.size_bytes < fp32.size_bytes for c in result.candidates[1:])
    within = [c for c in result.candidates if c.verdict == "within"]
    assert result.chosen in within
    assert result.chosen.decode_tokens_per_s == max(c.decode_tokens_per_s for c in within)
    assert result.chosen in result.pareto
    assert any("int4-weight" in line for line in lines)  # progress per variant
    # A second search reads every built variant from the cache.
    again: list[str] = []
    search_generator(zoo_tiny_llama_artifact, config, progress=again.append)
    assert sum("cached" in line for line in again) == 3


def test_a_zero_budget_keeps_only_what_is_provably_unharmed(zoo_tiny_llama_artifact: Path) -> None:
    config = GeneratorSearchConfig(
        variants=("fp32", "int4-weight"), threads=(1,), rounds=1, decode_tokens=4,
        prompt_tokens=16, fidelity=FAST, metric="kl", budget=0.0,
    )  # fmt: skip
    result = search_generator(zoo_tiny_llama_artifact, config)
    assert result.candidates[1].verdict == "over"  # any KL above 0 is over a budget of 0
    assert result.chosen.variant == "fp32"


def test_size_objective_prefers_the_smallest(zoo_tiny_llama_artifact: Path) -> None:
    config = GeneratorSearchConfig(
        objective="size", variants=("fp32", "int8-weight", "int4-weight"), threads=(1,),
        rounds=1, decode_tokens=4, prompt_tokens=16, fidelity=FAST, budget=0.5,
    )  # fmt: skip
    result = search_generator(zoo_tiny_llama_artifact, config)
    assert result.chosen.variant == "int4-weight"


def test_verdicts_read_the_interval_not_the_point() -> None:
    from dataclasses import replace

    from inferopt.generative.fidelity import GeneratorFidelity

    def fid(low: float, high: float) -> GeneratorFidelity:
        i = Interval(low, high)
        return GeneratorFidelity(1.0, 1.0, i, (low + high) / 2, i, 0.0, Interval(0.9, 1.0),
                                 0.95, Interval(0.9, 1.0), 0.95, 10, 2, 0)  # fmt: skip

    assert verdict(fid(0.01, 0.04), "perplexity", 0.05) == "within"
    assert verdict(fid(0.03, 0.07), "perplexity", 0.05) == "unresolved"
    assert verdict(fid(0.06, 0.09), "perplexity", 0.05) == "over"
    assert verdict(None, "perplexity", 0.0) == "within"
    f = replace(fid(0.0, 0.0), same_top1=Interval(0.96, 0.99))
    assert verdict(f, "same-top1", 0.05) == "within"
    assert verdict(f, "same-top1", 0.02) == "unresolved"
    assert pareto([], "decode") == []


@pytest.mark.parametrize(
    "bad",
    [{"objective": "throughput"}, {"metric": "bleu"}, {"budget": -1.0}, {"variants": ()},
     {"variants": ("int3",)}, {"threads": (0,)}, {"rounds": 0}, {"mixed_share": 0.0}],
)  # fmt: skip
def test_bad_configs_raise(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        GeneratorSearchConfig(**bad)  # type: ignore[arg-type]
