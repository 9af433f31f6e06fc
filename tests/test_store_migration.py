"""A database from before servers had names (schema 3) opens with its running server intact."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from minihub import store as st


async def test_schema_3_servers_move_into_the_spawners_state(tmp_path: Path) -> None:
    path = tmp_path / "minihub.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    for i, script in enumerate(st.MIGRATIONS[:3], start=1):
        db.executescript(f"BEGIN; {script}; PRAGMA user_version={i}; COMMIT;")
    db.execute("INSERT INTO users (name, admin, created) VALUES ('amy', 0, 1.0)")
    db.execute(
        "INSERT INTO servers (user_id, state, pid, start_ticks, host, port, nonce, secret_hash,"
        " started, last_activity, extra) VALUES (1, 'running', 1234, 5678, '127.0.0.1', 4000,"
        " 'n0', 'h0', 2.0, 3.0, ?)",
        (json.dumps({"uid": 1001, "cgroup": ["/sys/fs/cgroup/memory/minihub/amy"]}),),
    )
    db.close()
    store = await st.Store.open(path)
    try:
        [row] = await store.list_servers()
    finally:
        await store.close()
    assert (row.user_id, row.name, row.status) == (1, "", "running")
    assert row.state == {
        "uid": 1001,
        "cgroup": ["/sys/fs/cgroup/memory/minihub/amy"],
        "pid": 1234,
        "start_ticks": 5678,
    }
    assert (row.scheme, row.host, row.port, row.nonce, row.secret_hash) == (
        "http",
        "127.0.0.1",
        4000,
        "n0",
        "h0",
    )
    assert (row.started, row.last_activity, row.user_options) == (2.0, 3.0, {})
