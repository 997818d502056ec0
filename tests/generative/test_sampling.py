"""next_token: greedy, seeded sampling, and temperatures small enough to overflow."""

from __future__ import annotations

import numpy as np

from inferopt.generative.sampling import next_token


def test_a_vanishing_temperature_is_greedy_not_nan() -> None:
    logits = np.array([1.0, 3.0, 2.0, 3.0 - 1e-6])
    for temperature in (1e-320, 1e-30, 0.0):  # 1e-320 is subnormal: x / t overflows
        rng = np.random.default_rng(0)
        assert next_token(logits, temperature=temperature, top_k=0, top_p=1.0, rng=rng) == 1


def test_sampling_is_seeded_and_stays_in_the_top_k() -> None:
    logits = np.random.default_rng(1).standard_normal(50)
    draws = [next_token(logits, temperature=1.0, top_k=5, top_p=1.0,
                        rng=np.random.default_rng(seed)) for seed in range(40)]  # fmt: skip
    again = [next_token(logits, temperature=1.0, top_k=5, top_p=1.0,
                        rng=np.random.default_rng(seed)) for seed in range(40)]  # fmt: skip
    assert draws == again
    assert set(draws) <= set(np.argsort(logits)[-5:].tolist()) and len(set(draws)) > 1
