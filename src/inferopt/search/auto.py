"""`inferopt optimize` without a recipe: search the recipes that apply to this model on this
machine and return the best on the objective (batch-1 latency by default) among those whose
fidelity drop is within the user's budget, with every candidate's figures and the Pareto set.

One straight line of named stages:
  baseline -> space -> screen (every candidate: fidelity, short latency probe)
  -> fallbacks (int8 recipes that missed the budget, with sensitive nodes kept in float)
  -> confirm (the shortlist: full interleaved comparison) -> choose -> threads -> write."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from inferopt import artifact, zoo
from inferopt.errors import InputError
from inferopt.model import Model
from inferopt.passes.base import PassContext
from inferopt.passes.recipe import Recipe
from inferopt.recipes import resolve_data
from inferopt.search import space, training, write
from inferopt.search.evaluate import LatencyComparison, comparison_seconds
from inferopt.search.executor import INLINE, Executor, Job, Lookahead
from inferopt.search.fidelity import Fidelity, checks, noise_floor, run_outputs
from inferopt.search.metric import Metric, resolve_budget
from inferopt.search.screen import (
    FULL_FEEDS,
    FULL_ROUNDS,
    Bench,
    ThroughputShape,
    batch1_seconds,
    both_objectives,
    both_objectives_cost,
    confirm,
    feed_seconds,
    finished_line,
    memory_bytes,
    screen,
)
from inferopt.search.select import (
    OBJECTIVES,
    ORIGINAL,
    Budget,
    Choice,
    Objective,
    Rule,
    Scored,
    choose,
    choose_against_original,
)
from inferopt.search.store import Outcome, Store
from inferopt.search.threads import ThreadChoice, tune_threads
from inferopt.sources import load

MIN_RESERVE_S = 10.0  # writing the artifact, at least
PROXY_FACTOR, PROXY_MARGIN = 3.0, 0.05  # see proxy_limit
FALLBACK_ROOTS = 2  # int8 recipes that missed the budget whose fallback depths are tried
GIVE_UP_AFTER = 3  # candidates of a family screened out in a row: the rest are not tried
TRAINING_PRIOR_S = 120.0  # a first training candidate's estimate, before any has run
# A training candidate trains for what the budget has left after the reserve and its own
# export and measurement (EXPORT_S plus a plain candidate's cost); under MIN_TRAINING_S it is
# left out, as a few minutes of distillation on 2 cores makes no usable student.
MIN_TRAINING_S, EXPORT_S = 180.0, 60.0
# A first fallback's estimate, in plain candidates of its family: measured on minilm, 265 s
# against 17-33 s (the sensitivity scan quantizes and runs each of 36 nodes alone).
FALLBACK_FACTOR = 9.0


@dataclass(frozen=True)
class SearchConfig:
    # None: the metric's default (search.metric.DEFAULT_BUDGETS: 1% for retrieval, else 0.5%),
    # under `budget_rule`; `optimize` resolves it once the metric is known (see `budget`).
    max_drop: Budget | None = None
    budget_rule: Rule = "upper"
    objective: Objective = "latency"
    time_budget_s: float = 600.0
    metric: str | None = None  # a built-in metric name or module:function; None: the data's
    shortlist: int = 3  # candidates given the full interleaved comparison
    fresh: bool = False  # measure again candidates that an earlier run finished
    training: bool = True  # try pruning and distillation when the source can be trained
    throughput: ThroughputShape = field(default_factory=ThroughputShape)  # timed at
    # output -> its channel axis (None: the whole output is one channel); default: the last
    channel_axes: dict[str, int | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}")
        if not self.time_budget_s > 0:
            raise ValueError(f"the time budget must be positive, got {self.time_budget_s} s")
        if self.shortlist < 1:
            raise ValueError("shortlist must be at least 1")

    @property
    def budget(self) -> Budget:
        """The budget in force: `max_drop`, given or resolved by `optimize` (`resolve_budget`)."""
        if self.max_drop is None:
            raise ValueError("the budget is the metric's default, known once optimize() runs")
        return self.max_drop


@dataclass(frozen=True)
class BaselineFigures:
    size_bytes: int
    score: float  # the metric's value for the baseline (what relative budgets are taken of)
    memory_bytes: int | None
    seconds: float  # to load it and compute its reference outputs
    noise: Fidelity | None = None  # the baseline batched against itself alone: the noise floor


@dataclass
class SearchResult:
    source: str
    config: SearchConfig
    baseline: BaselineFigures
    metric: str
    data_origin: str
    outcomes: list[Outcome]
    choice: Choice
    chosen: Outcome | None = None
    threads: ThreadChoice | None = None
    skipped: list[str] = field(default_factory=list)  # left out for lack of time
    checks: dict[str, Any] = field(default_factory=dict)  # what fidelity was measured on
    kept_original: bool = False  # candidates were within budget, but none beat the original
    wall_s: float = 0.0
    out: Path | None = None
    # The chosen model against the baseline at batch 1 ("latency") and at the throughput
    # shape ("throughput"), whichever objective was searched for; see `timed_at`.
    objectives: dict[str, LatencyComparison] = field(default_factory=dict)
    timed_at: dict[str, str] = field(default_factory=dict)  # objective -> its inputs in words

    def scored(self) -> list[Scored]:
        return scored(self.outcomes, self.config, self.baseline)


class Clock:
    """The time budget. Part of it is held back for confirming the shortlist and choosing
    threads, estimated from what one run of the baseline costs."""

    def __init__(self, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.budget_s = budget_s
        self.reserve_s = MIN_RESERVE_S

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def can_afford(self, estimate_s: float) -> bool:
        return estimate_s + self.reserve_s <= self.left()


Progress = Callable[[str], None]


def optimize(
    source: Any = zoo.DEFAULT,
    out: str | Path | None = None,
    *,
    data: str | Path | None = None,
    config: SearchConfig = SearchConfig(),
    progress: Progress | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    executor: Executor = INLINE,
) -> SearchResult:
    """Search, choose, and (with `out`) write the artifact folder. The result says whether a
    candidate met the budget (`result.chosen`); when none did, `out` holds the closest ones.
    `executor`: where every timed measurement runs (this process by default; a Ray cluster's
    nodes with search.distributed.optimize_on_ray)."""
    tell = progress or (lambda _: None)
    clock = Clock(config.time_budget_s)
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        artifact.check_destination(out_path)
    label = source if isinstance(source, str) else type(source).__name__
    bench, figures = prepare(source, data, config, clock, shapes, tell, executor)
    budget = resolve_budget(config.max_drop, bench.metric.name, config.budget_rule)
    config = dataclasses.replace(config, max_drop=budget)
    timing = "" if config.objective != "throughput" else f", {bench.timed_at()}"
    datasets, metric = (bench.data.calibration, bench.data.evaluation), bench.metric.name
    store = Store.for_search(bench.baseline, datasets, metric + timing, executor.fingerprint)
    result = SearchResult(
        str(label), config, figures, bench.metric.name, bench.data.origin, [], Choice(None, (), ())
    )
    result.checks = checks(
        bench.judge, bench.data.evaluation, bench.reference, figures.noise, bench.baseline.io
    )
    best_so_far = write.BestSoFar(out_path, result)
    facts = space.Facts.of(bench.baseline, has_data=True, trainable=_trainable(source, config))
    queue = space.candidates(facts, training.prefixes(bench.baseline) if facts.trainable else ())
    families = list(dict.fromkeys(c.family for c in queue))  # in order, cheap families first
    for family in families:
        batch = [c for c in queue if c.family == family]
        run_candidates(batch, bench, store, clock, result, best_so_far, tell, executor)
    # Fallbacks last: every route, training included, is tried once before these rescues of
    # INT8 recipes that missed (each one's sensitivity scan costs minutes on a transformer).
    for family in families:
        for depths in fallback_queue(result, family):  # per root, shallowest first
            for deeper in depths:
                run_candidates([deeper], bench, store, clock, result, best_so_far, tell, executor)
                if within_budget(result, result.outcomes[-1]):
                    break  # a deeper fallback would only be slower
    confirm_shortlist(bench, store, result, clock, tell, executor)
    result.choice = final_choice(result)
    best = result.choice.best
    result.kept_original = best is not None and best.name == ORIGINAL
    result.chosen = None if result.kept_original else _outcome(result, best)
    chosen_model = bench.baseline if result.kept_original else None
    if result.chosen is not None:
        chosen_model = store.model(result.chosen)  # read once: threads and the artifact
        tell(f"choosing thread settings for {result.chosen.text}")
        result.threads = executor.run("threads", tune_threads, bench, chosen_model)
        tell("timing the chosen model at batch 1 and at the throughput shape")
        ran = result.threads.against_baseline or result.chosen.full
        threads = result.threads.intra_op_threads
        result.objectives = executor.run(
            "both objectives", both_objectives, bench, chosen_model, ran, threads
        )
        result.timed_at = {o: bench.timed_at(o) for o in result.objectives}
    result.wall_s = clock.elapsed()
    if out_path is not None:
        result.out = write.final(out_path, result, store, chosen_model)
    return result


def prepare(
    source: Any,
    data: str | Path | None,
    config: SearchConfig,
    clock: Clock,
    shapes: dict[str, tuple[int, ...]] | None = None,
    tell: Progress = lambda _: None,
    executor: Executor = INLINE,
) -> tuple[Bench, BaselineFigures]:
    """Load and measure the baseline (on `executor`, as the candidates are: its reference
    outputs too, so both come from the same kind of machine); refuse a time budget it alone
    exhausts."""
    tell(f"loading {source if isinstance(source, str) else type(source).__name__} ...")
    baseline = load(source, shapes=shapes)
    chosen = resolve_data(baseline, data)
    metric = Metric.resolve(config.metric, chosen.evaluation, baseline, chosen.metric)
    per_sample_s = executor.run("baseline", batch1_seconds, baseline, chosen.evaluation)
    tell(
        f"baseline: {1e3 * per_sample_s:.1f} ms/sample at batch 1; reference outputs on "
        f"{len(chosen.evaluation)} held-out samples, alone and in batches ({clock.elapsed():.0f} s)"
    )
    reference = executor.run("baseline outputs", run_outputs, baseline, chosen.evaluation)
    judge = metric.judge(chosen.evaluation, reference, config.channel_axes)
    context = PassContext.for_model(baseline, chosen.calibration)
    score = metric.baseline_score(reference, chosen.evaluation)
    limit = proxy_limit(resolve_budget(config.max_drop, metric.name, config.budget_rule), score)
    bench = Bench(
        source, baseline, chosen, metric, reference, judge, context, config.objective,
        per_sample_s, limit, config.throughput,
    )  # fmt: skip
    if config.objective == "throughput":  # estimates count feeds: here, parts of a batch
        per_feed_s = executor.run("baseline throughput", feed_seconds, bench, "throughput")
        bench = dataclasses.replace(bench, per_sample_s=per_feed_s)
    memory = None
    if config.objective == "memory":
        memory = executor.run("baseline memory", memory_bytes, baseline, bench)
    noise = noise_floor(judge, reference)
    figures = BaselineFigures(baseline.size_bytes, score, memory, round(clock.elapsed(), 2), noise)
    # Held back: the first confirmation and the thread choice; later confirmations are made
    # only while time is left (confirm_shortlist), so a short budget still tries candidates.
    clock.reserve_s = MIN_RESERVE_S + 2 * confirm_cost(bench.per_sample_s)
    clock.reserve_s += executor.run("baseline, both objectives", both_objectives_cost, bench)
    if clock.elapsed() >= config.time_budget_s:
        raise InputError(
            f"--time-budget {config.time_budget_s:g} s is too small: loading and measuring the "
            f"baseline alone took {clock.elapsed():.0f} s"
        )
    return bench, figures


def proxy_limit(budget: Budget, baseline_score: float) -> float:
    """The drop on the proxy sample past which a candidate is not worth measuring further:
    well beyond the budget, so sampling noise cannot reject one that would have passed."""
    absolute = budget.value * baseline_score if budget.relative else budget.value
    return max(PROXY_FACTOR * absolute, absolute + PROXY_MARGIN)


def run_candidates(
    queue: Iterable[space.Candidate],
    bench: Bench,
    store: Store,
    clock: Clock,
    result: SearchResult,
    best_so_far: write.BestSoFar,
    tell: Progress,
    executor: Executor = INLINE,
) -> None:
    """Each candidate in turn: built and screened, or taken from the store, or skipped. With
    an executor of several nodes the next ones start early, but are judged in this order."""
    pending = list(queue)
    rejected_in_a_row = 0

    def start(index: int) -> Job[tuple[Outcome, Model | None]] | None:
        later = pending[index]
        if not result.config.fresh and store.get(later.recipe.to_json()) is not None:
            return None
        train_s = _training_seconds(clock, result.outcomes, later)
        if not _affordable(clock, result.outcomes, later, train_s):
            return None
        return executor.submit(later.text, screen, later, bench, train_s)

    ahead = Lookahead(executor.width, len(pending), start)
    for index, candidate in enumerate(pending, 1):
        if rejected_in_a_row >= GIVE_UP_AFTER:
            result.skipped.append(f"{candidate.text} (its family is far over budget)")
            ahead.skip(index - 1)
            continue
        stored = None if result.config.fresh else store.get(candidate.recipe.to_json())
        train_s = _training_seconds(clock, result.outcomes, candidate)
        if stored is None and not _affordable(clock, result.outcomes, candidate, train_s):
            result.skipped.append(f"{candidate.text} (time)")
            ahead.skip(index - 1)
            continue
        tell(f"candidate {index} of {len(pending)}: {candidate.text} · {best_so_far.summary()}")
        if stored is not None:
            # Today's spelling of the recipe; confirmations belong to the run that made them.
            outcome = dataclasses.replace(stored, text=candidate.text, full=None, memory_bytes=None)
            if not outcome.failed:
                best_so_far.offer(outcome, partial(store.model, outcome))
        else:
            submit = partial(executor.submit, candidate.text, screen, candidate, bench, train_s)
            job = ahead.take(index - 1, submit)
            outcome, model = job.result()
            outcome = dataclasses.replace(outcome, node=job.node)
            store.put(outcome, model)
            if model is not None:
                best_so_far.offer(outcome, partial(_same, model))
        result.outcomes.append(outcome)
        row = scored([outcome], result.config, result.baseline)[0]
        tell(finished_line(outcome, row, within_budget(result, outcome), bench.timed_at()))
        rejected_in_a_row = rejected_in_a_row + 1 if outcome.rejected else 0


def fallback_queue(result: SearchResult, family: str) -> list[list[space.Candidate]]:
    """Deeper float fallback for the int8 recipes of `family` that missed the budget by the
    least (screened out or not), then those whose pass failed its own check (a channel
    damaged): tried right after their family, before costlier ones."""
    if not family.startswith("int8"):
        return []
    missed = [
        (s.drop if o.fidelity is not None else float("inf"), o)
        for o, s in zip(result.outcomes, result.scored(), strict=True)
        if o.family == family
        and "fallback" not in o.text
        and (o.failed is not None or not result.config.budget.admits(s, result.baseline.score))
    ]
    missed.sort(key=lambda pair: pair[0])
    return [
        space.fallbacks(space.Candidate(Recipe.from_json(o.recipe), o.family))
        for _, o in missed[:FALLBACK_ROOTS]
    ]


def within_budget(result: SearchResult, outcome: Outcome) -> bool:
    row = scored([outcome], result.config, result.baseline)[0]
    return outcome.fidelity is not None and result.config.budget.admits(row, result.baseline.score)


def confirm_shortlist(
    bench: Bench,
    store: Store,
    result: SearchResult,
    clock: Clock,
    tell: Progress,
    executor: Executor = INLINE,
) -> None:
    """The full interleaved comparison for the best few within budget (by the probe); the
    first always, the others while the time budget lasts."""
    shortlist = choose(result.scored(), result.config.budget, result.baseline.score).feasible
    shortlist = shortlist[: result.config.shortlist]
    cost = confirm_cost(bench.per_sample_s)
    for rank, scored_one in enumerate(shortlist, 1):
        if rank > 1 and clock.left() < cost + MIN_RESERVE_S + cost:  # keep one for threads
            result.skipped.append(f"confirming {scored_one.name}")
            continue
        index = _index(result, scored_one)
        outcome = result.outcomes[index]
        tell(f"confirming {rank} of {len(shortlist)}: {outcome.text}")
        model = store.model(outcome)
        confirmed = executor.run(f"confirm {outcome.text}", confirm, outcome, model, bench)
        result.outcomes[index] = dataclasses.replace(confirmed, cached=outcome.cached)
        if confirmed.full is not None:
            tell(f"confirmed {outcome.text}: {confirmed.full.speedup:.2f}x at {bench.timed_at()}")


def confirm_cost(per_sample_s: float) -> float:
    """Seconds for one full interleaved comparison: both models, every round, every feed,
    with a margin for warm-up and for rounds stretched to their minimum length."""
    return 1.5 * comparison_seconds(FULL_ROUNDS, FULL_FEEDS * per_sample_s)


def final_choice(result: SearchResult) -> Choice:
    """Only confirmed candidates can win: the probe ranks, the full comparison decides; and
    only over the original (see select.choose_against_original)."""
    rows = result.scored()
    confirmed = [s for s, o in zip(rows, result.outcomes, strict=True) if o.full is not None]
    budget, score = result.config.budget, result.baseline.score
    if choose(confirmed, budget, score).best is None:  # none within budget: the closest
        return choose(rows, budget, score)
    return choose_against_original(confirmed, budget, score)


def scored(outcomes: list[Outcome], config: SearchConfig, base: BaselineFigures) -> list[Scored]:
    """Every candidate as the selection rule sees it, aligned with `outcomes`. Failed ones
    count as infinitely bad; screened-out ones carry the drop on the proxy sample. A drop is
    the worst of the metric's and every channel's (search.fidelity), with its upper bound."""
    rows = []
    relative = config.budget.relative
    for o in outcomes:
        if o.fidelity is None:  # failed: never within budget, last among the closest
            rows.append(Scored(o.text, float("inf"), 0.0, 1.0))
            continue
        drop = o.fidelity.budget_drop(base.score, relative, upper=False)
        high = o.fidelity.budget_drop(base.score, relative, upper=True)
        rows.append(
            Scored(o.text, drop, gain(o, config.objective, base), _size_ratio(o, base), high)
        )
    return rows


def gain(outcome: Outcome, objective: Objective, base: BaselineFigures) -> float:
    """The objective as a ratio to the baseline, higher is better."""
    if outcome.latency is None:
        return 0.0
    if objective in ("latency", "throughput"):
        return outcome.latency.speedup
    if objective == "memory" and outcome.memory_bytes and base.memory_bytes:
        return base.memory_bytes / outcome.memory_bytes
    return base.size_bytes / max(outcome.size_bytes, 1)  # size, and memory's proxy


def _size_ratio(outcome: Outcome, base: BaselineFigures) -> float:
    return outcome.size_bytes / base.size_bytes


def _estimate(outcomes: list[Outcome], candidate: space.Candidate) -> float:
    """Seconds a candidate is likely to take: the mean of its kind's so far (a fallback's of
    earlier fallbacks: its sensitivity scan quantizes every node alone, many times a plain
    candidate's cost), else of its family's, else of all."""
    built = [o for o in outcomes if not o.cached]
    fallback = _is_fallback(candidate.text)
    same = [o.seconds for o in built if o.family == candidate.family]
    alike = [o.seconds for o in built if o.family == candidate.family and _is_fallback(o.text)]
    if fallback and alike:
        return sum(alike) / len(alike)
    if not same and candidate.recipe.torch_steps:
        return TRAINING_PRIOR_S  # training is cached after the first, but costs minutes
    pool = same or [o.seconds for o in built]
    mean = sum(pool) / len(pool) if pool else 0.0
    return mean * FALLBACK_FACTOR if fallback else mean


def _training_seconds(
    clock: Clock, outcomes: list[Outcome], candidate: space.Candidate
) -> float | None:
    """The seconds a candidate's PyTorch steps may train: what the budget has left after the
    reserve, the export and the measurement (None: it has no PyTorch steps)."""
    if not candidate.recipe.torch_steps:
        return None
    return clock.left() - clock.reserve_s - EXPORT_S - _plain_cost(outcomes)


def _plain_cost(outcomes: list[Outcome]) -> float:
    """A candidate's seconds to build and measure without training: the mean of those built
    so far (TRAINING_PRIOR_S before any)."""
    built = [o.seconds for o in outcomes if not o.cached and not _torch_steps(o)]
    return sum(built) / len(built) if built else TRAINING_PRIOR_S


def _affordable(
    clock: Clock, outcomes: list[Outcome], candidate: space.Candidate, train_s: float | None
) -> bool:
    """Whether to start the candidate: a training one when MIN_TRAINING_S of training fits,
    or, once its PyTorch steps ran in this search (their model is cached), when a plain
    candidate's cost fits; others when their estimate fits."""
    if train_s is None:
        return clock.can_afford(_estimate(outcomes, candidate))
    steps = candidate.recipe.torch_steps
    if any(_torch_steps(o) == steps and o.failed is None for o in outcomes):
        return clock.can_afford(_plain_cost(outcomes))
    return train_s >= MIN_TRAINING_S


def _torch_steps(outcome: Outcome) -> tuple[Any, ...]:
    return tuple(Recipe.from_json(outcome.recipe).torch_steps)


def _is_fallback(text: str) -> bool:
    return "fallback=" in text


def _index(result: SearchResult, wanted: Scored) -> int:
    return next(i for i, o in enumerate(result.outcomes) if o.text == wanted.name)


def _outcome(result: SearchResult, wanted: Scored | None) -> Outcome | None:
    return None if wanted is None else result.outcomes[_index(result, wanted)]


def _same(model: Model) -> Model:
    return model


def _trainable(source: Any, config: SearchConfig) -> bool:
    return config.training and training.available(source)
