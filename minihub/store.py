"""The hub's state in SQLite (aiosqlite, WAL): users, sessions, API tokens and servers.

Plain SQL with `PRAGMA user_version` migrations. Secrets are stored only as hashes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        admin INTEGER NOT NULL DEFAULT 0,
        password_hash TEXT,
        created REAL NOT NULL,
        last_activity REAL
    );
    CREATE TABLE sessions (
        id_hash TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created REAL NOT NULL,
        expires REAL NOT NULL
    );
    CREATE INDEX sessions_user ON sessions(user_id);
    CREATE TABLE tokens (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        hash TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT '',
        scopes TEXT NOT NULL DEFAULT '[]',
        created REAL NOT NULL,
        expires REAL,
        last_activity REAL
    );
    CREATE INDEX tokens_user ON tokens(user_id);
    CREATE TABLE servers (
        user_id INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
        state TEXT NOT NULL,
        pid INTEGER,
        start_ticks INTEGER,
        host TEXT,
        port INTEGER,
        nonce TEXT,
        secret_hash TEXT,
        started REAL,
        last_activity REAL,
        extra TEXT NOT NULL DEFAULT '{}'
    );
    """,
    # 2: hub services, OAuth clients and codes; tokens remember their kind and OAuth client
    """
    CREATE TABLE services (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        scopes TEXT NOT NULL DEFAULT '[]'
    );
    CREATE TABLE service_tokens (
        id INTEGER PRIMARY KEY,
        service_id INTEGER NOT NULL REFERENCES services(id) ON DELETE CASCADE,
        hash TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT '',
        scopes TEXT NOT NULL DEFAULT '[]',
        created REAL NOT NULL,
        expires REAL,
        last_activity REAL
    );
    CREATE TABLE oauth_clients (
        id TEXT PRIMARY KEY,
        secret_hash TEXT NOT NULL,
        redirect_uri TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        user_id INTEGER REFERENCES users(id) ON DELETE CASCADE,
        allowed_scopes TEXT NOT NULL DEFAULT '[]'
    );
    CREATE TABLE oauth_codes (
        hash TEXT PRIMARY KEY,
        client_id TEXT NOT NULL REFERENCES oauth_clients(id) ON DELETE CASCADE,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        redirect_uri TEXT NOT NULL,
        scopes TEXT NOT NULL DEFAULT '[]',
        code_challenge TEXT NOT NULL DEFAULT '',
        expires REAL NOT NULL
    );
    ALTER TABLE tokens ADD COLUMN kind TEXT NOT NULL DEFAULT 'api';
    ALTER TABLE tokens ADD COLUMN client_id TEXT;
    """,
    # 3: an identity provider's tokens per user (OAuth enable_auth_state), encrypted
    """
    CREATE TABLE auth_state (
        user_id INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
        data BLOB NOT NULL,
        updated REAL NOT NULL
    );
    """,
    # 4: several servers per user, keyed by (user, server name); where a server runs is the
    # spawner's own JSON state (a local process's pid and start time moved into it)
    """
    CREATE TABLE servers_v4 (
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        name TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT '{}',
        scheme TEXT NOT NULL DEFAULT 'http',
        host TEXT NOT NULL DEFAULT '',
        port INTEGER NOT NULL DEFAULT 0,
        nonce TEXT NOT NULL DEFAULT '',
        secret_hash TEXT NOT NULL DEFAULT '',
        started REAL,
        last_activity REAL,
        user_options TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (user_id, name)
    );
    INSERT INTO servers_v4 (user_id, name, status, state, host, port, nonce, secret_hash,
                            started, last_activity)
        SELECT user_id, '', state,
               json_patch(extra, json_object('pid', pid, 'start_ticks', start_ticks)),
               coalesce(host, ''), coalesce(port, 0), coalesce(nonce, ''),
               coalesce(secret_hash, ''), started, last_activity FROM servers;
    DROP TABLE servers;
    ALTER TABLE servers_v4 RENAME TO servers;
    """,
    # 5: JupyterHub's access model: groups, role assignments (admin became a role), shares
    """
    CREATE TABLE groups (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        properties TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE group_users (
        group_id INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        PRIMARY KEY (group_id, user_id)
    );
    CREATE INDEX group_users_user ON group_users(user_id);
    CREATE TABLE role_users (
        role TEXT NOT NULL,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        source TEXT NOT NULL DEFAULT 'api',
        PRIMARY KEY (role, user_id)
    );
    CREATE INDEX role_users_user ON role_users(user_id);
    INSERT INTO role_users (role, user_id) SELECT 'admin', id FROM users WHERE admin != 0;
    ALTER TABLE users DROP COLUMN admin;
    CREATE TABLE shares (
        id INTEGER PRIMARY KEY,
        owner_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        server TEXT NOT NULL,
        user_id INTEGER REFERENCES users(id) ON DELETE CASCADE,
        group_id INTEGER REFERENCES groups(id) ON DELETE CASCADE,
        scopes TEXT NOT NULL,
        created REAL NOT NULL,
        CHECK ((user_id IS NULL) != (group_id IS NULL))
    );
    CREATE UNIQUE INDEX shares_one ON shares(owner_id, server, coalesce(user_id, 0),
                                             coalesce(group_id, 0));
    CREATE TABLE share_codes (
        id INTEGER PRIMARY KEY,
        owner_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        server TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        scopes TEXT NOT NULL,
        created REAL NOT NULL,
        expires REAL,
        last_exchanged REAL,
        exchange_count INTEGER NOT NULL DEFAULT 0
    );
    """,
    # 6: what admins change while the hub runs (minihub.hubsettings) and sign-up requests
    # that wait for an admin (minihub.auth.signups): not users until approved
    """
    CREATE TABLE hub_settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE signups (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        email TEXT NOT NULL DEFAULT '',
        requested REAL NOT NULL
    );
    """,
    # 7: an OAuth code and its token remember the hub session that authorized them, so a
    # logout (or a password change, which ends every session) ends them too, as JupyterHub
    """
    ALTER TABLE oauth_codes ADD COLUMN session_hash TEXT;
    ALTER TABLE tokens ADD COLUMN session_hash TEXT;
    CREATE INDEX tokens_session ON tokens(session_hash) WHERE session_hash IS NOT NULL;
    """,
]


@dataclass
class User:
    id: int
    name: str
    password_hash: str | None
    created: float
    last_activity: float | None


@dataclass
class Token:
    id: int
    user_id: int
    prefix: str
    note: str
    scopes: list[str]
    created: float
    expires: float | None
    last_activity: float | None


@dataclass
class ServerRow:
    user_id: int
    name: str  # "" for the default server
    status: str  # "running" (adoptable), "starting" (stopped by a restarted hub), "stopped"
    state: dict[str, Any]  # the spawner's own
    scheme: str
    host: str
    port: int
    nonce: str
    secret_hash: str
    started: float
    last_activity: float | None
    user_options: dict[str, Any]


@dataclass
class UserQuery:
    """Which users a listing wants: a name substring, and optionally only these names or
    ids, none of `not_ids`; sorted by name, last activity, or `front` (running) first."""

    substring: str = ""
    names: set[str] | None = None
    ids: set[int] | None = None
    not_ids: set[int] = field(default_factory=set)
    order: str = "name"  # id | name | last_activity | running
    descending: bool = False
    front: set[int] = field(default_factory=set)
    offset: int = 0
    limit: int = 50


def _user(row: sqlite3.Row | tuple[Any, ...]) -> User:
    return User(row[0], row[1], row[2], row[3], row[4])


_USER_COLS = "id, name, password_hash, created, last_activity"
_TOKEN_COLS = "id, user_id, prefix, note, scopes, created, expires, last_activity"


def _token(row: Any) -> Token:
    return Token(row[0], row[1], row[2], row[3], json.loads(row[4]), row[5], row[6], row[7])


class Store:
    """One aiosqlite connection; every write is committed before the caller answers."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    @classmethod
    async def open(cls, path: Path) -> Store:
        new = not path.exists()
        db = await aiosqlite.connect(str(path), isolation_level=None)
        if new:
            os.chmod(path, 0o600)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("PRAGMA foreign_keys=ON")
        await db.execute("PRAGMA busy_timeout=5000")
        store = cls(db)
        await store.migrate()
        return store

    async def close(self) -> None:
        await self.db.close()

    async def migrate(self) -> None:
        async with self.db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        for i, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await self.db.executescript(
                f"BEGIN IMMEDIATE; {script}; PRAGMA user_version={i}; COMMIT;"
            )

    async def _one(self, sql: str, *args: Any) -> Any:
        async with self.db.execute(sql, args) as cur:
            return await cur.fetchone()

    async def _all(self, sql: str, *args: Any) -> list[Any]:
        async with self.db.execute(sql, args) as cur:
            return list(await cur.fetchall())

    async def _write(self, sql: str, *args: Any) -> int:
        cur = await self.db.execute(sql, args)
        n = (
            cur.rowcount
            if cur.lastrowid is None or sql.lstrip()[:6].upper() != "INSERT"
            else cur.lastrowid
        )
        await cur.close()
        return int(n or 0)

    # users
    async def get_user(self, name: str) -> User | None:
        row = await self._one(f"SELECT {_USER_COLS} FROM users WHERE name = ?", name)
        return _user(row) if row else None

    async def get_user_by_id(self, uid: int) -> User | None:
        row = await self._one(f"SELECT {_USER_COLS} FROM users WHERE id = ?", uid)
        return _user(row) if row else None

    async def users_by_ids(self, ids: Iterable[int]) -> dict[int, User]:
        """The users with these ids (start-up re-adopts hundreds)."""
        rows = await self._all_in(f"SELECT {_USER_COLS} FROM users WHERE id IN", ids)
        return {u.id: u for u in map(_user, rows)}

    async def existing_names(self, names: Iterable[str]) -> set[str]:
        """Which of these names are users'."""
        return {
            str(r[0]) for r in await self._all_in("SELECT name FROM users WHERE name IN", names)
        }

    async def _all_in(self, sql: str, values: Iterable[Any]) -> list[Any]:
        """`sql` ending in "IN", for these values: a query per 500 (SQLite's variable limit)."""
        want, rows = sorted(set(values)), []
        for k in range(0, len(want), 500):
            chunk = want[k : k + 500]
            rows += await self._all(f"{sql} ({','.join('?' * len(chunk))})", *chunk)
        return rows

    async def list_users(self, offset: int = 0, limit: int = -1) -> list[User]:
        rows = await self._all(
            f"SELECT {_USER_COLS} FROM users ORDER BY name LIMIT ? OFFSET ?", limit, offset
        )
        return [_user(r) for r in rows]

    async def search_users(self, q: UserQuery) -> tuple[list[User], int]:
        """One page of the users matching `q` (the admin page's table), and how many match:
        filtered, sorted and paged in SQL, so a page of 10,000 users costs one page."""
        where: list[str] = []
        args: list[Any] = []
        if q.substring:  # instr on every row costs more than the page itself
            where.append("instr(lower(name), lower(?)) > 0")
            args.append(q.substring)
        if q.names is not None:
            where.append("name IN (SELECT value FROM json_each(?))")
            args.append(json.dumps(sorted(q.names)))
        if q.ids is not None:
            where.append("id IN (SELECT value FROM json_each(?))")
            args.append(json.dumps(sorted(q.ids)))
        if q.not_ids:
            where.append("id NOT IN (SELECT value FROM json_each(?))")
            args.append(json.dumps(sorted(q.not_ids)))
        cond = " AND ".join(where) or "1"
        count = f"SELECT count(*) FROM users WHERE {cond}"
        desc = " DESC" if q.descending else ""
        nulls = "last_activity IS NULL" if desc else "last_activity IS NOT NULL"
        order = {  # NULL first going up, last going down, as JupyterHub's sort
            "id": f"id{desc}",
            "name": f"name{desc}",
            "last_activity": f"{nulls}, last_activity{desc}, name",
            "running": f"id IN (SELECT value FROM json_each(?)){'' if desc else ' DESC'}, name",
        }[q.order]
        front = [json.dumps(sorted(q.front))] if q.order == "running" else []
        where_ = f"WHERE {cond} ORDER BY {order} LIMIT ? OFFSET ?"
        if q.order == "name":  # the offset skipped in the name index, not in the table
            where_ = f"WHERE id IN (SELECT id FROM users {where_}) ORDER BY {order}"
        # the count rides along with the page: one trip to the database thread, not two
        rows = list(
            await self.db.execute_fetchall(
                f"SELECT ({count}), {_USER_COLS} FROM users {where_}",
                [*args, *args, *front, q.limit, q.offset],
            )
        )
        if rows:
            return [_user(r[1:]) for r in rows], int(rows[0][0])
        (row,) = await self.db.execute_fetchall(count, args)
        return [], int(row[0])

    async def count_users(self) -> int:
        row = await self._one("SELECT count(*) FROM users")
        return int(row[0])

    async def add_user(self, name: str, password_hash: str | None = None) -> User:
        uid = await self._write(
            "INSERT INTO users (name, password_hash, created) VALUES (?, ?, ?)",
            name,
            password_hash,
            time.time(),
        )
        user = await self.get_user_by_id(uid)
        assert user is not None
        return user

    async def rename_user(self, user_id: int, name: str) -> None:
        await self._write("UPDATE users SET name = ? WHERE id = ?", name, user_id)

    async def set_password_hash(self, user_id: int, password_hash: str | None) -> None:
        await self._write("UPDATE users SET password_hash = ? WHERE id = ?", password_hash, user_id)

    async def touch_user(self, user_id: int, when: float | None = None) -> None:
        await self._write(
            "UPDATE users SET last_activity = max(coalesce(last_activity, 0), ?) WHERE id = ?",
            when or time.time(),
            user_id,
        )

    async def delete_user(self, user_id: int) -> None:
        await self._write("DELETE FROM users WHERE id = ?", user_id)

    # sessions
    async def add_session(self, id_hash: str, user_id: int, max_age: float) -> None:
        now = time.time()
        await self._write(
            "INSERT INTO sessions (id_hash, user_id, created, expires) VALUES (?, ?, ?, ?)",
            id_hash,
            user_id,
            now,
            now + max_age,
        )

    async def session_user(self, id_hash: str) -> User | None:
        row = await self._one(
            f"SELECT {', '.join('u.' + c for c in _USER_COLS.split(', '))} FROM sessions s "
            "JOIN users u ON u.id = s.user_id WHERE s.id_hash = ? AND s.expires > ?",
            id_hash,
            time.time(),
        )
        return _user(row) if row else None

    async def session_expires(self, id_hash: str) -> float | None:
        """When the session ends; None if it has already."""
        row = await self._one(
            "SELECT expires FROM sessions WHERE id_hash = ? AND expires > ?", id_hash, time.time()
        )
        return float(row[0]) if row else None

    async def delete_session(self, id_hash: str) -> None:
        """The session, and the OAuth tokens it authorized."""
        await self._write("DELETE FROM sessions WHERE id_hash = ?", id_hash)
        await self._write("DELETE FROM tokens WHERE session_hash = ?", id_hash)

    async def delete_user_sessions(self, user_id: int) -> None:
        """Every session of the user, and the OAuth tokens they authorized."""
        await self._write("DELETE FROM sessions WHERE user_id = ?", user_id)
        await self._write(
            "DELETE FROM tokens WHERE user_id = ? AND session_hash IS NOT NULL", user_id
        )

    async def purge_expired(self) -> None:
        now = time.time()
        await self._write("DELETE FROM sessions WHERE expires <= ?", now)
        await self._write("DELETE FROM tokens WHERE expires IS NOT NULL AND expires <= ?", now)

    # tokens
    async def add_token(
        self,
        user_id: int,
        token_hash: str,
        prefix: str,
        note: str,
        scopes: list[str],
        expires: float | None,
    ) -> Token:
        if expires is not None and not 0 < expires < MAX_TIME:
            # NaN would be stored as NULL (a token that never expires), inf or 1e20 as a time
            # no listing can show: callers bound expires_in, this is the last line.
            raise ValueError(f"token expiry out of range: {expires!r}")
        tid = await self._write(
            "INSERT INTO tokens (user_id, hash, prefix, note, scopes, created, expires) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            user_id,
            token_hash,
            prefix,
            note,
            json.dumps(scopes),
            time.time(),
            expires,
        )
        tok = await self.get_token(tid)
        assert tok is not None
        return tok

    async def get_token(self, token_id: int) -> Token | None:
        row = await self._one(f"SELECT {_TOKEN_COLS} FROM tokens WHERE id = ?", token_id)
        return _token(row) if row else None

    async def token_owner(self, token_hash: str) -> tuple[User, Token] | None:
        row = await self._one(
            f"SELECT {_TOKEN_COLS} FROM tokens WHERE hash = ? AND (expires IS NULL OR expires > ?)",
            token_hash,
            time.time(),
        )
        if not row:
            return None
        tok = _token(row)
        user = await self.get_user_by_id(tok.user_id)
        return (user, tok) if user else None

    async def list_tokens(self, user_id: int) -> list[Token]:
        rows = await self._all(
            f"SELECT {_TOKEN_COLS} FROM tokens WHERE user_id = ? ORDER BY id", user_id
        )
        return [_token(r) for r in rows]

    async def count_api_tokens(self, user_id: int) -> int:
        """The user's own unexpired API tokens (not servers' or OAuth's)."""
        row = await self._one(
            "SELECT COUNT(*) FROM tokens WHERE user_id = ? AND kind = 'api' "
            "AND (expires IS NULL OR expires > ?)",
            user_id,
            time.time(),
        )
        return int(row[0]) if row else 0

    async def touch_token(self, token_id: int) -> None:
        if token_id < 0:  # a service's token (see service_token_owner)
            await self._write(
                "UPDATE service_tokens SET last_activity = ? WHERE id = ?", time.time(), -token_id
            )
            return
        await self._write("UPDATE tokens SET last_activity = ? WHERE id = ?", time.time(), token_id)

    async def delete_token(self, user_id: int, token_id: int) -> bool:
        return (
            await self._write("DELETE FROM tokens WHERE id = ? AND user_id = ?", token_id, user_id)
            > 0
        )

    # servers
    async def save_server(self, row: ServerRow) -> None:
        await self._write(
            "INSERT OR REPLACE INTO servers (user_id, name, status, state, scheme, host, port, "
            "nonce, secret_hash, started, last_activity, user_options) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            row.user_id,
            row.name,
            row.status,
            json.dumps(row.state),
            row.scheme,
            row.host,
            row.port,
            row.nonce,
            row.secret_hash,
            row.started,
            row.last_activity,
            json.dumps(row.user_options),
        )

    async def list_servers(self) -> list[ServerRow]:
        rows = await self._all(
            "SELECT user_id, name, status, state, scheme, host, port, nonce, secret_hash, "
            "started, last_activity, user_options FROM servers"
        )
        return [
            ServerRow(
                r[0],
                r[1],
                r[2],
                json.loads(r[3]),
                r[4],
                r[5],
                r[6],
                r[7],
                r[8],
                r[9] or 0.0,
                r[10],
                json.loads(r[11]),
            )
            for r in rows
        ]

    async def touch_activity(self, servers: list[tuple[int, str, float]]) -> None:
        """Servers' last activity (user id, server name, when) and their users', one
        statement each: the latest of what is stored and what is given."""
        users: dict[int, float] = {}
        for uid, _, when in servers:
            users[uid] = max(when, users.get(uid, 0.0))
        await self._write(
            "UPDATE servers SET last_activity = max(coalesce(servers.last_activity, 0), "
            "json_extract(t.value, '$[2]')) FROM json_each(?) AS t "
            "WHERE servers.user_id = json_extract(t.value, '$[0]') "
            "AND servers.name = json_extract(t.value, '$[1]')",
            json.dumps(servers),
        )
        await self._write(
            "UPDATE users SET last_activity = max(coalesce(users.last_activity, 0), "
            "json_extract(t.value, '$[1]')) FROM json_each(?) AS t "
            "WHERE users.id = json_extract(t.value, '$[0]')",
            json.dumps(list(users.items())),
        )

    async def delete_server(self, user_id: int, name: str = "") -> None:
        await self._write("DELETE FROM servers WHERE user_id = ? AND name = ?", user_id, name)

    # auth state: opaque (already encrypted) bytes from the authenticator
    async def set_auth_state(self, user_id: int, data: bytes) -> None:
        await self._write(
            "INSERT INTO auth_state (user_id, data, updated) VALUES (?, ?, ?) "
            "ON CONFLICT(user_id) DO UPDATE SET data = excluded.data, "
            "updated = excluded.updated",
            user_id,
            data,
            time.time(),
        )

    async def get_auth_state(self, user_id: int) -> bytes | None:
        row = await self._one("SELECT data FROM auth_state WHERE user_id = ?", user_id)
        return bytes(row[0]) if row else None

    # services: principals that hold tokens, apart from users (see minihub.access)
    async def service_token(self, token_hash: str) -> tuple[str, Token] | None:
        """The service a token belongs to, and the token (its id negative: see touch_token)."""
        row = await self._one(
            "SELECT t.id, t.service_id, t.prefix, t.note, t.scopes, t.created, t.expires, "
            "t.last_activity, s.name FROM service_tokens t JOIN services s "
            "ON s.id = t.service_id WHERE t.hash = ? AND (t.expires IS NULL OR t.expires > ?)",
            token_hash,
            time.time(),
        )
        if not row:
            return None
        tok = Token(-row[0], 0, row[2], row[3], json.loads(row[4]), row[5], row[6], row[7])
        return str(row[8]), tok

    async def sync_service(self, name: str, scopes: list[str]) -> int:
        await self._write(
            "INSERT INTO services (name, scopes) VALUES (?, ?) ON CONFLICT(name) "
            "DO UPDATE SET scopes = excluded.scopes",
            name,
            json.dumps(scopes),
        )
        row = await self._one("SELECT id FROM services WHERE name = ?", name)
        return int(row[0])

    async def forget_services_except(self, names: list[str]) -> None:
        marks = ",".join("?" * len(names))
        await self._write(f"DELETE FROM services WHERE name NOT IN ({marks})", *names)

    async def set_service_token(
        self, service_id: int, token_hash: str, prefix: str, note: str
    ) -> None:
        """The service's one token from now on (its configured or a generated one)."""
        await self._write("DELETE FROM service_tokens WHERE service_id = ?", service_id)
        await self._write(
            "INSERT INTO service_tokens (service_id, hash, prefix, note, created) "
            "VALUES (?, ?, ?, ?, ?)",
            service_id,
            token_hash,
            prefix,
            note,
            time.time(),
        )

    # tokens the hub makes for a purpose: a server's API token, OAuth access tokens
    async def add_kind_token(
        self,
        user_id: int,
        token_hash: str,
        prefix: str,
        note: str,
        scopes: list[str],
        kind: str,
        client_id: str | None,
        expires: float | None = None,
        session_hash: str | None = None,
    ) -> Token:
        """A token of a kind ("server", "oauth"); `session_hash`: the session it lasts for."""
        tok = await self.add_token(user_id, token_hash, prefix, note, scopes, expires)
        await self._write(
            "UPDATE tokens SET kind = ?, client_id = ?, session_hash = ? WHERE id = ?",
            kind,
            client_id,
            session_hash,
            tok.id,
        )
        return tok

    async def oauth_scopes_granted(self, user_id: int, client_id: str) -> set[str]:
        """What the user's unexpired OAuth tokens from this client hold, together."""
        rows = await self._all(
            "SELECT scopes FROM tokens WHERE user_id = ? AND kind = 'oauth' AND client_id = ? "
            "AND (expires IS NULL OR expires > ?)",
            user_id,
            client_id,
            time.time(),
        )
        return {s for (raw,) in rows for s in json.loads(raw)}

    async def delete_kind_tokens(self, user_id: int, kind: str) -> None:
        await self._write("DELETE FROM tokens WHERE user_id = ? AND kind = ?", user_id, kind)

    async def delete_server_tokens(self, user_id: int, client_id: str, default: bool) -> None:
        """The API tokens of one of the user's servers; for the default server also those
        from before servers had names, which carry no client."""
        await self._write(
            "DELETE FROM tokens WHERE user_id = ? AND kind = 'server' AND "
            "(client_id = ? OR (? AND client_id IS NULL))",
            user_id,
            client_id,
            int(default),
        )

    # OAuth clients and codes
    async def save_oauth_client(
        self,
        client_id: str,
        secret_hash: str,
        redirect_uri: str,
        description: str,
        user_id: int | None,
        allowed_scopes: list[str],
    ) -> None:
        await self._write(
            "INSERT OR REPLACE INTO oauth_clients (id, secret_hash, redirect_uri, description, "
            "user_id, allowed_scopes) VALUES (?, ?, ?, ?, ?, ?)",
            client_id,
            secret_hash,
            redirect_uri,
            description,
            user_id,
            json.dumps(allowed_scopes),
        )

    async def get_oauth_client(self, client_id: str) -> OAuthClient | None:
        row = await self._one(
            "SELECT id, secret_hash, redirect_uri, description, user_id, "
            "allowed_scopes FROM oauth_clients WHERE id = ?",
            client_id,
        )
        if not row:
            return None
        return OAuthClient(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]))

    async def forget_service_clients_except(self, prefix: str, keep: list[str]) -> None:
        """Delete the OAuth clients of services no longer configured (ids starting with
        `prefix`, no owner), and the tokens issued through them."""
        marks = ",".join("?" * len(keep)) or "''"
        gone = await self._all(
            f"SELECT id FROM oauth_clients WHERE user_id IS NULL AND substr(id, 1, ?) = ? "
            f"AND id NOT IN ({marks})",
            len(prefix),
            prefix,
            *keep,
        )
        for (cid,) in gone:
            await self._write("DELETE FROM tokens WHERE kind = 'oauth' AND client_id = ?", cid)
            await self._write("DELETE FROM oauth_clients WHERE id = ?", cid)

    async def add_oauth_code(
        self,
        code_hash: str,
        client_id: str,
        user_id: int,
        redirect_uri: str,
        scopes: list[str],
        challenge: str,
        expires: float,
        session_hash: str | None = None,
    ) -> None:
        await self._write(
            "INSERT INTO oauth_codes (hash, client_id, user_id, redirect_uri, scopes, "
            "code_challenge, expires, session_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            code_hash,
            client_id,
            user_id,
            redirect_uri,
            json.dumps(scopes),
            challenge,
            expires,
            session_hash,
        )

    async def take_oauth_code(self, code_hash: str) -> OAuthCode | None:
        """The code, deleted so it is used once; None if unknown or expired."""
        # One statement, so two exchanges racing for the same code cannot both get it.
        row = await self._one(
            "DELETE FROM oauth_codes WHERE hash = ? RETURNING client_id, "
            "user_id, redirect_uri, scopes, code_challenge, expires, session_hash",
            code_hash,
        )
        await self._write("DELETE FROM oauth_codes WHERE expires <= ?", time.time())
        if not row or row[5] <= time.time():
            return None
        return OAuthCode(row[0], row[1], row[2], json.loads(row[3]), row[4], row[6])


MAX_TIME = 253402300799.0  # 9999-12-31T23:59:59Z, the last moment a datetime can show


@dataclass
class OAuthClient:
    id: str
    secret_hash: str
    redirect_uri: str
    description: str
    user_id: int | None
    allowed_scopes: list[str]


@dataclass
class OAuthCode:
    client_id: str
    user_id: int
    redirect_uri: str
    scopes: list[str]
    code_challenge: str
    session_hash: str | None = None  # the hub session that authorized it
