"""The part of JupyterHub's scope model that jupyterhub-singleuser and hub services need.

Scopes are strings like "read:users" or "access:servers!server=alice/"; a filter after "!"
narrows a scope to one user or one server. Only the scopes listed in SCOPES exist here.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import BadRequest
from .store import SERVICE_PREFIX

# scope -> the scopes it implies (JupyterHub's hierarchy, trimmed to what minihub serves)
SCOPES: dict[str, tuple[str, ...]] = {
    "admin:users": ("users", "tokens", "servers"),
    "users": ("read:users", "list:users", "users:activity"),
    "read:users": ("read:users:name", "read:users:groups", "read:users:activity"),
    "users:activity": ("read:users:activity",),
    "read:users:name": (),
    "read:users:groups": (),
    "read:users:activity": (),
    "list:users": (),
    "admin:servers": ("servers",),
    "servers": ("read:servers", "delete:servers"),
    "read:servers": (),
    "delete:servers": (),
    "access:servers": (),
    "tokens": ("read:tokens",),
    "read:tokens": (),
    "read:hub": (),
    "identify": (),
}
# Scopes a filter can narrow to a user (and so to that user's servers).
_USER_SCOPES = (
    "users",
    "read:users",
    "users:activity",
    "read:users:name",
    "read:users:groups",
    "read:users:activity",
    "servers",
    "read:servers",
    "delete:servers",
    "access:servers",
    "tokens",
    "read:tokens",
    "list:users",
)
ADMIN_SCOPES = ("admin:users", "admin:servers", "read:hub")
SPECIAL = ("inherit", "self", "identify")


@dataclass(frozen=True)
class Scope:
    name: str
    kind: str = ""  # "", "user" or "server"
    value: str = ""  # the user name, or "user/server"

    def __str__(self) -> str:
        return f"{self.name}!{self.kind}={self.value}" if self.kind else self.name


def parse(text: str) -> Scope:
    """'read:users!user=alice' -> Scope; BadRequest names the scope if it is not one we know."""
    name, _, filt = text.partition("!")
    if name not in SCOPES:
        raise BadRequest(f"Unknown scope {text[:80]!r} (known: {', '.join(sorted(SCOPES))})")
    if not filt:
        return Scope(name)
    kind, eq, value = filt.partition("=")
    if kind not in ("user", "server") or not eq or not value:
        raise BadRequest(f"Scope filter {filt[:80]!r} must be user=<name> or server=<name>/")
    return Scope(name, kind, value)


def validate(texts: Iterable[str]) -> list[str]:
    out = []
    for t in texts:
        if t not in SPECIAL:
            parse(t)
        out.append(t)
    return out


def expand(texts: Iterable[str], owner: str = "") -> frozenset[Scope]:
    """Every scope implied by `texts`; "self" (and bare "!user"/"!server") mean `owner`'s."""
    out: set[Scope] = set()
    for text in texts:
        if text == "self":
            out |= {Scope(s, "user", owner) for s in _USER_SCOPES if s != "list:users"}
            continue
        if text in ("inherit", "identify"):
            continue
        if text.endswith(("!user", "!server")):
            kind = text.rsplit("!", 1)[1]
            text = f"{text}={owner}" + ("/" if kind == "server" else "")
        _add(out, parse(text))
    return frozenset(out)


def _add(out: set[Scope], scope: Scope) -> None:
    if scope in out:
        return
    out.add(scope)
    for sub in SCOPES[scope.name]:
        _add(out, Scope(sub, scope.kind, scope.value))


@functools.lru_cache(maxsize=4096)  # asked on every proxied request made with a token
def user_defaults(name: str, admin: bool, admin_access: bool) -> frozenset[Scope]:
    """A user's own permissions: everything on themself; admins everything on everyone
    (access to others' servers only with [hub] admin_access, as in JupyterHub)."""
    own = expand(["self"], name)
    if not admin:
        return own
    every = expand(ADMIN_SCOPES + ("list:users",))
    if admin_access:
        every |= {Scope("access:servers")}
    return own | every


def intersect(asked: frozenset[Scope], held: frozenset[Scope]) -> frozenset[Scope]:
    """The scopes of a token: those it asked for that its owner holds."""
    return frozenset(s for s in asked if covers(held, s))


def covers(held: frozenset[Scope], want: Scope) -> bool:
    """True if `held` grants `want` (an unfiltered scope grants every filtered one; a user
    filter grants that user's servers)."""
    if Scope(want.name) in held or want in held:
        return True
    if want.kind == "server":
        return Scope(want.name, "user", want.value.split("/", 1)[0]) in held
    return False


def allows(held: frozenset[Scope], name: str, user: str = "", server: str = "") -> bool:
    """May someone holding `held` use scope `name` on `user` (and their `server`)?"""
    if Scope(name) in held:
        return True
    if user and Scope(name, "user", user) in held:
        return True
    return bool(user) and Scope(name, "server", f"{user}/{server}") in held


def users_in(held: frozenset[Scope], name: str) -> set[str] | None:
    """The users `name` is held for: None means every user."""
    if Scope(name) in held:
        return None
    return {s.value.split("/", 1)[0] for s in held if s.name == name and s.kind}


def strings(held: Iterable[Scope]) -> list[str]:
    return sorted(str(s) for s in held)


def service_name(user_name: str) -> str | None:
    """The service's name if this identity is a service (see Store.service_token_owner)."""
    return user_name[len(SERVICE_PREFIX) :] if user_name.startswith(SERVICE_PREFIX) else None


def held_by(
    user_name: str, admin: bool, token_scopes: list[str] | None, admin_access: bool
) -> frozenset[Scope]:
    """What a caller may do: a user's (or service's) own scopes, narrowed to what a token
    with explicit scopes asked for. A token without scopes (or "inherit") has its owner's."""
    service = service_name(user_name)
    if service is not None:
        # A service token carries the service's configured scopes (Store.service_token_owner).
        return expand(token_scopes or [])
    own = user_defaults(user_name, admin, admin_access)
    if not token_scopes or "inherit" in token_scopes:
        return own
    return intersect(expand(token_scopes, user_name), own)
