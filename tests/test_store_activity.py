"""Store.touch_activity: the servers' activity the hub flushes every 30 s, in one statement
each for servers and users, on a real SQLite file: the latest of stored and given wins, a
user with several servers gets the latest of theirs, other rows are untouched."""

from __future__ import annotations

from pathlib import Path

from minihub.store import ServerRow, Store


def row(uid: int, name: str, last: float | None) -> ServerRow:
    return ServerRow(uid, name, "running", {}, "http", "127.0.0.1", 1, "n", "h", 1.0, last, {})


async def test_touch_activity_takes_the_latest(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "minihub.sqlite")
    try:
        amy, bob, cai = [await store.add_user(n) for n in ("amy", "bob", "cai")]
        await store.save_server(row(amy.id, "", 100.0))
        await store.save_server(row(amy.id, "work", None))
        await store.save_server(row(bob.id, "", 500.0))
        await store.save_server(row(cai.id, "", 50.0))
        await store.touch_user(bob.id, 400.0)
        await store.touch_activity(
            [(amy.id, "", 200.0), (amy.id, "work", 300.0), (bob.id, "", 450.0)]
        )
        servers = {(s.user_id, s.name): s.last_activity for s in await store.list_servers()}
        assert servers == {
            (amy.id, ""): 200.0,
            (amy.id, "work"): 300.0,
            (bob.id, ""): 500.0,  # stored later than given: kept
            (cai.id, ""): 50.0,  # not given: untouched
        }
        users = {u.name: u.last_activity for u in await store.list_users()}
        assert users["amy"] == 300.0  # the latest of amy's two servers
        assert users["bob"] == 450.0  # given later than stored
        assert users["cai"] is None
        await store.touch_activity([])  # nothing moved: nothing written, no error
    finally:
        await store.close()
