"""How close a candidate model's outputs are to the task's truth or to a reference model's."""

from __future__ import annotations

import numpy as np


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose highest logit is the label."""
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    unit: np.ndarray = flat / np.maximum(norms, 1e-12)
    return unit


def mean_cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean over rows of the cosine similarity between reference and candidate embeddings."""
    return float(np.mean(np.sum(_unit_rows(reference) * _unit_rows(candidate), axis=1)))


def nearest_neighbour_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Fraction of rows whose nearest other row (by cosine) is the same under both models:
    what a retrieval user sees change, which a mean cosine can hide."""
    if reference.shape[0] < 2:
        raise ValueError("nearest-neighbour agreement needs at least 2 rows")

    def neighbours(x: np.ndarray) -> np.ndarray:
        unit = _unit_rows(x)
        sims = unit @ unit.T
        np.fill_diagonal(sims, -np.inf)
        nearest: np.ndarray = np.argmax(sims, axis=1)
        return nearest

    return float(np.mean(neighbours(reference) == neighbours(candidate)))
