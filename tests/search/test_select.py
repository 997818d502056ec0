"""The selection rule on made-up figures: the budget, the best within it, the frontier."""

import pytest

from inferopt.errors import InputError
from inferopt.search.select import ORIGINAL, Budget, Scored, choose, choose_against_original, pareto


def test_budget_is_relative_with_a_percent_sign_and_absolute_without() -> None:
    assert Budget.parse("0.5%") == Budget(0.005, relative=True)
    assert Budget.parse("0.01") == Budget(0.01, relative=False)
    assert Budget.parse("100%").value == 1.0


@pytest.mark.parametrize("text", ["-1", "-0.5%", "150%", "2", "abc", "nan", ""])
def test_bad_budgets_are_refused_with_the_value(text: str) -> None:
    with pytest.raises(InputError, match="--max-drop"):
        Budget.parse(text)


def test_relative_budget_is_taken_of_the_baseline_score() -> None:
    budget = Budget.parse("10%")
    assert budget.allows(0.05, baseline_score=0.5)  # 10% of 0.5 is 0.05
    assert not budget.allows(0.051, baseline_score=0.5)
    assert Budget.parse("0.05").allows(0.05, baseline_score=0.5)


ROWS = [
    Scored("exact", drop=0.0, gain=1.0, size_ratio=1.0),
    Scored("fast-lossy", drop=0.05, gain=3.0, size_ratio=0.25),
    Scored("good", drop=0.004, gain=1.8, size_ratio=0.3),
    Scored("good-twin", drop=0.001, gain=1.8, size_ratio=0.5),
    Scored("slow", drop=0.002, gain=0.7, size_ratio=0.5),
]


def test_best_within_budget_wins_and_ties_go_to_the_smaller_drop() -> None:
    choice = choose(ROWS, Budget.parse("0.5%"), baseline_score=1.0)
    assert choice.best is not None and choice.best.name == "good-twin"
    assert [c.name for c in choice.feasible] == ["good-twin", "good", "exact", "slow"]
    assert choice.closest == ()


def test_gains_within_the_tie_margin_go_to_the_smaller_drop() -> None:
    rows = [Scored("a", drop=0.004, gain=2.0, size_ratio=1), Scored("b", 0.0, 1.95, 1)]
    choice = choose(rows, Budget.parse("0.5%"), baseline_score=1.0)
    assert choice.best is not None and choice.best.name == "b"
    rows.append(Scored("c", drop=0.004, gain=2.2, size_ratio=1))  # 10% faster: not a tie
    assert choose(rows, Budget.parse("0.5%"), 1.0).best.name == "c"  # type: ignore[union-attr]


def test_a_larger_budget_admits_the_faster_lossy_candidate() -> None:
    choice = choose(ROWS, Budget.parse("0.05"), baseline_score=1.0)
    assert choice.best is not None and choice.best.name == "fast-lossy"


def test_when_nothing_is_within_budget_the_closest_are_returned() -> None:
    lossy = [r for r in ROWS if r.drop > 0.001]
    choice = choose(lossy, Budget.parse("0"), baseline_score=1.0, closest=2)
    assert choice.best is None and choice.feasible == ()
    assert [c.name for c in choice.closest] == ["slow", "good"]


def test_pareto_frontier_keeps_only_undominated_candidates() -> None:
    assert [c.name for c in pareto(ROWS)] == ["exact", "good-twin", "fast-lossy"]
    by_size = pareto(ROWS, lambda c: 1 / c.size_ratio)
    assert [c.name for c in by_size] == ["exact", "good-twin", "good", "fast-lossy"]


def test_the_original_wins_over_candidates_that_are_not_faster() -> None:
    budget = Budget(0.01, relative=False)
    slower = Scored("fuse", drop=0.0, gain=0.92, size_ratio=1.0)
    assert choose_against_original([slower], budget, 1.0).best.name == ORIGINAL  # type: ignore[union-attr]
    tied_with_a_drop = Scored("fp16", drop=0.002, gain=1.02, size_ratio=0.5)
    assert choose_against_original([tied_with_a_drop], budget, 1.0).best.name == ORIGINAL  # type: ignore[union-attr]
    faster = Scored("int8", drop=0.002, gain=1.5, size_ratio=0.3)
    choice = choose_against_original([slower, faster], budget, 1.0)
    assert choice.best is not None and choice.best.name == "int8"
