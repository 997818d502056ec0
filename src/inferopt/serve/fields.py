"""The fields of a generation request, checked one at a time: each refusal names its field,
so that the OpenAI endpoints can say `param` and the generate extension which parameter.
JSON's types are strict here: `true` is no integer and `"1"` no number."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from inferopt.errors import InputError
from inferopt.generative.generate import GenerationConfig, Generator
from inferopt.serve.errors import BadRequest

TIMEOUT_HEADER = "x-timeout-ms"  # a request's deadline, milliseconds from its arrival
MAX_STOPS = 4  # as OpenAI's API allows
MAX_TEMPERATURE = 2.0  # as OpenAI's API allows
GREEDY_BELOW = 1e-5  # temperatures below this are greedy decoding (vLLM's _SAMPLING_EPS)


class InvalidField(BadRequest):
    """A field of a generation request that is missing or wrong; `param` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"'{param}' {message}")
        self.param = param


def integer(body: Mapping[str, Any], key: str, low: int, default: int | None) -> int | None:
    """`body[key]` as an integer >= `low`; `default` when absent or null."""
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidField(key, f"must be an integer, got {_shown(value)}")
    if value < low:
        raise InvalidField(key, f"must be >= {low}, got {value}")
    return value


def number(body: Mapping[str, Any], key: str, low: float, high: float, default: float) -> float:
    """`body[key]` as a number in [low, high]; `default` when absent or null."""
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidField(key, f"must be a number, got {_shown(value)}")
    if not low <= value <= high:
        raise InvalidField(key, f"must be between {low:g} and {high:g}, got {value}")
    return float(value)


def text(body: Mapping[str, Any], key: str) -> str:
    """`body[key]`, a string (required)."""
    value = body.get(key)
    if not isinstance(value, str):
        raise InvalidField(key, f"must be a string, got {_shown(value)}")
    return value


def boolean(body: Mapping[str, Any], key: str) -> bool:
    """`body[key]` as true or false; false when absent or null."""
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidField(key, f"must be true or false, got {_shown(value)}")
    return value


def stops(body: Mapping[str, Any], key: str = "stop") -> tuple[str, ...]:
    """`body[key]`: a stop string or a list of up to MAX_STOPS of them; none when null."""
    value = body.get(key)
    if value is None:
        return ()
    found = [value] if isinstance(value, str) else value
    if not isinstance(found, list) or not all(isinstance(s, str) and s for s in found):
        raise InvalidField(key, "must be a non-empty string or a list of them")
    if len(found) > MAX_STOPS:
        raise InvalidField(key, f"takes at most {MAX_STOPS} strings, got {len(found)}")
    return tuple(found)


def sampling(body: Mapping[str, Any], max_new_tokens: int) -> GenerationConfig:
    """temperature (default 1, as OpenAI's; below GREEDY_BELOW: greedy), top_p, top_k (0:
    off), seed, stop and ignore_eos (vLLM's extension: generate to max_tokens past EOS)."""
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        temperature=_temperature(body),
        top_p=_top_p(body),
        top_k=integer(body, "top_k", 0, 0) or 0,
        seed=integer(body, "seed", 0, None),
        stop=stops(body),
        ignore_eos=boolean(body, "ignore_eos"),
    )


def _temperature(body: Mapping[str, Any]) -> float:
    value = number(body, "temperature", 0.0, MAX_TEMPERATURE, 1.0)
    # As vLLM: below GREEDY_BELOW is greedy. Dividing logits by a subnormal temperature
    # overflows to inf, and sampling from NaN probabilities would fail the whole batch.
    return 0.0 if value < GREEDY_BELOW else value


def _top_p(body: Mapping[str, Any]) -> float:
    value = number(body, "top_p", 0.0, 1.0, 1.0)
    if value == 0.0:
        raise InvalidField("top_p", "must be above 0")
    return value


def checked_length(
    generator: Generator, ids: list[int], max_tokens: int, prompt_key: str, max_key: str
) -> None:
    """Raises InvalidField (naming the prompt's field or max_tokens's) when the prompt is
    empty or over the context cap, or prompt + max_tokens is past it."""
    try:
        generator.check_length(len(ids), max_tokens)
    except InputError as exc:
        fits = 0 < len(ids) <= generator.layout.max_context
        raise InvalidField(max_key if fits else prompt_key, f"is refused: {exc}") from None


def deadline(headers: Mapping[str, str], default_ms: float | None) -> float | None:
    """time.monotonic() by which the request must end: from the X-Timeout-Ms header
    (milliseconds, > 0), else the model's default_timeout_ms; None for none.

    Raises:
        InvalidField: the header is not a positive number.
    """
    raw = headers.get(TIMEOUT_HEADER)
    if raw is None:
        ms = default_ms
    else:
        try:
            ms = float(raw)
        except ValueError:
            ms = math.nan
        if not (ms > 0 and math.isfinite(ms)):
            raise InvalidField(TIMEOUT_HEADER, f"must be a positive number of ms, got {raw!r}")
    return None if ms is None else time.monotonic() + ms / 1000


def _shown(value: Any) -> str:
    """A value as a refusal shows it: its JSON type, and the value when short."""
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object", type(None): "null"}.get(type(value), type(value).__name__)  # fmt: skip
    if value is None:
        return kind  # "null None" says it twice
    shown = repr(value)
    return f"{kind} {shown}" if len(shown) <= 40 else kind
