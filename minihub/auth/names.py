"""Usernames: normalised to lower case and limited to what is safe in a path and a URL."""

from __future__ import annotations

import re

from ..errors import BadRequest

_VALID = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")


def normalise(name: str) -> str:
    return name.strip().lower()


def validate(name: str) -> str:
    """Return the normalised name, or raise BadRequest saying what is allowed."""
    n = normalise(name)
    if not _VALID.match(n) or n in (".", "..") or n.endswith("."):
        raise BadRequest(
            "Invalid username: use 1 to 32 characters, letters, digits, '_', '-' or '.', "
            "starting with a letter or '_'."
        )
    return n


def is_valid(name: str) -> bool:
    try:
        validate(name)
    except BadRequest:
        return False
    return True
