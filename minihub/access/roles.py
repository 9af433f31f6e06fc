"""Roles, groups and custom scopes as configured: [[roles]], [[groups]], [custom_scopes].

Only the schema and the built-in roles, so that minihub.config can validate them at start-up;
minihub.access.model applies them. Names and shapes are JupyterHub's load_roles,
load_groups and custom_scopes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .. import scopes
from ..errors import HubError, StartupError
from ..tables import check_keys, no_dupes

ROLE_NAME = re.compile(r"^[a-z][a-z0-9\-_~.]{1,253}[a-z0-9]$")
GROUP_NAME = re.compile(r"^[^/\x00-\x1f\x7f]{1,255}$")
ROLE_KEYS = {
    "name": str,
    "description": str,
    "scopes": list,
    "users": list,
    "groups": list,
    "services": list,
}
GROUP_KEYS = {"name": str, "users": list, "properties": dict}
# The admin role's scopes (JupyterHub's get_default_roles), except that access:servers (and
# "shares", which implies it) come only with [hub] admin_access, as before JupyterHub 2:
# an admin manages servers but does not read users' files unless the operator says so.
ADMIN_SCOPES = (
    "admin-ui",
    "admin:users",
    "admin:servers",
    "admin:services",
    "tokens",
    "admin:groups",
    "list:services",
    "read:services",
    "read:hub",
    "proxy",
    "shutdown",
    "access:services",
    "read:roles",
    "read:metrics",
    "read:shares",
    "users:shares",
    "groups:shares",
)
# The server role's: its own server only, not the owner's others (whoever a server is
# shared with can read its token in its environment). minihub.protocols fills the filters.
SERVER_SCOPES = ("users:activity!user", "access:servers!server")


@dataclass
class Role:
    name: str
    description: str = ""
    scopes: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    services: list[str] = field(default_factory=list)


@dataclass
class GroupSpec:
    name: str
    users: list[str] = field(default_factory=list)
    properties: dict[str, Any] = field(default_factory=dict)


def builtin_roles(admin_access: bool) -> dict[str, Role]:
    admin = [*ADMIN_SCOPES, *(["access:servers", "shares"] if admin_access else [])]
    return {
        "user": Role("user", "Standard user privileges", ["self"]),
        "admin": Role("admin", "Elevated privileges (can do anything)", admin),
        "server": Role("server", "Post activity only", list(SERVER_SCOPES)),
        "token": Role("token", "Token with same permissions as its owner", ["inherit"]),
    }


def custom_scopes(raw: dict[str, Any], where: str) -> dict[str, tuple[str, ...]]:
    """[custom_scopes] "custom:x" = {description = "...", subscopes = [...]}."""
    out: dict[str, tuple[str, ...]] = {}
    for name, spec in raw.items():
        label = f"{where}: [custom_scopes] {name!r}"
        if not scopes.custom_name_ok(name):
            raise StartupError(
                f"{label}: a custom scope is named custom:<name> (a-z, 0-9, '-', '_', ':', '*')"
            )
        if not isinstance(spec, dict) or not isinstance(spec.get("description"), str):
            raise StartupError(f'{label}: give it a table with description = "..."')
        unknown = set(spec) - {"description", "subscopes"}
        if unknown:
            raise StartupError(f"{label}: unknown key {min(unknown)!r}")
        subs = spec.get("subscopes", [])
        if not isinstance(subs, list) or not all(isinstance(s, str) for s in subs):
            raise StartupError(f"{label}: subscopes must be a list of strings")
        out[name] = tuple(subs)
    for name, subs in out.items():
        for s in subs:
            if not scopes.known(s, out):
                raise StartupError(f"{where}: [custom_scopes] {name!r}: unknown subscope {s!r}")
    return out


def validate_roles(
    entries: list[dict[str, Any]], where: str, custom: dict[str, tuple[str, ...]]
) -> list[Role]:
    out: list[Role] = []
    for i, entry in enumerate(entries):
        label = f"{where}: [[roles]] #{i + 1}"
        check_keys(entry, ROLE_KEYS, label)
        name = entry.get("name")
        if not isinstance(name, str) or not ROLE_NAME.match(name):
            raise StartupError(
                f"{label}: name must be 3-255 of a-z, 0-9, '-', '_', '~', '.', "
                "starting with a letter"
            )
        label = f"{label} ({name})"
        for key in ("scopes", "users", "groups", "services"):
            if not all(isinstance(x, str) for x in entry.get(key, [])):
                raise StartupError(f"{label}: {key} must be a list of strings")
        try:
            wanted = scopes.validate(entry.get("scopes", []), custom)
        except HubError as e:
            raise StartupError(f"{label}: scopes: {e.message}") from None
        if "scopes" not in entry and name not in builtin_roles(False):
            raise StartupError(f"{label}: give the role its scopes = [...]")
        out.append(
            Role(
                name,
                str(entry.get("description", "")),
                wanted,
                list(entry.get("users", [])),
                list(entry.get("groups", [])),
                list(entry.get("services", [])),
            )
        )
    no_dupes([r.name for r in out], where, "roles")
    return out


def validate_groups(entries: list[dict[str, Any]], where: str) -> list[GroupSpec]:
    out: list[GroupSpec] = []
    for i, entry in enumerate(entries):
        label = f"{where}: [[groups]] #{i + 1}"
        check_keys(entry, GROUP_KEYS, label)
        name = entry.get("name")
        if not isinstance(name, str) or not GROUP_NAME.match(name):
            raise StartupError(f"{label}: name must be 1-255 characters without '/'")
        if not all(isinstance(x, str) for x in entry.get("users", [])):
            raise StartupError(f"{label} ({name}): users must be a list of strings")
        out.append(GroupSpec(name, list(entry.get("users", [])), dict(entry.get("properties", {}))))
    no_dupes([g.name for g in out], where, "groups")
    return out
