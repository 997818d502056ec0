"""The metric the accuracy budget is counted in: a built-in one (`top1` on labels, `embedding`
nearest-neighbour agreement, plain output `agreement`) or the user's own function, named
`module:function`, called as `function(outputs, labels) -> float` (higher is better; `labels`
is None when the data has none).

A user's function is called on the baseline's outputs before anything else runs, so one that
raises or returns something other than a number stops the search at once with its name."""

from __future__ import annotations

import importlib
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, get_args

import numpy as np

from inferopt.data import Dataset
from inferopt.errors import InputError, first_line
from inferopt.model import Model
from inferopt.search.evaluate import Fidelity, MetricName, fidelity_of, metric_for

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

    def fidelity(self, got: np.ndarray, reference: np.ndarray, data: Dataset) -> Fidelity:
        fid = fidelity_of(got, reference, data, self.builtin)
        if self.custom is None:
            return fid
        return replace(
            fid, task_score=self.score(got, data), baseline_task_score=self.score(reference, data)
        )

    def score(self, got: np.ndarray, data: Dataset) -> float:
        if self.custom is None:
            raise ValueError("built-in metrics are scored by fidelity()")
        try:
            value = self.custom(got, data.labels)
        except Exception as exc:
            raise InputError(f"--metric {self.name}: raised {first_line(exc, named=True)}") from exc
        if isinstance(value, np.ndarray) and value.size == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InputError(f"--metric {self.name}: returned {type(value).__name__}, not a number")
        if not math.isfinite(float(value)):
            raise InputError(f"--metric {self.name}: returned {value}, not a finite number")
        return float(value)

    def baseline_score(self, reference: np.ndarray, data: Dataset) -> float:
        """The baseline's own score: what relative budgets are taken of."""
        score = self.fidelity(reference, reference, data).baseline_task_score
        return 1.0 if score is None else score  # agreement with itself


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
