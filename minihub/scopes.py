"""JupyterHub's scope vocabulary (docs/source/rbac/scopes.md in its repository), pure.

Scopes are strings like "read:users" or "access:servers!group=students"; a filter after "!"
narrows a scope to one user, server, group or service. What a principal holds is decided by
minihub.access; this module only parses, expands and compares.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .errors import BadRequest

# scope -> the scopes it implies (JupyterHub 5/6's hierarchy)
SCOPES: dict[str, tuple[str, ...]] = {
    "admin-ui": (),
    "admin:users": ("admin:auth_state", "users", "read:roles:users", "delete:users"),
    "admin:auth_state": (),
    "users": ("read:users", "list:users", "users:activity"),
    "delete:users": (),
    "list:users": ("read:users:name",),
    "read:users": ("read:users:name", "read:users:groups", "read:users:activity"),
    "read:users:name": (),
    "read:users:groups": (),
    "read:users:activity": (),
    "read:roles": ("read:roles:users", "read:roles:services", "read:roles:groups"),
    "read:roles:users": (),
    "read:roles:services": (),
    "read:roles:groups": (),
    "users:activity": ("read:users:activity",),
    "admin:servers": ("admin:server_state", "servers"),
    "admin:server_state": (),
    "servers": ("read:servers", "start:servers", "delete:servers"),
    "read:servers": ("read:users:name",),
    "start:servers": (),
    "delete:servers": (),
    "tokens": ("read:tokens",),
    "read:tokens": (),
    "admin:groups": ("groups", "read:roles:groups", "delete:groups"),
    "groups": ("read:groups", "list:groups"),
    "list:groups": ("read:groups:name",),
    "read:groups": ("read:groups:name",),
    "read:groups:name": (),
    "delete:groups": (),
    "admin:services": ("list:services", "read:services", "read:roles:services"),
    "list:services": ("read:services:name",),
    "read:services": ("read:services:name",),
    "read:services:name": (),
    "read:hub": (),
    "access:servers": (),
    "access:services": (),
    "users:shares": ("read:users:shares",),
    "read:users:shares": (),
    "groups:shares": ("read:groups:shares",),
    "read:groups:shares": (),
    "read:shares": (),
    "shares": ("access:servers", "read:shares", "users:shares", "groups:shares"),
    "proxy": (),
    "shutdown": (),
    "read:metrics": (),
}
# What a person is asked to allow on the OAuth consent page (JupyterHub's scope_definitions).
DESCRIPTIONS: dict[str, str] = {
    "(no_scope)": "Identify the owner of the requesting entity.",
    "self": "Your own resources",
    "inherit": "Anything you have access to",
    "admin-ui": "Access the admin page.",
    "admin:users": "Read, modify, create, and delete users and their authentication state, "
    "not including their servers or tokens. This is an extremely privileged scope and should "
    "be considered tantamount to superuser.",
    "admin:auth_state": "Read a user’s authentication state.",
    "users": "Read and write permissions to user models (excluding servers, tokens and "
    "authentication state).",
    "delete:users": "Delete users.",
    "list:users": "List users, including at least their names.",
    "read:users": "Read user models (including the URL of the default server if it is running).",
    "read:users:name": "Read names of users.",
    "read:users:groups": "Read users’ group membership.",
    "read:users:activity": "Read time of last user activity.",
    "read:roles": "Read role assignments.",
    "read:roles:users": "Read user role assignments.",
    "read:roles:services": "Read service role assignments.",
    "read:roles:groups": "Read group role assignments.",
    "users:activity": "Update time of last user activity.",
    "admin:servers": "Read, start, stop, create and delete user servers and their state.",
    "admin:server_state": "Read and write users’ server state.",
    "servers": "Start and stop user servers.",
    "read:servers": "Read users’ names and their server models (excluding the server state).",
    "start:servers": "Start and edit users' servers.",
    "delete:servers": "Stop and delete users' servers.",
    "tokens": "Read, write, create and delete user tokens.",
    "read:tokens": "Read user tokens.",
    "admin:groups": "Read and write group information, create and delete groups.",
    "groups": "Read and write group information, including adding/removing any users to/from "
    "groups. Note: adding users to groups may affect permissions.",
    "list:groups": "List groups, including at least their names.",
    "read:groups": "Read group models.",
    "read:groups:name": "Read group names.",
    "delete:groups": "Delete groups.",
    "admin:services": "Create, read, update, delete services, not including services defined "
    "from config files.",
    "list:services": "List services, including at least their names.",
    "read:services": "Read service models.",
    "read:services:name": "Read service names.",
    "read:hub": "Read detailed information about the Hub.",
    "access:servers": "Access user servers via API or browser.",
    "access:services": "Access services via API or browser.",
    "users:shares": "Read and revoke a user's access to shared servers.",
    "read:users:shares": "Read servers shared with a user.",
    "groups:shares": "Read and revoke a group's access to shared servers.",
    "read:groups:shares": "Read servers shared with a group.",
    "read:shares": "Read information about shared access to servers.",
    "shares": "Manage access to shared servers.",
    "proxy": "Read information about the proxy’s routing table, sync the Hub with the proxy "
    "and notify the Hub about a new proxy.",
    "shutdown": "Shutdown the hub.",
    "read:metrics": "Read prometheus metrics.",
}
# What "self" means for a user: these, filtered to the user (JupyterHub's _expand_self_scope).
SELF = ("read:users", "users:shares", "read:shares", "users:activity", "servers", "tokens")
SELF_ACCESS = "access:servers"
# What every token may read of its owner, whatever its scopes (JupyterHub's identify_scopes).
IDENTIFY = {
    "user": ("read:users:name!user", "read:users:groups!user"),
    "service": ("read:services:name!service",),
}
SPECIAL = ("inherit", "self", "all", "identify", "(no_scope)")
KINDS = ("user", "server", "group", "service")
_CUSTOM = re.compile(r"^custom:[a-z0-9]([a-z0-9_\-\*:]*[a-z0-9_\*])?$")


@dataclass(frozen=True, slots=True)  # slots: a hub holds tens of thousands of these
class Scope:
    name: str
    kind: str = ""  # "" (every target) or one of KINDS
    value: str = ""  # the user, "user/server", group or service name

    def __str__(self) -> str:
        return f"{self.name}!{self.kind}={self.value}" if self.kind else self.name


Custom = Mapping[str, tuple[str, ...]]  # custom:* scope -> its subscopes
NONE: Custom = {}  # no custom scopes (a read-only default)


def known(name: str, custom: Custom = NONE) -> bool:
    return name in SCOPES or name in custom


def subscopes(name: str, custom: Custom = NONE) -> tuple[str, ...]:
    return SCOPES.get(name) or custom.get(name, ())


def parse(text: str, custom: Custom = NONE) -> Scope:
    """'read:users!user=alice' -> Scope; BadRequest names the scope if it is not one we know."""
    name, _, filt = text.partition("!")
    if not known(name, custom):
        hint = " (define custom:* scopes in [custom_scopes])" if name.startswith("custom:") else ""
        raise BadRequest(f"Unknown scope {text[:80]!r}{hint}")
    if not filt:
        return Scope(name)
    kind, eq, value = filt.partition("=")
    if kind not in KINDS or not eq or not value:
        raise BadRequest(
            f"Scope filter {filt[:80]!r} must be user=, server=<user>/<name>, group= or service="
        )
    if kind == "server" and "/" not in value:
        value += "/"
    return Scope(name, kind, value)


def custom_name_ok(name: str) -> bool:
    return bool(_CUSTOM.match(name))


def validate(texts: Iterable[str], custom: Custom = NONE) -> list[str]:
    """The texts, if each is a scope, a filterless metascope or an owner filter ("!user")."""
    out = []
    for t in texts:
        if t not in SPECIAL and not _owner_filter(t):
            parse(t, custom)
        elif _owner_filter(t):
            parse(t.rsplit("!", 1)[0], custom)
        out.append(t)
    return out


def _owner_filter(text: str) -> bool:
    return text.endswith(("!user", "!server", "!service", "!group"))


def expand(
    texts: Iterable[str],
    owner: str = "",
    owner_kind: str = "user",
    server: str = "",
    custom: Custom = NONE,
) -> frozenset[Scope]:
    """Every scope implied by `texts`. "self" and bare "!user" mean the owner (a user);
    "!server" the owner's `server`; "!service" the owner (a service)."""
    out: set[Scope] = set()
    for text in texts:
        if text in ("inherit", "identify", "(no_scope)"):
            continue
        if text == "self":
            if owner_kind == "user" and owner:
                out |= _self(owner)
            continue
        if text == "all":
            for name in (*SCOPES, *custom):
                out.add(Scope(name))
            continue
        if _owner_filter(text):
            text = _fill_owner(text, owner, owner_kind, server)
            if not text:
                continue
        _add(out, parse(text, custom), custom)
    return frozenset(out)


def _fill_owner(text: str, owner: str, owner_kind: str, server: str) -> str:
    base, kind = text.rsplit("!", 1)
    if kind == "server":
        return f"{base}!server={owner}/{server}" if owner_kind == "user" and owner else ""
    if kind != owner_kind or not owner:
        return ""
    return f"{base}!{kind}={owner}"


@functools.lru_cache(maxsize=1024)  # bounded: not one entry per registered user
def _self(user: str) -> frozenset[Scope]:
    out: set[Scope] = set()
    for name in (*SELF, SELF_ACCESS):
        _add(out, Scope(name, "user", user), {})
    return frozenset(out)


def _add(out: set[Scope], scope: Scope, custom: Custom) -> None:
    if scope in out:
        return
    out.add(scope)
    for sub in subscopes(scope.name, custom):
        _add(out, Scope(sub, scope.kind, scope.value), custom)


Members = Mapping[str, frozenset[str]]  # group -> its members' names


def covers(held: frozenset[Scope], want: Scope, groups_of: Mapping[str, frozenset[str]]) -> bool:
    """True if `held` grants `want`: an unfiltered scope grants every filtered one; a user
    filter grants that user's servers; a group filter its members and their servers.
    `groups_of`: user name -> the groups they are in."""
    if Scope(want.name) in held or want in held:
        return True
    if want.kind in ("user", "server"):
        user = want.value.split("/", 1)[0]
        if want.kind == "server" and Scope(want.name, "user", user) in held:
            return True
        return any(Scope(want.name, "group", g) in held for g in groups_of.get(user, ()))
    return False


def intersect(
    asked: frozenset[Scope], held: frozenset[Scope], groups_of: Mapping[str, frozenset[str]]
) -> frozenset[Scope]:
    """What a token may do: the scopes it asked for, each narrowed to what its owner holds
    (an unfiltered ask the owner holds only for some users is kept for those users)."""
    return frozenset(
        {a for a in asked if covers(held, a, groups_of)}
        | {h for h in held if covers(asked, h, groups_of)}
    )


def strings(held: Iterable[Scope]) -> list[str]:
    return sorted(str(s) for s in held)


def describe(
    texts: Iterable[str], username: str, custom: Mapping[str, str] | None = None
) -> list[tuple[str, str]]:
    """(description, whom it applies to) for each scope text, as JupyterHub's
    describe_raw_scopes: "" for no filter, "only you" for the user's own filter.
    `custom`: a custom:* scope's description from [custom_scopes]."""
    out = []
    for text in texts:
        name, _, filt = text.partition("!")
        kind, _, value = filt.partition("=")
        if not filt:
            whom = ""
        elif kind == "user" and value in ("", username):
            whom = "only you"
        else:
            whom = f"{'users in group' if kind == 'group' else kind} {value}".rstrip()
        out.append((DESCRIPTIONS.get(name) or (custom or {}).get(name) or name, whom))
    return out
