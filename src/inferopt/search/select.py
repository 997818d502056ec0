"""The selection rule: among the candidates whose fidelity drop is within the user's budget,
the best on the objective; the Pareto frontier over all of them; and, when none is within
budget, the closest ones.

Kept free of measuring and I/O so the rule itself can be tested on made-up figures."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from inferopt.errors import InputError

Objective = Literal["latency", "throughput", "size", "memory"]
OBJECTIVES: tuple[Objective, ...] = ("latency", "throughput", "size", "memory")
TIE = 0.03  # gains this close (3%) count as equal
Rule = Literal["upper", "point"]
ORIGINAL = "the original, unchanged"  # always within budget, its gain 1: what a candidate must beat
RULES: tuple[Rule, ...] = ("upper", "point")


@dataclass(frozen=True)
class Budget:
    """How much of the model's metric the user accepts to lose. Written `0.5%` (relative to
    the baseline's score) or `0.005` (absolute, in the metric's own units: accuracy or
    agreement as a fraction).

    `rule` says how a measured drop is held to it: "upper" (the default) counts a candidate
    within budget only when the upper end of its drop's 95% interval is, so a small held-out
    set cannot make damage look like none; "point" compares the measured drop itself."""

    value: float
    relative: bool
    rule: Rule = "upper"
    default_for: str | None = None  # the metric whose default this is; None: the user's own

    def __post_init__(self) -> None:
        if not math.isfinite(self.value) or self.value < 0:
            raise ValueError(f"the accuracy budget must be a number >= 0, got {self.value}")
        if self.value > 1:
            raise ValueError(f"the accuracy budget must not be over 100%, got {self.text()}")
        if self.rule not in RULES:
            raise ValueError(
                f"the budget rule must be one of {', '.join(RULES)}, not {self.rule!r}"
            )

    @staticmethod
    def parse(text: str, rule: Rule = "upper") -> Budget:
        raw = text.strip()
        relative = raw.endswith("%")
        try:
            number = float(raw.rstrip("%"))
        except ValueError:
            raise InputError(
                f"--max-drop {text!r}: not a number; write e.g. 0.5% (relative) or 0.005"
            ) from None
        try:
            return Budget(number / 100 if relative else number, relative, rule)
        except ValueError as exc:
            raise InputError(f"--max-drop {text!r}: {exc}") from None

    def text(self) -> str:
        return f"{self.value:.4g} of the baseline's score" if self.relative else f"{self.value:.4g}"

    def rule_text(self) -> str:
        if self.rule == "upper":
            return "within budget when the upper end of the drop's 95% interval is at most it"
        return "within budget when the measured drop is at most it (intervals reported, not used)"

    def allows(self, drop: float, baseline_score: float) -> bool:
        return self.normalised(drop, baseline_score) <= self.value + 1e-12

    def admits(self, candidate: Scored, baseline_score: float) -> bool:
        """Whether `candidate` is within budget under this budget's rule."""
        drop = candidate.drop_high if self.rule == "upper" else candidate.drop
        return self.allows(drop, baseline_score)

    def normalised(self, drop: float, baseline_score: float) -> float:
        """The drop in the budget's own terms (relative drops divide by the baseline)."""
        if not self.relative:
            return drop
        return drop / baseline_score if baseline_score > 0 else math.inf


@dataclass(frozen=True)
class Scored:
    """One candidate's figures, as the rule sees them. `gain` is the objective as a ratio to
    the baseline where higher is better (speed-up, throughput ratio, size or memory saved)."""

    name: str
    drop: float  # loss in the model's metric against the baseline (absolute units)
    gain: float
    size_ratio: float
    drop_high: float = -1.0  # the upper end of the drop's 95% interval; < drop: not known

    def __post_init__(self) -> None:
        if self.drop_high < self.drop:  # no interval: the point is all there is
            object.__setattr__(self, "drop_high", self.drop)


@dataclass(frozen=True)
class Choice:
    best: Scored | None  # None: nothing is within budget
    feasible: tuple[Scored, ...]  # within budget, best first
    closest: tuple[Scored, ...]  # when nothing is within budget: smallest drop first


def choose(
    candidates: Sequence[Scored], budget: Budget, baseline_score: float, closest: int = 3
) -> Choice:
    """The fastest (or smallest ...) within budget. Gains within `TIE` of the best are a tie
    (closer than latency can be told apart on a shared machine), won by the smaller drop."""
    feasible = sorted(
        (c for c in candidates if budget.admits(c, baseline_score)),
        key=lambda c: (-c.gain, c.drop),
    )
    if feasible:
        tied = [c for c in feasible if c.gain >= feasible[0].gain * (1 - TIE)]
        best = min(tied, key=lambda c: (c.drop, -c.gain))
        return Choice(best, tuple(feasible), ())
    nearest = sorted(candidates, key=lambda c: (c.drop, -c.gain))[:closest]
    return Choice(None, (), tuple(nearest))


def choose_against_original(
    candidates: Sequence[Scored], budget: Budget, baseline_score: float
) -> Choice:
    """`choose` with the original model as one more candidate (no drop, gain 1): a candidate
    measurably slower (or larger ...) than the model it came from is never the answer. The
    original wins when every candidate within budget loses to it or ties with it (within TIE,
    where the smaller drop, the original's 0, wins)."""
    original = Scored(ORIGINAL, 0.0, 1.0, 1.0)
    return choose([*candidates, original], budget, baseline_score)


def pareto(
    candidates: Sequence[Scored], better: Callable[[Scored], float] = lambda c: c.gain
) -> list[Scored]:
    """The candidates no other beats on both fidelity (smaller drop) and `better` (larger);
    sorted by drop. Use `better=lambda c: 1 / c.size_ratio` for the size frontier."""
    frontier: list[Scored] = []
    for c in sorted(candidates, key=lambda c: (c.drop, -better(c))):
        if not frontier or better(c) > better(frontier[-1]):
            frontier.append(c)
    return frontier
