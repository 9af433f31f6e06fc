"""A workshop login, as JupyterHub 5.3's SharedPasswordAuthenticator: everyone signs in with
one shared password under a name they choose; the names in `[auth] admin_users` sign in
with a separate, longer admin password and are admins.

Beyond JupyterHub's: the user password stops working at `expires`, and at most `max_users`
new names are made (names made already still sign in). Anyone holding the user password may
sign in as any name it made: it is for a workshop whose people need no protection from each
other. On a root hub each user's server runs as the Unix account of their name, so a name is
only ever given an account this login made (by useradd, as native sign-up does): a name that
is an account already, or a hub user it did not make, is refused.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import pwd
from typing import TYPE_CHECKING, ClassVar

from ..errors import Forbidden, SpawnError, StartupError
from ..hubsettings import HubSettings
from ..setting import Check, Setting, between
from ..spawner import accounts
from . import secrets as S
from .base import Authenticator, AuthResult

if TYPE_CHECKING:
    from ..config import Config
    from ..store import Store

log = logging.getLogger("minihub.auth")
USER_MIN = 8  # JupyterHub's minimum lengths
ADMIN_MIN = 32
SECTION = "auth.shared_password"


def _at_least(n: int) -> Check:
    def check(value: object) -> str | None:  # never repeats the password
        if value and len(str(value)) < n:
            return f"must be at least {n} characters long, not {len(str(value))}"
        return None

    return check


def parse_expiry(text: str) -> dt.datetime | None:
    """`expires` as an aware time (a time without zone is this machine's local time);
    None for never; ValueError saying what is wanted."""
    if not text.strip():
        return None
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text[:40]!r} is not a date and time like 2026-12-24T18:00+01:00")
    if len(text.strip()) <= 10:  # a date alone: at which hour? say it
        raise ValueError(f"give a time too, e.g. {text.strip()}T18:00 (local time) or with +01:00")
    return when if when.tzinfo else when.astimezone()


class SharedPasswordAuthenticator(Authenticator):
    kind = "shared-password"
    settings: ClassVar[list[Setting]] = [
        Setting(
            SECTION,
            "user_password",
            str,
            "",
            f'With [auth] authenticator = "shared-password": the workshop\'s password, at '
            f"least {USER_MIN} characters. Anyone holding it signs in under any name they "
            "choose (not an admin_users name), and as any name made with it before.",
            check=_at_least(USER_MIN),
        ),
        Setting(
            SECTION,
            "admin_password",
            str,
            "",
            f"The password of the names in [auth] admin_users, who are admins (at least "
            f"{ADMIN_MIN} characters, not the user password). Empty: no admin signs in.",
            check=_at_least(ADMIN_MIN),
        ),
        Setting(
            SECTION,
            "expires",
            str,
            "",
            'When the user password stops working, e.g. "2026-12-24T18:00+01:00" (without a '
            "zone: this machine's local time); the login page says so. The admin password "
            "goes on working. Empty: never.",
        ),
        Setting(
            SECTION,
            "max_users",
            int,
            0,
            "How many names the user password may make; past it new names are refused and "
            "those made still sign in. 0: no limit.",
            check=between(0, 1_000_000),
        ),
    ]

    def __init__(self, cfg: Config, store: Store) -> None:
        super().__init__(cfg)
        self.store = store
        self.user_password = str(cfg.get(f"{SECTION}.user_password"))
        self.admin_password = str(cfg.get(f"{SECTION}.admin_password"))
        self.max_users = int(cfg.get(f"{SECTION}.max_users"))
        self.home_mode = int(cfg.get("users.home_mode"))
        self.root = os.geteuid() == 0
        self.expires = self._check(cfg)
        self._made = HubSettings(store)  # only its "workshop_names"
        self._loaded = False
        self._lock = asyncio.Lock()  # one new name at a time: max_users holds under a burst

    def _check(self, cfg: Config) -> dt.datetime | None:
        if not self.user_password:
            raise StartupError(
                f"[{SECTION}] user_password: set the workshop's password (at least "
                f'{USER_MIN} characters) for [auth] authenticator = "shared-password"'
            )
        if self.admin_password and S.equal(self.admin_password, self.user_password):
            raise StartupError(f"[{SECTION}] admin_password: must differ from user_password")
        if self.root and not cfg.get("users.create_system_users"):
            raise StartupError(
                '[auth] authenticator = "shared-password" on a hub run as root needs '
                "[users] create_system_users = true, so that each name chosen at login gets "
                "a new Unix account made by minihub, never an existing one"
            )
        if self.admin_password and not self.admin_users:
            log.warning("[%s] admin_password is set but [auth] admin_users is empty", SECTION)
        try:
            return parse_expiry(str(cfg.get(f"{SECTION}.expires")))
        except ValueError as e:
            raise StartupError(f"[{SECTION}] expires: {e}") from None

    def closed(self) -> bool:
        return self.expires is not None and dt.datetime.now(dt.UTC) >= self.expires

    def login_notice(self) -> str:
        """What the login page says about this login."""
        if self.expires is None:
            return "Choose a name and sign in with the workshop's password."
        at = self.expires.strftime("%Y-%m-%d %H:%M %Z").strip()
        if self.closed():
            return f"This workshop's login closed at {at}."
        return f"Choose a name and sign in with the workshop's password (until {at})."

    async def check_password(self, username: str, password: str) -> bool:
        """The admin password for admin_users, the user password (while open) for others."""
        if username in self.admin_users:
            return bool(self.admin_password) and S.equal(password, self.admin_password)
        return not self.closed() and S.equal(password, self.user_password)

    async def authenticate(self, username: str, password: str) -> AuthResult | None:
        if not await self._by_rules(self.is_allowed, username):
            return None
        if username in self.admin_users:
            ok = await self.check_password(username, password)
            return AuthResult(username, True, None) if ok else None
        if self.closed():
            raise Forbidden(self.login_notice() + " Ask the organiser for another way in.")
        if not S.equal(password, self.user_password):
            return None
        await self._admit(username)
        return AuthResult(username, False, None)  # the user password never makes an admin

    async def _admit(self, name: str) -> None:
        """A name this login made, or a new one it may make now; Forbidden saying why not."""
        taken = Forbidden(f"The name {name} is taken. Choose another.")
        async with self._lock:
            if not self._loaded:
                await self._made.load()
                self._loaded = True
            made = made_names(self._made.get("workshop_names"))
            if name in made:
                if made[name] < 0 or await self.pool.run(_uid_of, name) == made[name]:
                    return
                # its account was removed and the name is someone else's now
                del made[name]
                await self._made.set("workshop_names", made)
                raise taken
            if await self.store.get_user(name) is not None:
                raise taken  # a user from before: not this login's to hand out
            if self.max_users and len(made) >= self.max_users:
                raise Forbidden(
                    f"This workshop is full ({self.max_users} names): sign in with the name "
                    "you chose before, or ask the organiser."
                )
            uid = -1
            if self.root:
                await self._new_account(name)
                uid = await self.pool.run(_uid_of, name)
            made[name] = uid
            await self._made.set("workshop_names", made)
            log.info("workshop login made the name %s (%d so far)", name, len(made))

    async def _new_account(self, name: str) -> None:
        """useradd is the arbiter: a name some other process holds makes it fail."""
        taken = Forbidden(f"The name {name} is taken. Choose another.")
        if await self.pool.run(accounts.account_exists, name):
            raise taken
        try:
            await accounts.create_system_user(name, home_mode=self.home_mode)
        except SpawnError as e:
            log.warning("workshop login of %s refused: %s", name, e.message)
            raise taken from None


def made_names(value: object) -> dict[str, int]:
    """The names this login made, with the uid of the account it made for each (-1: none,
    a hub not run as root); a list, as an earlier minihub kept it, has no uids."""
    if isinstance(value, dict):
        return {str(k): int(v) for k, v in value.items()}
    return {str(n): -1 for n in value} if isinstance(value, list) else {}


def _uid_of(name: str) -> int:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return -2  # no account: never a uid it recorded
