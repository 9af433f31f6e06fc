"""One setting's declaration: section, name, type, default, help and flag.

The hub declares its own in minihub.config; each spawner and authenticator declares its own
next to its code (their `settings` class attribute). This module imports nothing of
minihub's, so the seams can use it without importing the loader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Setting:
    section: str
    name: str
    type: type | tuple[type, ...]
    default: Any
    help: str
    flag: str | None = None  # command-line flag overriding the file, if any

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"
