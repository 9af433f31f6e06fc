"""Sign-up requests that wait for an admin (native authenticator, `[auth] signup_approval`),
as NativeAuthenticator's: a request holds a name, its bcrypt hash and perhaps an email, in
the `signups` table; it is not a user and cannot log in until an admin approves it.

Approving makes the user with the stored hash (and, on a root hub, its Unix account, by
useradd, which refuses a name some other process took meanwhile); refusing deletes the
request. `pending` is the count the admin pages show, kept in memory: refreshed from the
table by `refresh` (the admin page does, so the CLI's changes show there too).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from dataclasses import dataclass

from ..errors import Conflict, NotFound, SpawnError, TooManyRequests
from ..spawner import accounts
from ..store import Store, User
from . import names

log = logging.getLogger("minihub.auth")
MAX_EMAIL = 254  # RFC 5321's longest address
# Requests waiting at once: past it sign-up says to come back later (throttling is per
# address, so a spread-out flood would otherwise grow the table and the admin page unbounded)
MAX_PENDING = 1000


@dataclass(frozen=True)
class Request:
    name: str
    email: str
    requested: float
    password_hash: str


class Signups:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.pending = 0

    async def refresh(self) -> int:
        row = await self.store._one("SELECT count(*) FROM signups")
        self.pending = int(row[0])
        return self.pending

    async def get(self, name: str) -> Request | None:
        row = await self.store._one(
            "SELECT name, email, requested, password_hash FROM signups WHERE name = ?",
            names.normalise(name),
        )
        return Request(*row) if row else None

    async def list(self, limit: int = 500) -> list[Request]:
        rows = await self.store._all(
            "SELECT name, email, requested, password_hash FROM signups ORDER BY requested LIMIT ?",
            limit,
        )
        return [Request(*r) for r in rows]

    async def add(self, name: str, password_hash: str, email: str = "") -> None:
        """A new request; Conflict if the name already has one (the UNIQUE index decides),
        TooManyRequests while MAX_PENDING wait."""
        if await self.refresh() >= MAX_PENDING:
            raise TooManyRequests(
                "Too many sign-up requests are waiting for approval: try again later.", 3600
            )
        try:
            await self.store._write(
                "INSERT INTO signups (name, password_hash, email, requested) VALUES (?, ?, ?, ?)",
                name,
                password_hash,
                email[:MAX_EMAIL],
                time.time(),
            )
        except sqlite3.IntegrityError:
            raise Conflict(f"The name {name} is taken. Choose another.") from None
        await self.refresh()
        log.info("sign-up request from %s awaits approval", name)

    async def remove(self, name: str) -> bool:
        gone = await self.store._write("DELETE FROM signups WHERE name = ?", name)
        await self.refresh()
        return gone > 0

    async def approve(self, name: str) -> User:
        """The request becomes a user with its own password: NotFound if there is none,
        Conflict if the name became a hub user or a Unix account meanwhile."""
        req = await self.get(name)
        if req is None:
            raise NotFound(f"No sign-up request from {names.normalise(name)[:64]!r}.")
        if await self.store.get_user(req.name) is not None:
            raise Conflict(f"{req.name} is a hub user already: refuse the request instead.")
        if os.geteuid() == 0:  # as native sign-up: only a Unix account minihub makes now
            if await asyncio.to_thread(accounts.account_exists, req.name):
                raise Conflict(
                    f"A Unix account named {req.name} exists now, made by someone else: "
                    "refuse the request."
                )
            try:
                await accounts.create_system_user(req.name)
            except SpawnError as e:
                raise Conflict(f"Cannot approve {req.name}: {e.message}") from None
        user = await self.store.add_user(req.name, req.password_hash)
        await self.remove(req.name)
        log.info("sign-up of %s approved", req.name)
        return user
