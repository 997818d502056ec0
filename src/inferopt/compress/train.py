"""A small training loop for recovering accuracy after compression: AdamW, warm-up then
cosine decay, early stopping on a validation metric, seeded and (by default) single-threaded.

Training data is a `Dataset` (numpy feeds, one example each) plus, per example, the label
and/or the teacher's output; batches are padded along the sequence axis like evaluation's."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from inferopt.compress.config import FinetuneConfig
from inferopt.data import Dataset
from inferopt.errors import InputError


@dataclass(frozen=True)
class Batch:
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor | None  # int64 class ids
    teacher: torch.Tensor | None  # the teacher's first output for these examples


@dataclass(frozen=True)
class TrainData:
    """Examples with what the student learns from: labels, teacher outputs, or both."""

    examples: Dataset
    teacher: torch.Tensor | None = None  # [n, ...], row i for example i

    def __len__(self) -> int:
        return len(self.examples)

    def batch(self, indices: Sequence[int]) -> Batch:
        feed = self.examples.batch(list(indices))
        labels = self.examples.labels
        return Batch(
            {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feed.items()},
            torch.from_numpy(labels[list(indices)]).long() if labels is not None else None,
            self.teacher[list(indices)] if self.teacher is not None else None,
        )

    def batches(self, size: int) -> Iterator[Batch]:
        for start in range(0, len(self), size):
            yield self.batch(range(start, min(start + size, len(self))))

    def lengths(self) -> np.ndarray:
        """Each example's length along the sequence axis (all 1 without one)."""
        axis = self.examples.seq_axis
        if axis is None:
            return np.ones(len(self), dtype=np.int64)
        name = self.examples.input_names[0]
        return np.array([s[name].shape[axis] for s in self.examples.samples])

    def batch_order(
        self, order: np.ndarray, size: int, rng: np.random.Generator
    ) -> list[list[int]]:
        """Batches over `order`. With a sequence axis, examples of similar length share a
        batch (sorted within windows of 16 batches, then the batches shuffled): padding to
        the longest sentence otherwise doubles what a step costs."""
        if self.examples.seq_axis is None:
            return [[int(i) for i in order[s : s + size]] for s in range(0, len(order), size)]
        lengths = self.lengths()
        window = size * 16
        batches = []
        for start in range(0, len(order), window):
            part = sorted((int(i) for i in order[start : start + window]), key=lambda i: lengths[i])
            batches += [part[j : j + size] for j in range(0, len(part), size)]
        rng.shuffle(batches)  # type: ignore[arg-type]
        return batches

    def split(self, every: int) -> tuple[TrainData, TrainData]:
        """(train, validation): every `every`-th example validates. Deterministic, and drawn
        only from the data given for training: held-out evaluation data never gets here."""
        n = len(self)
        if n < 2 * every:
            raise InputError(f"{n} training examples are too few; at least {2 * every} needed")
        held = [i for i in range(n) if i % every == every - 1]
        rest = [i for i in range(n) if i % every != every - 1]
        return self._subset(rest), self._subset(held)

    def _subset(self, indices: list[int]) -> TrainData:
        teacher = self.teacher[indices] if self.teacher is not None else None
        return TrainData(self.examples.subset(indices), teacher)


Objective = Callable[[nn.Module, Batch], torch.Tensor]  # the loss of one batch
Score = Callable[[nn.Module, TrainData], float]  # validation metric, higher is better


@dataclass(frozen=True)
class TrainReport:
    epochs_run: int
    best_epoch: int  # 0: the weights before training were the best
    initial_score: float
    best_score: float
    losses: tuple[float, ...]  # mean training loss per epoch
    seconds: float
    steps: int = 0  # optimizer steps taken
    examples_seen: int = 0  # training examples through the student, repeats counted
    stopped: str = "epochs"  # "epochs", "patience" or "time"
    cached: bool = False  # True: the weights came from the student cache, not training

    def to_json(self) -> dict[str, Any]:
        return {
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "validation_before": round(self.initial_score, 5),
            "validation_after": round(self.best_score, 5),
            "train_seconds": round(self.seconds, 1),
            "losses": [round(x, 5) for x in self.losses],
            "steps": self.steps,
            "examples_seen": self.examples_seen,
            "stopped": self.stopped,
            "cached": self.cached,
        }


def forward(module: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The module's first output (the one the exported model names first)."""
    out = module(**inputs)
    while isinstance(out, tuple | list):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise InputError(f"{type(module).__name__} returned a {type(out).__name__}, not a tensor")
    return out


@torch.no_grad()
def predict(module: nn.Module, data: Dataset, batch_size: int = 64) -> torch.Tensor:
    """The module's outputs for every example, stacked (rows in the dataset's order)."""
    examples = TrainData(data)
    by_length = np.argsort(examples.lengths(), kind="stable")  # little padding per batch
    was_training = module.training
    module.eval()
    try:
        rows = [
            forward(module, examples.batch(by_length[s : s + batch_size].tolist()).inputs)
            for s in range(0, len(examples), batch_size)
        ]
    finally:
        module.train(was_training)
    shapes = {tuple(r.shape[1:]) for r in rows}
    if len(shapes) > 1:
        raise InputError(
            "fine-tuning without labels needs one fixed-size output per example; "
            f"this model's output varies with the input ({sorted(shapes)[:2]})"
        )
    stacked = torch.cat(rows)
    return stacked[torch.from_numpy(np.argsort(by_length))]  # back to the dataset's order


def finetune(
    module: nn.Module,
    objective: Objective,
    score: Score,
    data: TrainData,
    config: FinetuneConfig,
    *,
    after_step: Callable[[], None] | None = None,
    label: str = "fine-tuning",
    log: Callable[[str], None] | None = None,
) -> TrainReport:
    """Train `module` in place; keep the weights of the best validation. Validation after
    every epoch and every `config.validation_steps` steps; stops after `config.patience`
    validations without a better score, or at `config.max_seconds`. `log` gets a plain-text
    line every `config.log_seconds` (step, examples/s, loss, validation score)."""
    train, validation = data.split(config.validation_every)
    if config.validation_limit and len(validation) > config.validation_limit:
        validation = validation._subset(list(range(config.validation_limit)))
    run = _Run(module, objective, score, validation, config, after_step, label, log)
    with reproducible(config.seed, config.threads):
        run.start()
        steps_per_epoch = math.ceil(len(train) / config.batch_size)
        run.schedule = warmup_decay(
            run.optimizer, config, steps_per_epoch * config.epochs, run.elapsed
        )
        order_rng = np.random.default_rng(config.seed)
        with _progress(label, steps_per_epoch * config.epochs) as advance:
            for _ in range(config.epochs):
                order = train.batch_order(
                    order_rng.permutation(len(train)), config.batch_size, order_rng
                )
                stop = run.epoch(train, order, advance)
                # Also after a stop by the clock: the last weights deserve their score.
                if run.validate(end_of_epoch=True) or stop:
                    break
        return run.finish()


class _Run:
    """The state of one `finetune`: optimizer, best weights, counters, the clock."""

    def __init__(
        self,
        module: nn.Module,
        objective: Objective,
        score: Score,
        validation: TrainData,
        config: FinetuneConfig,
        after_step: Callable[[], None] | None,
        label: str,
        log: Callable[[str], None] | None,
    ) -> None:
        self.module, self.objective, self.score = module, objective, score
        self.validation, self.config, self.after_step = validation, config, after_step
        self.label, self.log = label, log
        self.optimizer = torch.optim.AdamW(
            [p for p in module.parameters() if p.requires_grad],
            lr=config.lr,
            weight_decay=config.weight_decay,
        )
        self.schedule: torch.optim.lr_scheduler.LRScheduler | None = None
        self.started = self.last_log = time.perf_counter()
        self.steps = self.examples = self.epochs = self.best_epoch = self.since_best = 0
        self.validated_at = -1
        self.losses: list[float] = []
        self.recent: list[float] = []
        self.stopped = "epochs"
        self.initial = self.best = self.current = 0.0
        self.best_state: dict[str, Any] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def start(self) -> None:
        self.initial = self.best = self.current = self.score(self.module, self.validation)
        self.best_state = copy.deepcopy(self.module.state_dict())

    def out_of_time(self) -> bool:
        cap = self.config.max_seconds
        return cap is not None and self.elapsed() >= cap

    def epoch(self, train: TrainData, order: list[list[int]], advance: Callable[[], None]) -> bool:
        """One pass over `order`; True when training must stop (time, patience)."""
        self.epochs += 1
        total, count = 0.0, 0
        for indices in order:
            loss = self.step(train.batch(indices))
            total, count = total + loss, count + 1
            advance()
            self._maybe_log()
            every = self.config.validation_steps
            stop = every > 0 and self.steps % every == 0 and self.validate(end_of_epoch=False)
            if stop or self.out_of_time():
                self.stopped = self.stopped if stop else "time"
                break
        self.losses.append(total / max(count, 1))
        return self.stopped != "epochs"

    def step(self, batch: Batch) -> float:
        self.module.train()
        self.optimizer.zero_grad()
        loss = self.objective(self.module, batch)
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        self.optimizer.step()
        if self.schedule is not None:
            self.schedule.step()
        if self.after_step is not None:
            self.after_step()
        self.steps += 1
        self.examples += len(next(iter(batch.inputs.values())))
        value = float(loss.detach())
        self.recent.append(value)
        return value

    def validate(self, *, end_of_epoch: bool) -> bool:
        """Score the weights, keep them if best; True when patience has run out."""
        if end_of_epoch and self.validated_at == self.steps:
            return False  # the step count's validation just scored these weights
        self.validated_at = self.steps
        self.module.eval()
        self.current = self.score(self.module, self.validation)
        # Ties count as progress: a small validation set saturates (100% top-1), and later
        # weights of the decaying schedule are the better-settled ones.
        if self.current >= self.best:
            self.best, self.best_epoch, self.since_best = self.current, self.epochs, 0
            self.best_state = copy.deepcopy(self.module.state_dict())
            return False
        self.since_best += 1
        if self.since_best >= self.config.patience:
            self.stopped = "patience" if self.stopped == "epochs" else self.stopped
            return True
        return False

    def _maybe_log(self) -> None:
        now = time.perf_counter()
        if self.log is None or now - self.last_log < self.config.log_seconds:
            return
        loss = sum(self.recent) / max(len(self.recent), 1)
        self.log(
            f"{self.label}: step {self.steps}, {self.examples / self.elapsed():.1f} examples/s, "
            f"loss {loss:.4f}, validation {self.current:.4f} (best {self.best:.4f}), "
            f"{self.elapsed():.0f} s"
        )
        self.last_log, self.recent = now, []

    def finish(self) -> TrainReport:
        self.module.load_state_dict(self.best_state)
        self.module.eval()
        return TrainReport(
            self.epochs,
            self.best_epoch,
            self.initial,
            self.best,
            tuple(self.losses),
            self.elapsed(),
            self.steps,
            self.examples,
            self.stopped,
        )


def warmup_decay(
    optimizer: torch.optim.Optimizer,
    config: FinetuneConfig,
    total_steps: int,
    elapsed: Callable[[], float] | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up (Adam's first steps on a freshly pruned model are the noisiest), then
    cosine or linear decay to zero, so the last steps settle rather than jump. With a time
    cap (`config.max_seconds` and `elapsed`, seconds since training began), progress is the
    larger of the step and time fractions: a run cut by the clock still decays."""
    warmup = max(1, int(total_steps * config.warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        if config.max_seconds is not None and elapsed is not None:
            progress = max(progress, elapsed() / config.max_seconds)
        progress = min(1.0, progress)
        if config.schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


warmup_cosine = warmup_decay  # the earlier name


@contextlib.contextmanager
def reproducible(seed: int, threads: int = 1) -> Iterator[None]:
    """Seed torch, demand deterministic kernels and a fixed thread count; restore the
    caller's state. CPU kernels split their sums by thread count, so the result depends on
    it; one thread also avoids idle-spinning OpenMP threads on a loaded machine."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(was_threads)
            torch.use_deterministic_algorithms(was_deterministic)


@contextlib.contextmanager
def _progress(label: str, total: int) -> Iterator[Callable[[], None]]:
    """A transient progress bar on a terminal; silent otherwise (logs, CI, tests)."""
    console = Console(stderr=True)
    progress = Progress(
        TextColumn(label),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    with progress:
        task = progress.add_task(label, total=total)
        yield lambda: progress.advance(task)
