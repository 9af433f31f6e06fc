"""JSON from clients, held to what every later step can handle: UTF-8, no NaN or Infinity,
bounded nesting, no lone surrogates.

Python's json accepts all of these, then nbformat, jsonschema or the UTF-8 encoder fails on
them much later (a 500, or a file other readers cannot open); refusing them here is a 400.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 100  # a notebook nests ~10 levels; widget state and plotly outputs a few more
_SURROGATE = re.compile("[\ud800-\udfff]")


class JSONInputError(ValueError):
    """Input that is not strict JSON; the message is for the person who sent it."""


def loads(raw: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse and check_value; JSONInputError says what is wrong."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise JSONInputError(f"The body is not UTF-8 (byte {e.start})") from None
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise JSONInputError("The JSON is nested too deeply") from None
    except ValueError as e:
        raise JSONInputError(f"Invalid JSON: {e}"[:300]) from None
    check_value(value, max_depth)
    return value


def check_value(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Refuse nesting deeper than max_depth, lone surrogates in strings or keys, non-finite
    floats and anything JSON cannot hold. Iterative: a deep value cannot exhaust the stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, bool | int | None):
            continue
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise JSONInputError("NaN and Infinity are not JSON")
        elif isinstance(item, dict | list):
            if depth > max_depth:
                raise JSONInputError(f"The JSON is nested deeper than {max_depth} levels")
            children = item.values() if isinstance(item, dict) else item
            if isinstance(item, dict):
                for key in item:
                    if not isinstance(key, str):
                        raise JSONInputError("Object keys must be strings")
                    _check_text(key)
            stack.extend((child, depth + 1) for child in children)
        else:
            raise JSONInputError(f"{type(item).__name__} is not a JSON value")


def _check_text(text: str) -> None:
    if not text.isascii() and _SURROGATE.search(text):
        raise JSONInputError("A string holds a lone surrogate (\\ud800-\\udfff): not Unicode text")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
