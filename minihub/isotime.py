"""Times as Jupyter's REST APIs write them: UTC ISO 8601 with a Z. Both the hub (JupyterHub's
models) and the user server (jupyter_server's) use these; this module imports nothing else."""

from __future__ import annotations

import datetime as dt

_UTC = dt.UTC
_fromtimestamp = dt.datetime.fromtimestamp


def isoformat(ts: float) -> str:
    """A Unix time as `2024-05-01T12:00:00.123456Z`; OverflowError/OSError/ValueError for a
    time no datetime can hold."""
    return _fromtimestamp(ts, _UTC).isoformat()[:-6] + "Z"  # "+00:00": a listing has many


def parse_iso(text: str) -> float:
    """Parse an ISO 8601 time (with Z or offset; naive means UTC); ValueError if it is not
    one, or names a moment outside the years 1-9999 once taken to UTC."""
    try:
        t = dt.datetime.fromisoformat(text)
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.UTC)
        return t.astimezone(dt.UTC).timestamp()
    except OverflowError:
        raise ValueError(f"time out of range: {text[:40]!r}") from None
