"""A training candidate trains for what the search's time budget has left, and is left out
when too little is left to train anything useful."""

from __future__ import annotations

import pytest

from inferopt.passes.recipe import Recipe
from inferopt.search import auto
from inferopt.search.space import Candidate
from inferopt.search.store import Outcome


class StoppedClock(auto.Clock):
    """A clock with a given time left."""

    def __init__(self, left_s: float) -> None:
        super().__init__(left_s)
        self._left = left_s

    def left(self) -> float:
        return self._left


def outcome(text: str, seconds: float, failed: str | None = None) -> Outcome:
    recipe = Recipe.parse(text)
    return Outcome(recipe.to_json(), text, "x", seconds, failed=failed)


DISTILL = Candidate(Recipe.parse("distill:layers=3,fuse"), "train")
DISTILL_INT8 = Candidate(Recipe.parse("distill:layers=3,fuse,int8-dynamic"), "train")
PLAIN = Candidate(Recipe.parse("fuse,int8-dynamic"), "int8-dynamic")


def test_training_gets_what_is_left_after_reserve_export_and_measuring() -> None:
    clock = StoppedClock(1000.0)
    done = [outcome("fuse", 20.0), outcome("fuse,fp16", 40.0)]
    train_s = auto._training_seconds(clock, done, DISTILL)
    assert train_s == pytest.approx(1000.0 - clock.reserve_s - auto.EXPORT_S - 30.0)
    assert auto._training_seconds(clock, done, PLAIN) is None


def test_training_left_out_when_too_little_time_is_left_but_not_once_trained() -> None:
    done = [outcome("fuse", 20.0)]
    short = StoppedClock(auto.MIN_TRAINING_S + auto.EXPORT_S)  # minus reserve and measuring
    train_s = auto._training_seconds(short, done, DISTILL)
    assert train_s is not None and train_s < auto.MIN_TRAINING_S
    assert not auto._affordable(short, done, DISTILL, train_s)
    # Once the student exists in this search, a combination with it costs a plain candidate,
    # not the training's 900 s.
    trained = [*done, outcome("distill:layers=3,fuse", 900.0)]
    assert auto._affordable(short, trained, DISTILL_INT8, train_s)
    assert not auto._affordable(StoppedClock(15.0), trained, DISTILL_INT8, train_s)
    # ... unless that training failed.
    failed = [*done, outcome("distill:layers=3,fuse", 400.0, failed="no")]
    assert not auto._affordable(short, failed, DISTILL_INT8, train_s)


def test_the_cap_lowers_the_family_default_never_raises_it() -> None:
    torch = pytest.importorskip("torch")
    from inferopt.compress.pipeline import CNN_TRAINING, TRANSFORMER_TRAINING, _training
    from inferopt.compress.steps import DistillStep

    step = DistillStep(layers=1)
    cnn = torch.nn.Linear(2, 2)
    assert _training(step, cnn).max_seconds == CNN_TRAINING.max_seconds
    assert _training(step, cnn, 50.0).max_seconds == 50.0

    class Encoder(torch.nn.Module):
        num_attention_heads = 2

    default = TRANSFORMER_TRAINING.max_seconds
    assert default is not None
    assert _training(step, Encoder(), default * 2).max_seconds == default
    assert _training(step, Encoder(), 30.0).max_seconds == 30.0
