"""The hub's state in SQLite (aiosqlite, WAL): users, sessions, API tokens and servers.

Plain SQL with `PRAGMA user_version` migrations. Secrets are stored only as hashes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
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
]


@dataclass
class User:
    id: int
    name: str
    admin: bool
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
    state: str  # "running" (adoptable) — pending/stopping live only in memory
    pid: int
    start_ticks: int
    host: str
    port: int
    nonce: str
    secret_hash: str
    started: float
    last_activity: float | None
    extra: dict[str, Any]


def _user(row: sqlite3.Row | tuple[Any, ...]) -> User:
    return User(row[0], row[1], bool(row[2]), row[3], row[4], row[5])


_USER_COLS = "id, name, admin, password_hash, created, last_activity"
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
            await self.db.executescript(f"BEGIN IMMEDIATE; {script}; PRAGMA user_version={i}; COMMIT;")

    async def _one(self, sql: str, *args: Any) -> Any:
        async with self.db.execute(sql, args) as cur:
            return await cur.fetchone()

    async def _all(self, sql: str, *args: Any) -> list[Any]:
        async with self.db.execute(sql, args) as cur:
            return list(await cur.fetchall())

    async def _write(self, sql: str, *args: Any) -> int:
        cur = await self.db.execute(sql, args)
        n = cur.rowcount if cur.lastrowid is None or sql.lstrip()[:6].upper() != "INSERT" else cur.lastrowid
        await cur.close()
        return int(n or 0)

    # users
    async def get_user(self, name: str) -> User | None:
        row = await self._one(f"SELECT {_USER_COLS} FROM users WHERE name = ?", name)
        return _user(row) if row else None

    async def get_user_by_id(self, uid: int) -> User | None:
        row = await self._one(f"SELECT {_USER_COLS} FROM users WHERE id = ?", uid)
        return _user(row) if row else None

    async def list_users(self, offset: int = 0, limit: int = -1) -> list[User]:
        rows = await self._all(
            f"SELECT {_USER_COLS} FROM users ORDER BY name LIMIT ? OFFSET ?", limit, offset)
        return [_user(r) for r in rows]

    async def count_users(self) -> int:
        row = await self._one("SELECT count(*) FROM users")
        return int(row[0])

    async def add_user(self, name: str, admin: bool = False,
                       password_hash: str | None = None) -> User:
        uid = await self._write(
            "INSERT INTO users (name, admin, password_hash, created) VALUES (?, ?, ?, ?)",
            name, int(admin), password_hash, time.time())
        user = await self.get_user_by_id(uid)
        assert user is not None
        return user

    async def set_admin(self, user_id: int, admin: bool) -> None:
        await self._write("UPDATE users SET admin = ? WHERE id = ?", int(admin), user_id)

    async def rename_user(self, user_id: int, name: str) -> None:
        await self._write("UPDATE users SET name = ? WHERE id = ?", name, user_id)

    async def set_password_hash(self, user_id: int, password_hash: str | None) -> None:
        await self._write("UPDATE users SET password_hash = ? WHERE id = ?",
                          password_hash, user_id)

    async def touch_user(self, user_id: int, when: float | None = None) -> None:
        await self._write(
            "UPDATE users SET last_activity = max(coalesce(last_activity, 0), ?) WHERE id = ?",
            when or time.time(), user_id)

    async def delete_user(self, user_id: int) -> None:
        await self._write("DELETE FROM users WHERE id = ?", user_id)

    # sessions
    async def add_session(self, id_hash: str, user_id: int, max_age: float) -> None:
        now = time.time()
        await self._write("INSERT INTO sessions (id_hash, user_id, created, expires) "
                          "VALUES (?, ?, ?, ?)", id_hash, user_id, now, now + max_age)

    async def session_user(self, id_hash: str) -> User | None:
        row = await self._one(
            f"SELECT {', '.join('u.' + c for c in _USER_COLS.split(', '))} FROM sessions s "
            "JOIN users u ON u.id = s.user_id WHERE s.id_hash = ? AND s.expires > ?",
            id_hash, time.time())
        return _user(row) if row else None

    async def delete_session(self, id_hash: str) -> None:
        await self._write("DELETE FROM sessions WHERE id_hash = ?", id_hash)

    async def delete_user_sessions(self, user_id: int) -> None:
        await self._write("DELETE FROM sessions WHERE user_id = ?", user_id)

    async def purge_expired(self) -> None:
        now = time.time()
        await self._write("DELETE FROM sessions WHERE expires <= ?", now)
        await self._write("DELETE FROM tokens WHERE expires IS NOT NULL AND expires <= ?", now)

    # tokens
    async def add_token(self, user_id: int, token_hash: str, prefix: str, note: str,
                        scopes: list[str], expires: float | None) -> Token:
        tid = await self._write(
            "INSERT INTO tokens (user_id, hash, prefix, note, scopes, created, expires) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            user_id, token_hash, prefix, note, json.dumps(scopes), time.time(), expires)
        tok = await self.get_token(tid)
        assert tok is not None
        return tok

    async def get_token(self, token_id: int) -> Token | None:
        row = await self._one(f"SELECT {_TOKEN_COLS} FROM tokens WHERE id = ?", token_id)
        return _token(row) if row else None

    async def token_owner(self, token_hash: str) -> tuple[User, Token] | None:
        row = await self._one(f"SELECT {_TOKEN_COLS} FROM tokens WHERE hash = ? AND "
                              "(expires IS NULL OR expires > ?)", token_hash, time.time())
        if not row:
            return None
        tok = _token(row)
        user = await self.get_user_by_id(tok.user_id)
        return (user, tok) if user else None

    async def list_tokens(self, user_id: int) -> list[Token]:
        rows = await self._all(f"SELECT {_TOKEN_COLS} FROM tokens WHERE user_id = ? ORDER BY id",
                               user_id)
        return [_token(r) for r in rows]

    async def touch_token(self, token_id: int) -> None:
        await self._write("UPDATE tokens SET last_activity = ? WHERE id = ?", time.time(), token_id)

    async def delete_token(self, user_id: int, token_id: int) -> bool:
        return await self._write("DELETE FROM tokens WHERE id = ? AND user_id = ?",
                                 token_id, user_id) > 0

    # servers
    async def save_server(self, row: ServerRow) -> None:
        await self._write(
            "INSERT OR REPLACE INTO servers (user_id, state, pid, start_ticks, host, port, "
            "nonce, secret_hash, started, last_activity, extra) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            row.user_id, row.state, row.pid, row.start_ticks, row.host, row.port, row.nonce,
            row.secret_hash, row.started, row.last_activity, json.dumps(row.extra))

    async def list_servers(self) -> list[ServerRow]:
        rows = await self._all(
            "SELECT user_id, state, pid, start_ticks, host, port, nonce, secret_hash, started, "
            "last_activity, extra FROM servers")
        return [ServerRow(*r[:10], json.loads(r[10])) for r in rows]

    async def touch_server(self, user_id: int, when: float) -> None:
        await self._write("UPDATE servers SET last_activity = max(coalesce(last_activity, 0), ?)"
                          " WHERE user_id = ?", when, user_id)

    async def delete_server(self, user_id: int) -> None:
        await self._write("DELETE FROM servers WHERE user_id = ?", user_id)
