"""The metric the accuracy budget is counted in: a built-in one (`top1` on labels, `retrieval`
mean nDCG@10 for embeddings, `embedding` nearest-neighbour agreement, plain output
`agreement`) or the user's own function, named
`module:function`, called as `function(outputs, labels) -> float` (higher is better; `labels`
is None when the data has none; `outputs` is the first output, one row per sample). Beside it,
every output's channels are always compared (search.fidelity).

A user's function is called on the baseline's outputs before anything else runs, so one that
raises or returns something other than a number stops the search at once with its name.

Each metric states its default budget (DEFAULT_BUDGETS), taken when --max-drop is not given:
1% of mean nDCG@10 for `retrieval` (nDCG@10 >= 0.99 of the baseline's 1), 0.5% for the rest."""

from __future__ import annotations

import importlib
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np

from inferopt.data import Dataset
from inferopt.errors import InputError, first_line
from inferopt.measure import fidelity
from inferopt.measure.fidelity import propose_decisions
from inferopt.measure.interval import samples_needed
from inferopt.model import Model
from inferopt.search.evaluate import MetricName, metric_for
from inferopt.search.fidelity import Fidelity, Judge, Outputs, first_matrix
from inferopt.search.select import Budget, Rule

# The budget when the user gives none, by metric: relative to the baseline's score.
DEFAULT_BUDGETS: dict[str, Budget] = {"retrieval": Budget(0.01, relative=True)}
OTHER_BUDGET = Budget(0.005, relative=True)  # every metric not in DEFAULT_BUDGETS
UNITS = {
    "retrieval": "mean nDCG@10",
    "embedding": "top-1 neighbour agreement",
    "top1": "top-1 accuracy",
    "agreement": "agreement with the baseline",
}

UserMetric = Callable[[np.ndarray, np.ndarray | None], Any]


@dataclass(frozen=True)
class Metric:
    name: str  # as the user wrote it, or the built-in chosen for the data
    builtin: MetricName  # always computed: cosine and agreement with the baseline
    custom: UserMetric | None = None

    @staticmethod
    def resolve(spec: str | None, data: Dataset, model: Model, declared: Any = None) -> Metric:
        """`spec` from --metric; else the zoo's declared metric or one chosen from the data."""
        if spec is None or spec in get_args(MetricName):
            chosen = metric_for(data, model, spec or declared)  # type: ignore[arg-type]
            if chosen == "top1" and data.labels is None:
                raise InputError("--metric top1 needs labels: the data has none")
            return Metric(chosen, chosen)
        if ":" not in spec:
            names = ", ".join(get_args(MetricName))
            raise InputError(f"--metric {spec!r}: not one of {names}, nor module:function")
        return Metric(spec, metric_for(data, model), _import(spec))

    def judge(
        self,
        data: Dataset,
        reference: Outputs,
        channel_axes: dict[str, int | None] | None = None,
    ) -> Judge:
        """What every candidate is compared with: this metric, every output's channels (the
        last axis unless `channel_axes` names another) and the decisions that the outputs'
        names and values suggest (argmax of class scores, sign of a logit). A user's function
        is called on the baseline's outputs here, so one that fails stops the search at once."""
        axes = dict(channel_axes or {})
        unknown = set(axes) - set(reference.alone[0])
        if unknown:
            outputs = list(reference.alone[0])
            raise InputError(f"--channel-axis names {sorted(unknown)}; the outputs are {outputs}")
        judge = Judge(
            self.name,
            self.builtin,
            data.labels,
            self._checked if self.custom is not None else None,
            axes,
            propose_decisions(reference.alone, axes),
        )
        self.baseline_score(reference, data)  # fails early on a bad user function
        return judge

    def baseline_score(self, reference: Outputs, data: Dataset) -> float:
        """The baseline's own score: what relative budgets are taken of (1 for agreement)."""
        first = next(iter(reference.alone[0]))
        matrix = first_matrix(reference.alone, first)
        if matrix is None:
            return 1.0
        if self.custom is not None:
            return self._checked(matrix, data.labels)
        if self.builtin == "top1" and data.labels is not None:
            return fidelity.top1(matrix, data.labels)
        return 1.0

    def _checked(self, got: np.ndarray, labels: np.ndarray | None) -> float:
        assert self.custom is not None
        try:
            value = self.custom(got, labels)
        except Exception as exc:
            raise InputError(f"--metric {self.name}: raised {first_line(exc, named=True)}") from exc
        if isinstance(value, np.ndarray) and value.size == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InputError(f"--metric {self.name}: returned {type(value).__name__}, not a number")
        if not math.isfinite(float(value)):
            raise InputError(f"--metric {self.name}: returned {value}, not a finite number")
        return float(value)


def parse_channel_axis(text: str) -> tuple[str, int | None]:
    """`--channel-axis OUTPUT:AXIS` (AXIS an integer of the output with its batch axis, or
    `none`: the whole output is one channel)."""
    name, sep, axis = text.rpartition(":")
    if not sep or not name:
        raise InputError(
            f"--channel-axis {text!r}: write OUTPUT:AXIS, e.g. boxes:2 or embedding:none"
        )
    if axis.lower() == "none":
        return name, None
    try:
        return name, int(axis)
    except ValueError:
        raise InputError(f"--channel-axis {text!r}: AXIS must be an integer or none") from None


def _import(spec: str) -> UserMetric:
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise InputError(
            f"--metric {spec!r}: cannot import {module_name!r} ({first_line(exc)})"
        ) from exc
    function = getattr(module, attribute, None)
    if not callable(function):
        raise InputError(f"--metric {spec!r}: {module_name} has no function {attribute!r}")
    return function  # type: ignore[no-any-return]


def resolve_budget(given: Budget | None, metric: str, rule: Rule = "upper") -> Budget:
    """`given` (--max-drop) when there is one; else `metric`'s default (DEFAULT_BUDGETS, else
    OTHER_BUDGET) under `rule`, marked as that metric's default."""
    if given is not None:
        return given
    default = DEFAULT_BUDGETS.get(metric, OTHER_BUDGET)
    return Budget(default.value, default.relative, rule, default_for=metric)


def budget_text(budget: Budget, metric: str) -> str:
    """The budget and where it came from, e.g. "1% of mean nDCG@10 (default for retrieval)"
    or "0.005 of top-1 accuracy (given)"."""
    unit = UNITS.get(metric, metric)
    amount = f"{budget.value:.4g}" if not budget.relative else f"{100 * budget.value:.4g}%"
    origin = f"default for {budget.default_for}" if budget.default_for else "given"
    return f"{amount} of {unit} ({origin})"


def budget_warnings(
    budget: Budget,
    metric: str,
    baseline_score: float,
    samples: int,
    measured: list[tuple[str, Fidelity]],
) -> list[str]:
    """Lines that say when the budget cannot be trusted on this data. `measured`: (name,
    fidelity) pairs on the whole held-out set, the noise floor first when there is one. Warns
    when the noise floor's metric drop reaches past the budget at the upper end of its 95%
    interval, and when a metric interval's half-width is over half the budget (the data can
    then not tell a drop of half the budget from none)."""
    limit = budget.value * baseline_score if budget.relative else budget.value
    unit, lines = UNITS.get(metric, metric), []
    noise = next((f for name, f in measured if name == NOISE), None)
    if noise is not None and noise.conditions:
        high = max(c.metric_interval[1] for c in noise.conditions)
        if high > limit + 1e-12:
            lines.append(
                f"the budget ({budget_text(budget, metric)}, a drop of {limit:.4g}) is below the "
                f"metric's noise floor (95% upper bound {high:.4g}): damage and noise look alike"
            )
    spans = [
        ((c.metric_interval[1] - c.metric_interval[0]) / 2, name, c.name)
        for name, f in measured
        for c in f.conditions
    ]
    if spans and limit > 0:
        half, name, where = max(spans)
        if half > limit / 2:
            needed = samples_needed(max(samples, 1), half, limit / 2)
            lines.append(
                f"the 95% interval of {unit} on {samples} held-out samples is +-{half:.4g} "
                f"for {name} ({where}), over half the budget ({limit:.4g}): about {needed} "
                "samples would resolve it"
            )
    return lines


NOISE = "the noise floor"  # the name budget_warnings expects for the baseline batched


def noise_line(noise: Fidelity, metric: str) -> str:
    """The noise floor in words: the metric's drop for the baseline batched against itself
    alone, with its 95% interval and half-width."""
    unit = UNITS.get(metric, metric)
    worst = max(noise.conditions, key=lambda c: c.metric_interval[1], default=None)
    if worst is None:
        return f"noise floor: {unit} not measured"
    lo, hi = worst.metric_interval
    return (
        f"noise floor (the baseline in batches against itself alone): {unit} drop "
        f"{worst.metric_drop:.4f} [{lo:.4f}, {hi:.4f}] (95% interval, half-width "
        f"{(hi - lo) / 2:.4f})"
    )
