"""A hub service as configured: one [[services]] table of minihub.toml, checked at start-up.

Only the schema, so that minihub.config can validate it; minihub.services runs services.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from . import scopes
from .errors import HubError, StartupError

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
KEYS = {
    "name": str,
    "api_token": str,
    "scopes": list,
    "command": list,
    "environment": dict,
    "cwd": str,
}
MIN_TOKEN = 16


@dataclass
class Service:
    name: str
    scopes: list[str]
    api_token: str = field(default="", repr=False)
    command: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    cwd: str = ""


def validate(
    entries: list[dict[str, Any]], where: str, custom: dict[str, tuple[str, ...]] | None = None
) -> list[Service]:
    """[[services]] tables -> Services; a StartupError names the entry and key at fault.
    `custom`: the [custom_scopes] a service's scopes may name."""
    out: list[Service] = []
    for i, entry in enumerate(entries):
        label = f"{where}: [[services]] #{i + 1}"
        out.append(_one(entry, label, custom or {}))
    names = [s.name for s in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise StartupError(f"{where}: [[services]] name {dupes[0]!r} is used twice")
    return out


def _one(entry: dict[str, Any], label: str, custom: dict[str, tuple[str, ...]]) -> Service:
    for key, value in entry.items():
        typ = KEYS.get(key)
        if typ is None:
            raise StartupError(f"{label}: unknown key {key!r} (known: {', '.join(KEYS)})")
        if not isinstance(value, typ):
            raise StartupError(f"{label}: {key} must be a {typ.__name__}")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise StartupError(f"{label}: name must be 1-64 of a-z, 0-9, '_', '-', '.'")
    label = f"{label} ({name})"
    token = entry.get("api_token", "")
    if token and len(token) < MIN_TOKEN:
        raise StartupError(f"{label}: api_token must be at least {MIN_TOKEN} characters")
    for key in ("scopes", "command"):
        if not all(isinstance(x, str) for x in entry.get(key, [])):
            raise StartupError(f"{label}: {key} must be a list of strings")
    env = entry.get("environment", {})
    if not all(isinstance(v, str) for v in env.values()):
        raise StartupError(f"{label}: environment values must be strings")
    try:
        wanted = scopes.validate(entry.get("scopes", []), custom)
    except HubError as e:
        raise StartupError(f"{label}: scopes: {e.message}") from None
    return Service(
        name, wanted, token, list(entry.get("command", [])), dict(env), entry.get("cwd", "")
    )
