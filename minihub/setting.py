"""One setting's declaration: section, name, type, default, help and flag.

The hub declares its own in minihub.config; each spawner and authenticator declares its own
next to its code (their `settings` class attribute). This module imports nothing of
minihub's, so the seams can use it without importing the loader.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Check = Callable[[Any], "str | None"]  # a value of the right type -> what is wrong with it


@dataclass(frozen=True)
class Setting:
    section: str
    name: str
    type: type | tuple[type, ...]
    default: Any
    help: str
    flag: str | None = None  # command-line flag overriding the file, if any
    check: Check | None = None  # run at start-up on the value, after its type
    item: builtins.type = str  # what a list holds (str, int, dict, or object for anything)

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"


def between(low: int, high: int) -> Check:
    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"must be between {low} and {high}, not {value}"

    return check


def positive(value: Any) -> str | None:
    return None if value > 0 else f"must be more than 0, not {value}"
