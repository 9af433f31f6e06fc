"""The checks every array of tables in minihub.toml shares ([[services]], [[roles]],
[[groups]]): known keys of the right types, and names used once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import StartupError


def check_keys(entry: dict[str, Any], keys: Mapping[str, type], label: str) -> None:
    """StartupError naming `label` and the key, for an unknown key or a wrong type."""
    for key, value in entry.items():
        typ = keys.get(key)
        if typ is None:
            raise StartupError(f"{label}: unknown key {key!r} (known: {', '.join(keys)})")
        if not isinstance(value, typ):
            raise StartupError(f"{label}: {key} must be a {typ.__name__}")


def no_dupes(names: list[str], where: str, kind: str) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise StartupError(f"{where}: [[{kind}]] name {dupes[0]!r} is used twice")
