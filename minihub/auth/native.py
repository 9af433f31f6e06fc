"""minihub's own passwords: bcrypt hashes in SQLite; admins add users, optional sign-up."""

from __future__ import annotations

import asyncio
import functools

import bcrypt

from ..config import Config
from ..errors import BadRequest
from ..store import Store
from .base import Authenticator


@functools.cache
def _dummy_hash() -> bytes:
    """Checked against for unknown names, so they take as long as known ones (made once,
    on first use: hashing at import would slow every start of the hub and the CLI)."""
    return bcrypt.hashpw(b"dummy-password", bcrypt.gensalt(rounds=10))


def hash_password(password: str) -> str:
    return bcrypt.hashpw(password.encode()[:72], bcrypt.gensalt(rounds=10)).decode()


def verify_password(password: str, hashed: str | None) -> bool:
    # bcrypt hashes at most 72 bytes
    ok = bcrypt.checkpw(password.encode()[:72], hashed.encode() if hashed else _dummy_hash())
    return ok and hashed is not None


class NativeAuthenticator(Authenticator):
    kind = "native"
    can_change_password = True

    def __init__(self, cfg: Config, store: Store) -> None:
        super().__init__(cfg)
        self.store = store
        self.can_signup = bool(cfg.get("auth.open_signup"))
        self.min_length = int(cfg.get("auth.min_password_length"))

    async def check_password(self, username: str, password: str) -> bool:
        user = await self.store.get_user(username)
        hashed = user.password_hash if user else None
        return await asyncio.to_thread(verify_password, password, hashed)

    def check_new_password(self, password: str) -> None:
        if len(password) < self.min_length:
            raise BadRequest(f"Password too short: use at least {self.min_length} characters.")
        if len(password.encode()) > 72:
            raise BadRequest("Password too long: use at most 72 bytes.")

    async def hash_new_password(self, password: str) -> str:
        self.check_new_password(password)
        return await asyncio.to_thread(hash_password, password)
