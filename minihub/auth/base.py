"""The authenticator seam and the allow/block/admin rules every authenticator shares.

An authenticator is registered as an entry point of the group `minihub.authenticators`
(minihub.plugins), made as `cls(cfg, store)` and chosen by `[auth] authenticator`; its own
settings are its `settings` (they join the settings table).

Contract: `authenticate(username, password)` returns the normalised name of a person whose
password is right and who is allowed in, or None. It never raises for a wrong password and
never logs the password. It must not block the event loop: password checks and the NSS
lookups of the allow/admin rules run in the authenticator's own `CheckPool`, apart from the
default executor (file I/O, spawns), so a login flood cannot starve other blocking work.
"""

from __future__ import annotations

import abc
import asyncio
import grp
import logging
import os
import pwd
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, ClassVar, TypeVar

from ..access.roles import GROUP_NAME
from ..errors import TooManyRequests
from ..setting import Setting

if TYPE_CHECKING:  # the settings table (config) loads authenticators, so no import back
    from ..config import Config
    from ..store import Store

T = TypeVar("T")
log = logging.getLogger("minihub.auth")
# Whether the login attempt being checked comes from an address that has not been failing
# (set by the login handler from the throttle's verdict; anything else counts as trusted).
TRUSTED_ATTEMPT: ContextVar[bool] = ContextVar("trusted_attempt", default=True)


class CheckPool:
    """A few threads for password checks, with a bounded queue where trusted attempts go first.

    Untrusted attempts (from addresses that have been failing) never take the last thread
    and never wait in a queue longer than `queue`; the excess gets 429 at once. A password
    check is tens of milliseconds of CPU (yescrypt, bcrypt), so a few threads are plenty.
    """

    def __init__(self, threads: int, queue: int) -> None:
        self.threads = max(1, threads)
        self.queue = max(1, queue)
        self._executor: ThreadPoolExecutor | None = None
        self._running = 0
        self._running_untrusted = 0
        self._waiting: dict[bool, deque[asyncio.Future[None]]] = {True: deque(), False: deque()}

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        trusted = TRUSTED_ATTEMPT.get()
        await self._acquire(trusted)
        try:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.threads, "minihub-login")
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            self._release(trusted)

    def _free_for(self, trusted: bool) -> bool:
        if self._running >= self.threads:
            return False
        return trusted or self.threads == 1 or self._running_untrusted < self.threads - 1

    async def _acquire(self, trusted: bool) -> None:
        if (
            self._free_for(trusted)
            and not self._waiting[True]
            and (trusted or not self._waiting[False])
        ):
            self._take(trusted)
            return
        waiting = self._waiting[trusted]
        if len(waiting) >= self.queue * (4 if trusted else 1):
            raise TooManyRequests(
                "The hub is busy checking other logins. Try again in a few seconds.", 2
            )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self._release(trusted)  # handed a slot just as we were cancelled
            elif fut in waiting:
                waiting.remove(fut)
            raise

    def _take(self, trusted: bool) -> None:
        self._running += 1
        self._running_untrusted += not trusted

    def _release(self, trusted: bool) -> None:
        self._running -= 1
        self._running_untrusted -= not trusted
        for kind in (True, False):
            waiting = self._waiting[kind]
            while waiting and self._free_for(kind):
                fut = waiting.popleft()
                if not fut.done():
                    self._take(kind)
                    fut.set_result(None)


@dataclass(frozen=True)
class AuthResult:
    name: str
    admin: bool | None = None  # None: leave the stored admin role as it is
    groups: list[str] | None = None  # [auth] manage_groups: exactly these groups; None: leave


class Authenticator(abc.ABC):
    kind = "base"
    can_signup = False
    can_change_password = False
    # Settings of its own (e.g. [auth.oauth]), declared next to its code.
    settings: ClassVar[list[Setting]] = []

    def __init__(self, cfg: Config, store: Store | None = None) -> None:
        a = cfg.section("auth")
        self.pool = CheckPool(int(a["login_threads"]), 4 * int(a["login_threads"]))
        self.admin_users = {n.lower() for n in a["admin_users"]}
        self.allowed_users = {n.lower() for n in a["allowed_users"]}
        self.blocked_users = {n.lower() for n in a["blocked_users"]}
        self.allowed_groups = set(a["allowed_groups"])
        self.admin_groups = set(a["admin_groups"])
        self.manage_groups = bool(a["manage_groups"])
        self.manage_groups_include = list(a["manage_groups_include"])

    @abc.abstractmethod
    async def check_password(self, username: str, password: str) -> bool:
        """True when the password is right for this (normalised) name."""

    async def authenticate(self, username: str, password: str) -> AuthResult | None:
        if not await self._by_rules(self.is_allowed, username):
            return None
        if not password or not await self.check_password(username, password):
            return None
        admin = await self._by_rules(self.is_admin, username)
        return AuthResult(username, admin, await self.login_groups(username))

    async def login_groups(self, name: str) -> list[str] | None:
        """[auth] manage_groups: the hub groups `name` belongs in, from their Unix groups
        (an NSS lookup: in the pool's thread); None when the hub's groups are not managed."""
        if not self.manage_groups:
            return None
        return self.managed(await self.pool.run(unix_groups, name))

    def managed(self, groups: Iterable[str]) -> list[str] | None:
        """Of a login's groups, those manage_groups_include names (None: not managing)."""
        if not self.manage_groups:
            return None
        wanted = {g for g in groups if any(fnmatchcase(g, p) for p in self.manage_groups_include)}
        bad = sorted(g for g in wanted if not GROUP_NAME.match(g))
        if bad:  # e.g. Keycloak's full group paths, "/course/a": a hub group has no '/'
            log.warning("groups left out, a hub group name has no '/' or control chars: %r", bad)
        return sorted(wanted.difference(bad))

    async def _by_rules(self, rule: Callable[[str], T], name: str) -> T:
        """Group rules look up NSS (may block: LDAP, sssd); name lists alone never do."""
        if self.allowed_groups or self.admin_groups:
            return await self.pool.run(rule, name)
        return rule(name)

    def is_allowed(self, name: str) -> bool:
        if name in self.blocked_users:
            return False
        if not self.allowed_users and not self.allowed_groups:
            return True
        return (
            name in self.allowed_users
            or name in self.admin_users
            or bool(self.allowed_groups & unix_groups(name))
        )

    def is_admin(self, name: str) -> bool | None:
        """admin_users are admins; with admin_groups the Unix groups decide at every login
        (out of the group, out of the admins); else None: left as the hub has it."""
        if name in self.admin_users or (self.admin_groups & unix_groups(name)):
            return True
        return False if self.admin_groups else None


def unix_groups(name: str) -> set[str]:
    """Names of the Unix groups `name` belongs to (primary and supplementary)."""
    try:
        gid = pwd.getpwnam(name).pw_gid
        gids = os.getgrouplist(name, gid)
    except KeyError:
        return set()
    out = set()
    for g in gids:
        try:
            out.add(grp.getgrgid(g).gr_name)
        except KeyError:
            pass
    return out
