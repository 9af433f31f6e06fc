"""The access model's rows in SQLite: groups and members, role assignments, shares, codes.

Plain SQL on the hub's one Store connection (schema in minihub.store, migration 5).
minihub.access.model is the only caller: it keeps the same facts in memory.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from ..store import Store


@dataclass
class GroupRow:
    id: int
    name: str
    properties: dict[str, Any]
    members: set[str] = field(default_factory=set)


@dataclass
class ShareRow:
    id: int
    owner: str  # the server's owner
    server: str  # the server's name, "" for the default one
    user: str | None  # shared with this user...
    group: str | None  # ...or with this group
    scopes: list[str]
    created: float


@dataclass
class ShareCodeRow:
    id: int
    owner: str
    server: str
    prefix: str
    scopes: list[str]
    created: float
    expires: float | None
    last_exchanged: float | None
    exchange_count: int


async def load_groups(store: Store) -> dict[str, GroupRow]:
    groups = {
        r[1]: GroupRow(r[0], r[1], json.loads(r[2]))
        for r in await store._all("SELECT id, name, properties FROM groups")
    }
    rows = await store._all(
        "SELECT g.name, u.name FROM group_users m JOIN groups g ON g.id = m.group_id "
        "JOIN users u ON u.id = m.user_id"
    )
    for gname, uname in rows:
        groups[gname].members.add(uname)
    return groups


async def load_role_users(store: Store) -> dict[str, set[str]]:
    """role -> the names of the users it is assigned to."""
    out: dict[str, set[str]] = {}
    rows = await store._all(
        "SELECT r.role, u.name FROM role_users r JOIN users u ON u.id = r.user_id"
    )
    for role, uname in rows:
        out.setdefault(role, set()).add(uname)
    return out


async def create_group(store: Store, name: str, properties: dict[str, Any]) -> int:
    return await store._write(
        "INSERT INTO groups (name, properties) VALUES (?, ?)", name, json.dumps(properties)
    )


async def delete_group(store: Store, name: str) -> None:
    await store._write("DELETE FROM groups WHERE name = ?", name)


async def set_group_properties(store: Store, name: str, properties: dict[str, Any]) -> None:
    await store._write(
        "UPDATE groups SET properties = ? WHERE name = ?", json.dumps(properties), name
    )


async def add_members(store: Store, group: str, users: list[str]) -> None:
    await store.db.executemany(
        "INSERT OR IGNORE INTO group_users (group_id, user_id) SELECT g.id, u.id FROM groups g, "
        "users u WHERE g.name = ? AND u.name = ?",
        [(group, u) for u in users],
    )


async def remove_members(store: Store, group: str, users: list[str]) -> None:
    await store.db.executemany(
        "DELETE FROM group_users WHERE group_id = (SELECT id FROM groups WHERE name = ?) "
        "AND user_id = (SELECT id FROM users WHERE name = ?)",
        [(group, u) for u in users],
    )


async def assign_role(store: Store, role: str, user: str, source: str = "api") -> None:
    await store._write(
        "INSERT INTO role_users (role, user_id, source) SELECT ?, id, ? FROM users "
        "WHERE name = ? ON CONFLICT DO NOTHING",
        role,
        source,
        user,
    )


async def unassign_role(store: Store, role: str, user: str) -> None:
    await store._write(
        "DELETE FROM role_users WHERE role = ? AND user_id = (SELECT id FROM users WHERE name = ?)",
        role,
        user,
    )


async def reset_config_roles(store: Store, keep: list[str]) -> None:
    """Forget every assignment made by config (made again at start-up), and roles gone."""
    await store._write("DELETE FROM role_users WHERE source = 'config'")
    marks = ",".join("?" * len(keep))
    await store._write(f"DELETE FROM role_users WHERE role NOT IN ({marks})", *keep)


# --- shares ----------------------------------------------------------------------------------
_SHARE_SELECT = (
    "SELECT s.id, o.name, s.server, u.name, g.name, s.scopes, s.created FROM shares s "
    "JOIN users o ON o.id = s.owner_id LEFT JOIN users u ON u.id = s.user_id "
    "LEFT JOIN groups g ON g.id = s.group_id"
)


def on_server(scopes: list[str], owner: str, server: str) -> list[str]:
    """A share's scopes filtered to its server by the owner's name now: a row keeps the
    owner's id, its scopes the name it was made under, which a renamed owner no longer has
    (and a new user may take)."""
    return [f"{s.partition('!')[0]}!server={owner}/{server}" for s in scopes]


def _share(r: Any) -> ShareRow:
    return ShareRow(r[0], r[1], r[2], r[3], r[4], on_server(json.loads(r[5]), r[1], r[2]), r[6])


async def load_shares(store: Store) -> list[ShareRow]:
    return [_share(r) for r in await store._all(_SHARE_SELECT)]


async def upsert_share(
    store: Store, owner: str, server: str, user: str | None, group: str | None, scopes: list[str]
) -> ShareRow:
    """Share `owner`'s `server` with a user or a group; sharing again replaces the scopes."""
    await store._write(
        "DELETE FROM shares WHERE owner_id = (SELECT id FROM users WHERE name = ?) AND server = ? "
        "AND coalesce(user_id, 0) = coalesce((SELECT id FROM users WHERE name = ?), 0) "
        "AND coalesce(group_id, 0) = coalesce((SELECT id FROM groups WHERE name = ?), 0)",
        owner,
        server,
        user,
        group,
    )
    sid = await store._write(
        "INSERT INTO shares (owner_id, server, user_id, group_id, scopes, created) VALUES "
        "((SELECT id FROM users WHERE name = ?), ?, (SELECT id FROM users WHERE name = ?), "
        "(SELECT id FROM groups WHERE name = ?), ?, ?)",
        owner,
        server,
        user,
        group,
        json.dumps(scopes),
        time.time(),
    )
    row = await store._one(_SHARE_SELECT + " WHERE s.id = ?", sid)
    return _share(row)


async def delete_share(store: Store, share_id: int) -> None:
    await store._write("DELETE FROM shares WHERE id = ?", share_id)


# --- share codes -----------------------------------------------------------------------------
_CODE_SELECT = (
    "SELECT c.id, o.name, c.server, c.prefix, c.scopes, c.created, c.expires, c.last_exchanged, "
    "c.exchange_count FROM share_codes c JOIN users o ON o.id = c.owner_id"
)


def _code(r: Any) -> ShareCodeRow:
    scopes = on_server(json.loads(r[4]), r[1], r[2])
    return ShareCodeRow(r[0], r[1], r[2], r[3], scopes, r[5], r[6], r[7], r[8])


async def add_share_code(
    store: Store,
    owner: str,
    server: str,
    code_hash: str,
    prefix: str,
    scopes: list[str],
    expires: float | None,
) -> ShareCodeRow:
    cid = await store._write(
        "INSERT INTO share_codes (owner_id, server, hash, prefix, scopes, created, expires) "
        "VALUES ((SELECT id FROM users WHERE name = ?), ?, ?, ?, ?, ?, ?)",
        owner,
        server,
        code_hash,
        prefix,
        json.dumps(scopes),
        time.time(),
        expires,
    )
    return _code(await store._one(_CODE_SELECT + " WHERE c.id = ?", cid))


async def share_codes(store: Store, owner: str, server: str) -> list[ShareCodeRow]:
    rows = await store._all(
        _CODE_SELECT + " WHERE o.name = ? AND c.server = ? AND (c.expires IS NULL OR "
        "c.expires > ?) ORDER BY c.id",
        owner,
        server,
        time.time(),
    )
    return [_code(r) for r in rows]


async def find_share_code(store: Store, code_hash: str) -> ShareCodeRow | None:
    row = await store._one(
        _CODE_SELECT + " WHERE c.hash = ? AND (c.expires IS NULL OR c.expires > ?)",
        code_hash,
        time.time(),
    )
    return _code(row) if row else None


async def mark_share_code_used(store: Store, code_id: int) -> None:
    await store._write(
        "UPDATE share_codes SET last_exchanged = ?, exchange_count = exchange_count + 1 "
        "WHERE id = ?",
        time.time(),
        code_id,
    )


async def delete_share_codes(
    store: Store, owner: str, server: str, code_id: int | None = None
) -> int:
    return await store._write(
        "DELETE FROM share_codes WHERE owner_id = (SELECT id FROM users WHERE name = ?) "
        "AND server = ? AND (? IS NULL OR id = ?)",
        owner,
        server,
        code_id,
        code_id,
    )
