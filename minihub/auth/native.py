"""minihub's own passwords: bcrypt hashes in SQLite; admins add users, optional sign-up."""

from __future__ import annotations

import functools
import logging
import os
from typing import ClassVar

from ..config import Config
from ..errors import BadRequest, Forbidden
from ..setting import Setting
from ..store import Store
from .base import Authenticator
from .signups import Signups

log = logging.getLogger("minihub.auth")


# bcrypt is imported at the first password, not with the hub: its compiled library is ~0.4
# MiB of a hub at rest (measured) that may log everyone in with PAM and never need it.


@functools.cache
def _dummy_hash() -> bytes:
    """Checked against for unknown names, so they take as long as known ones (made once,
    on first use: hashing at import would slow every start of the hub and the CLI)."""
    import bcrypt

    return bcrypt.hashpw(b"dummy-password", bcrypt.gensalt(rounds=10))


def hash_password(password: str) -> str:
    import bcrypt

    return bcrypt.hashpw(password.encode()[:72], bcrypt.gensalt(rounds=10)).decode()


def verify_password(password: str, hashed: str | None) -> bool:
    import bcrypt

    # bcrypt hashes at most 72 bytes
    ok = bcrypt.checkpw(password.encode()[:72], hashed.encode() if hashed else _dummy_hash())
    return ok and hashed is not None


def signup_is_safe(cfg: Config) -> bool:
    """Open sign-up, unless it could hand out Unix accounts minihub did not make.

    As root, a user's server runs as the Unix account of the user's name. Without
    create_system_users a signed-up name would wait for an account of that name to appear,
    and whoever's it turned out to be, the stranger who signed up would get it.
    """
    if not cfg.get("auth.open_signup"):
        return False
    if os.geteuid() == 0 and not cfg.get("users.create_system_users"):
        log.warning(
            "[auth] open_signup is ignored: a hub run as root needs [users] "
            "create_system_users = true for sign-up, so that each signed-up name "
            "gets a new Unix account made by minihub rather than an existing one."
        )
        return False
    return True


class NativeAuthenticator(Authenticator):
    kind = "native"
    can_change_password = True
    settings: ClassVar[list[Setting]] = [
        Setting("auth", "open_signup", bool, False, "Native authenticator: anyone may sign up."),
        Setting(
            "auth",
            "min_password_length",
            int,
            8,
            "Native authenticator: shortest password accepted.",
        ),
        Setting(
            "auth",
            "signup_approval",
            bool,
            False,
            "Native authenticator with open_signup: a sign-up is a request that an admin "
            "approves or refuses on the admin page (as NativeAuthenticator's); until then "
            "the name cannot log in.",
        ),
        Setting(
            "auth",
            "signup_ask_email",
            bool,
            False,
            "Native authenticator with signup_approval: the sign-up form asks for an email "
            "address, shown to the admins who approve.",
        ),
    ]

    def __init__(self, cfg: Config, store: Store) -> None:
        super().__init__(cfg)
        self.store = store
        self.can_signup = signup_is_safe(cfg)
        self.min_length = int(cfg.get("auth.min_password_length"))
        self.signup_approval = bool(cfg.get("auth.signup_approval"))
        self.signup_ask_email = bool(cfg.get("auth.signup_ask_email"))
        self.signups = Signups(store)

    async def check_password(self, username: str, password: str) -> bool:
        user = await self.store.get_user(username)
        pending = None if user else await self.signups.get(username)
        hashed = user.password_hash if user else pending.password_hash if pending else None
        ok = await self.pool.run(verify_password, password, hashed)
        if ok and pending is not None:  # only the requester learns it is pending
            raise Forbidden("Your sign-up awaits approval by an admin: try again later.")
        return ok

    def check_new_password(self, password: str) -> None:
        if len(password) < self.min_length:
            raise BadRequest(f"Password too short: use at least {self.min_length} characters.")
        if len(password.encode()) > 72:
            raise BadRequest("Password too long: use at most 72 bytes.")

    async def hash_new_password(self, password: str) -> str:
        self.check_new_password(password)
        return await self.pool.run(hash_password, password)
