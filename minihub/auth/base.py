"""The authenticator seam and the allow/block/admin rules every authenticator shares.

Contract: `authenticate(username, password)` returns the normalised name of a person whose
password is right and who is allowed in, or None. It never raises for a wrong password and
never logs the password. It must not block the event loop (PAM and bcrypt run in threads).
"""

from __future__ import annotations

import abc
import grp
import os
import pwd
from dataclasses import dataclass

from ..config import Config


@dataclass(frozen=True)
class AuthResult:
    name: str
    admin: bool | None = None  # None: leave the stored admin flag as it is


class Authenticator(abc.ABC):
    kind = "base"
    can_signup = False
    can_change_password = False

    def __init__(self, cfg: Config) -> None:
        a = cfg.section("auth")
        self.admin_users = {n.lower() for n in a["admin_users"]}
        self.allowed_users = {n.lower() for n in a["allowed_users"]}
        self.blocked_users = {n.lower() for n in a["blocked_users"]}
        self.allowed_groups = set(a["allowed_groups"])
        self.admin_groups = set(a["admin_groups"])

    @abc.abstractmethod
    async def check_password(self, username: str, password: str) -> bool:
        """True when the password is right for this (normalised) name."""

    async def authenticate(self, username: str, password: str) -> AuthResult | None:
        if not self.is_allowed(username):
            return None
        if not password or not await self.check_password(username, password):
            return None
        return AuthResult(username, self.is_admin(username))

    def is_allowed(self, name: str) -> bool:
        if name in self.blocked_users:
            return False
        if not self.allowed_users and not self.allowed_groups:
            return True
        return (name in self.allowed_users or name in self.admin_users
                or bool(self.allowed_groups & unix_groups(name)))

    def is_admin(self, name: str) -> bool | None:
        if name in self.admin_users or (self.admin_groups & unix_groups(name)):
            return True
        return None


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
