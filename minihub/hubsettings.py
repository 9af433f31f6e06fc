"""What admins change while the hub runs (the announcement, class folders): JSON values in
SQLite's hub_settings, held in memory, the store written first; read back from another
process (the CLI) by `reload`.

A key is declared once in KEYS with its default, so a typo is an error, not a silent new
setting. Values are plain JSON (str, list, dict); callers validate what they store.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from .store import Store

KEYS: dict[str, Any] = {
    # {"all": str, "login": str, "home": str, "spawn": str, "logout": str}; "" = none
    "announcement": {},
    # folders linked read-only into every home, besides [users] shared_dirs
    "shared_dirs": [],
    # names a workshop login (minihub.auth.shared) made: its max_users, and on a root hub
    # the Unix accounts it owns
    "workshop_names": {},
}


class HubSettings:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._values: dict[str, Any] = {}
        self._listeners: list[Callable[[str], None]] = []

    async def load(self) -> None:
        async with self.store.db.execute("SELECT key, value FROM hub_settings") as cur:
            rows = await cur.fetchall()
        self._values = {k: json.loads(v) for k, v in rows if k in KEYS}

    def get(self, key: str) -> Any:
        if key not in KEYS:
            raise KeyError(key)
        return self._values.get(key, KEYS[key])

    async def set(self, key: str, value: Any) -> None:
        if key not in KEYS:
            raise KeyError(key)
        await self.store._write(
            "INSERT INTO hub_settings (key, value, updated) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
            key,
            json.dumps(value),
            time.time(),
        )
        self._values[key] = value
        for fn in self._listeners:
            fn(key)

    def on_change(self, fn: Callable[[str], None]) -> None:
        self._listeners.append(fn)
