"""The next token from one row of logits: greedy, or sampled after temperature, top-k, top-p.

Pure numpy over one [vocab] row, so that a seeded `numpy.random.Generator` gives the same
tokens on every machine for the same logits.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def next_token(
    logits: npt.NDArray[np.floating],
    *,
    temperature: float,
    top_k: int,
    top_p: float,
    rng: np.random.Generator,
) -> int:
    """The id chosen from `logits` ([vocab], any float dtype).

    temperature 0 is greedy (the first of equal maxima, like `argmax`); otherwise the logits
    are divided by it, cut to the `top_k` largest (0: no cut), then to the smallest set of
    most likely tokens whose probability reaches `top_p` (1: no cut), and one id is drawn
    from what is left with `rng`. Arguments are validated by GenerationConfig, not here.
    """
    if temperature == 0.0:  # float64 keeps float32's order and ties: argmax needs no copy
        return int(np.argmax(logits))
    row = np.asarray(logits, dtype=np.float64).reshape(-1)
    candidates = np.arange(row.size)
    if 0 < top_k < row.size:
        # argpartition is O(vocab), a full sort is not needed to find the k largest.
        candidates = np.argpartition(row, -top_k)[-top_k:]
    # Shifted by the max before dividing: a tiny temperature then sends the others to -inf
    # (probability 0), not to inf - inf = NaN.
    with np.errstate(over="ignore"):
        scaled = (row[candidates] - row[candidates].max()) / temperature
    # Most likely first; a stable sort so that equal logits keep a fixed order.
    order = np.argsort(-scaled, kind="stable")
    candidates, scaled = candidates[order], scaled[order]
    probs = np.exp(scaled - scaled[0])
    probs /= probs.sum()
    if top_p < 1.0:
        # Keep tokens up to and including the one that takes the total to top_p.
        keep = int(np.searchsorted(np.cumsum(probs), top_p)) + 1
        candidates, probs = candidates[:keep], probs[:keep]
        probs /= probs.sum()
    return int(candidates[rng.choice(candidates.size, p=probs)])
