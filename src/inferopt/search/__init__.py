"""Evaluating candidate models and searching for the best within an accuracy budget.

`SearchConfig`, `Budget` and `optimize` are loaded on first use: the search pulls in every
pass, and `inferopt.search.evaluate` alone is imported by much lighter code."""

from __future__ import annotations

from typing import Any

_LAZY = {
    "optimize": "inferopt.search.auto",
    "SearchConfig": "inferopt.search.auto",
    "SearchResult": "inferopt.search.auto",
    "Budget": "inferopt.search.select",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'inferopt.search' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = list(_LAZY)
