"""The admin page's users table over HTTP (an in-process hub, FakeSpawner servers): paging,
filter and sort in the URL, per-user edit and delete, bulk actions on a selection or a
filter (refused targets reported), one-time passwords shown once and as CSV, never kept
or logged, shutdown's checks, and GET /hub/api/users' name_filter and sort."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import helpers
import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import hub_config, login, xsrf_of

from minihub import servers as servers_mod
from minihub.app import make_app
from minihub.auth.native import NativeAuthenticator
from minihub.context import PARTS
from minihub.spawner.fake import FakeSpawner
from minihub.store import Store
from minihub.users import create, new_token

PASSWORD = "admin-password-1"
N = 1200  # users made straight in SQLite: more than two pages of the largest size


@pytest.fixture(autouse=True)
def quick_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers_mod, "SLOW_SPAWN", 0.1)
    monkeypatch.setattr(servers_mod, "POLL_EVERY", 3600.0)


async def seed(cfg: Any) -> dict[str, str]:
    """boss (admin) and tia (a teaching assistant for group lab), with passwords; N students
    st0000.. with no password (rows, not accounts), the first 20 in group lab, every tenth
    last active at a known time; returns tokens."""
    store = await Store.open(cfg.data_dir / "minihub.sqlite")
    auth = NativeAuthenticator(cfg, store)
    boss = await create(store, auth, "boss", True, PASSWORD)
    await create(store, auth, "tia", False, PASSWORD)
    await create(store, auth, "zed", False, PASSWORD)  # a student with no admin-ui at all
    now = time.time()
    await store.db.executemany(
        "INSERT INTO users (name, created, last_activity) VALUES (?, ?, ?)",
        [(f"st{i:04d}", now, now - i if i % 10 == 0 else None) for i in range(N)],
    )
    await store.db.execute("INSERT INTO groups (name) VALUES ('lab')")
    await store.db.execute(
        "INSERT INTO group_users (group_id, user_id) SELECT g.id, u.id FROM groups g, users u "
        "WHERE g.name = 'lab' AND u.name < 'st0020' AND u.name LIKE 'st%'"
    )
    tok = {"boss": (await new_token(store, boss, "test"))[0]}
    await store.close()
    return tok


def hub_cfg(data_dir: str) -> Any:
    cfg = hub_config(data_dir, auth__authenticator="native", hub__allow_named_servers=True)
    cfg.roles = [
        {
            "name": "tutor",
            "scopes": ["admin-ui", "list:users!group=lab", "servers!group=lab", "groups!group=lab"],
            "users": ["tia"],
        }
    ]
    return cfg


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The seeded store (passwords and N rows), made once; each test's hub starts on a copy."""
    return helpers.seed_once(tmp_path_factory, hub_cfg, seed)


@pytest.fixture
async def hub(
    data_dir: str, seeded: tuple[Path, dict[str, str]]
) -> AsyncIterator[tuple[TestClient[Any, Any], FakeSpawner, str]]:
    cfg = hub_cfg(data_dir)
    store, tok = seeded
    shutil.copyfile(store, cfg.data_dir / "minihub.sqlite")
    fake = FakeSpawner()
    c: TestClient[Any, Any] = TestClient(TestServer(make_app(cfg, spawner=fake)))
    await c.start_server()
    try:
        yield c, fake, tok["boss"]
    finally:
        await c.close()
        await fake.shutdown()


def rows(page: str) -> list[str]:
    return re.findall(r'<tr data-user="([^"]+)">', page)


async def admin(c: TestClient[Any, Any], query: str = "", want: int = 200) -> str:
    r = await c.get("/hub/admin" + (f"?{query}" if query else ""))
    text = await r.text()
    assert r.status == want, text[:2000]
    return text


async def post(c: TestClient[Any, Any], path: str, want: int = 200, **data: Any) -> str:
    r = await c.post(path, data={"_xsrf": xsrf_of(c), **data}, allow_redirects=False)
    text = await r.text()
    assert r.status == want, text[:3000]
    return text


async def start(c: TestClient[Any, Any], tok: str, *names: str) -> None:
    h = {"Authorization": f"token {tok}"}
    p = c.server.app[PARTS]
    ids = []
    for name in names:
        r = await c.post(f"/hub/api/users/{name}/server", headers=h)
        assert r.status in (201, 202) or "already running" in await r.text()
        ids.append((await p.store.get_user(name)).id)
    async with asyncio.timeout(10):
        while any((s := p.servers.peek(i)) is None or s.status != "running" for i in ids):
            await asyncio.sleep(0.02)


async def test_paging_filter_and_sort_live_in_the_url(hub: Any) -> None:
    c, _, tok = hub
    assert (await login(c, "boss", PASSWORD, next="/hub/admin")).status == 302
    first = await admin(c)
    assert rows(first) == ["boss"] + [f"st{i:04d}" for i in range(49)]  # 50 a page, by name
    assert f"of {-(-(N + 3) // 50)} · {N + 3} user(s)" in first
    assert 'href="?page=2"' in first
    assert rows(await admin(c, "page=2&per_page=100"))[0] == "st0099"
    last = await admin(c, "page=3&per_page=500")
    assert rows(last)[-2:] == ["tia", "zed"] and len(rows(last)) == N + 3 - 1000
    assert rows(await admin(c, "page=99")) == []  # past the end: an empty page, not an error
    # name substring (case-insensitive), group, admin
    assert rows(await admin(c, "q=ST011")) == [f"st011{i}" for i in range(10)]
    lab = await admin(c, "group=lab&per_page=25")
    assert rows(lab) == [f"st{i:04d}" for i in range(20)]
    assert 'value="lab" selected' in lab  # the box shows the filter it applied
    assert rows(await admin(c, "admin=1")) == ["boss"]
    assert rows(await admin(c, "group=lab&q=st001&sort=-name")) == [
        f"st00{i}" for i in range(19, 9, -1)
    ]
    # last activity: most recent first going down; never-active ones last
    recent = rows(await admin(c, "sort=-last_activity&per_page=25"))
    assert recent[:3] == ["boss", "st0000", "st0010"]  # boss logged in just now
    # running first, and the state filter
    await start(c, tok, "st0500", "st0007")
    assert rows(await admin(c, "sort=running"))[:2] == ["st0007", "st0500"]
    assert rows(await admin(c, "state=running")) == ["st0007", "st0500"]
    stopped = await admin(c, "state=stopped&q=st050")
    assert "st0500" not in rows(stopped) and "st0501" in rows(stopped)
    for bad in ("state=dead", "sort=password", "per_page=7", "page=x", "per_page=-1"):
        await admin(c, bad, 400)


async def test_a_server_row_shows_usage_open_and_the_last_failure(hub: Any) -> None:
    c, fake, tok = hub
    await login(c, "boss", PASSWORD)
    await start(c, tok, "st0001", "boss")
    page = await admin(c, "q=st0001")
    assert 'data-status="running"' in page
    assert 'href="/user/st0001/"' not in page  # admins reach servers only with admin_access
    assert 'href="/user/boss/"' in await admin(c, "q=boss")
    assert 'class="usage"' not in page  # FakeSpawner cannot tell: no numbers invented
    fake.plan("st0002").fail = "no room on the cluster"
    fake.plan("st0002").log.append("Traceback: out of pods")
    await post(c, "/hub/admin/users/st0002/start", 302)
    async with asyncio.timeout(10):
        while "last start failed" not in (page := await admin(c, "q=st0002")):
            await asyncio.sleep(0.02)
    assert "no room on the cluster" in page and "Traceback: out of pods" in page
    assert 'id="hub-line"' in page and "active server limit" in page


async def test_actions_go_back_to_the_filtered_page_and_edit_renames(hub: Any) -> None:
    c, _, tok = hub
    await login(c, "boss", PASSWORD)
    nxt = "/hub/admin?q=st01&page=2"
    r = await c.post(
        "/hub/admin/users/st0100/make-admin",
        data={"_xsrf": xsrf_of(c), "next": nxt},
        allow_redirects=False,
    )
    assert r.status == 302 and r.headers["Location"] == nxt
    for evil in ("https://evil.example/hub/admin", "/hub/adminx", "//evil/hub/admin"):
        r = await c.post(
            "/hub/admin/users/st0100/make-admin",
            data={"_xsrf": xsrf_of(c), "next": evil},
            allow_redirects=False,
        )
        assert r.headers["Location"] == "/hub/admin"
    assert "st0100" in rows(await admin(c, "admin=1"))
    await post(
        c, "/hub/admin/users/st0100/edit", 302, new_name="Renamed", next="/hub/admin?admin=1"
    )
    assert rows(await admin(c, "admin=1")) == ["boss"]  # the box was unticked: no admin
    assert rows(await admin(c, "q=renamed")) == ["renamed"]
    await post(c, "/hub/admin/users/renamed/edit", 302, new_name="renamed", admin="on")
    assert rows(await admin(c, "admin=1")) == ["boss", "renamed"]
    await post(c, "/hub/admin/users/renamed/edit", 409, new_name="st0101")
    await start(c, tok, "st0102")
    assert "Stop st0102" in await post(c, "/hub/admin/users/st0102/edit", 400, new_name="x102")
    assert "own admin" in await post(c, "/hub/admin/users/boss/edit", 400, new_name="boss")
    await post(c, "/hub/admin/users/st0103/delete", 302)
    assert rows(await admin(c, "q=st0103")) == []
    # no root account removal without a root hub and the local spawner
    await post(c, "/hub/admin/users/st0104/delete", 403, remove_account="on")
    assert rows(await admin(c, "q=st0104")) == ["st0104"]


async def test_bulk_actions_on_a_selection_and_on_a_filter(hub: Any) -> None:
    c, _, tok = hub
    await login(c, "boss", PASSWORD, next="/hub/admin")
    p = c.server.app[PARTS]
    bulk = "/hub/admin/users/bulk"
    r = await c.post(
        bulk,
        data=[("_xsrf", xsrf_of(c)), ("action", "start"), ("user", "st0003"), ("user", "st0004")],
    )
    assert r.status == 200 and "Starting 2: st0003, st0004" in await r.text()
    await start(c, tok, "st0003", "st0004", "st0900")
    # stop all of the filter "group lab, running": st0900 (not in lab) keeps running
    page = await post(c, bulk, action="stop", target="filter", group="lab", state="running")
    assert "Stopped 2: st0003, st0004" in page
    assert rows(await admin(c, "state=running")) == ["st0900"]
    page = await post(c, bulk, action="add-to-group", target="filter", q="st09", to_group="lab")
    assert "Added to the group 100" in page
    assert len(p.access.group("lab").members) == 120
    await post(c, bulk, 404, action="add-to-group", target="filter", q="st09", to_group="nope")
    await post(c, bulk, 400, action="explode", target="filter")
    page = await post(c, bulk, action="delete", target="filter", q="st11")
    assert "Deleted 100" in page and await p.store.count_users() == N + 3 - 100
    assert (await post(c, bulk, 400, action="stop")).count("No users chosen") == 1
    page = await post(c, bulk, 403, action="delete", user="boss")
    assert "You cannot delete yourself" in page


async def test_a_teaching_assistant_sees_and_acts_on_their_group_only(hub: Any) -> None:
    """tia may list and run the lab's servers: the table shows only lab, a bulk stop of
    everyone reaches only lab, and naming others is refused per user, not silently."""
    c, _, tok = hub
    await start(c, tok, "st0005", "st0600")
    assert (await login(c, "tia", PASSWORD, next="/hub/admin")).status == 302
    assert rows(await admin(c, "per_page=100")) == [f"st{i:04d}" for i in range(20)]
    assert rows(await admin(c, "q=st06")) == []
    page = await admin(c, "q=st0005")
    assert 'data-status="running"' in page
    assert 'href="/user/st0005/"' not in page  # servers!group=lab: no access:servers
    page = await post(c, "/hub/admin/users/bulk", action="stop", target="filter")
    assert "Stopped 20" in page  # lab only: the filter is what tia may list
    r = await c.post(
        "/hub/admin/users/bulk",
        data=[("_xsrf", xsrf_of(c)), ("action", "delete"), ("user", "st0600"), ("user", "boss")],
    )
    text = await r.text()
    assert r.status == 403 and "Refused 2" in text and "delete:users" in text
    assert await c.server.app[PARTS].store.get_user("st0600") is not None
    r = await c.post(
        "/hub/admin/users/bulk",
        data=[("_xsrf", xsrf_of(c)), ("action", "stop"), ("user", "st0600")],
    )
    assert r.status == 403 and "st0600" in await r.text()
    p = c.server.app[PARTS]
    assert p.servers.peek((await p.store.get_user("st0600")).id).status == "running"
    await post(c, "/hub/admin/users/st0600/edit", 403, new_name="mine")
    await post(c, "/hub/admin/users/bulk", 403, action="reset-passwords", user="boss")
    await post(c, "/hub/admin/shutdown", 403, confirm="shutdown")
    await post(c, "/hub/admin/passwords.csv", 200, csv="a,b")  # echoes only what it is sent


async def test_reset_passwords_shows_them_once_and_keeps_only_hashes(
    hub: Any, caplog: pytest.LogCaptureFixture
) -> None:
    c, _, _ = hub
    await login(c, "boss", PASSWORD)
    caplog.set_level(logging.DEBUG)
    r = await c.post(
        "/hub/admin/users/bulk",
        data={"_xsrf": xsrf_of(c), "action": "reset-passwords", "target": "filter", "q": "st000"},
    )
    page = await r.text()
    assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
    made = dict(
        re.findall(
            r'<tr data-user="(st000\d)"><td>[^<]*</td><td><code class="password">([^<]+)<', page
        )
    )
    assert sorted(made) == [f"st000{i}" for i in range(10)]
    assert len(set(made.values())) == 10 and all(len(pw) == 12 for pw in made.values())
    p = c.server.app[PARTS]
    stored = await p.store.get_user("st0001")
    assert stored.password_hash and bcrypt.checkpw(
        made["st0001"].encode(), stored.password_hash.encode()
    )
    assert made["st0001"] not in (stored.password_hash or "")
    csv_text = re.search(r'<textarea name="csv" hidden>(.*?)</textarea>', page, re.DOTALL).group(1)
    r = await c.post("/hub/admin/passwords.csv", data={"_xsrf": xsrf_of(c), "csv": csv_text})
    body = await r.text()
    assert r.headers["Content-Disposition"].startswith("attachment")
    assert r.headers["Cache-Control"] == "no-store"
    assert f"st0001,{made['st0001']}" in body.splitlines()
    assert made["st0001"] not in await admin(c)  # shown once: not on the next page
    assert not any(pw in rec.getMessage() for rec in caplog.records for pw in made.values())
    # the new password works, once the student uses it
    async with aiohttp.ClientSession() as other:  # a browser without boss's cookies
        r = await other.post(
            c.make_url("/hub/login"),
            data={"username": "st0001", "password": made["st0001"]},
            allow_redirects=False,
        )
        assert r.status == 302 and "login" not in r.headers["Location"]


async def test_shutdown_asks_for_the_word_and_a_hub_that_can_stop(hub: Any) -> None:
    c, _, _ = hub
    await login(c, "boss", PASSWORD)
    assert 'id="shutdown-hub"' in await admin(c)
    await post(c, "/hub/admin/shutdown", 400, confirm="yes")
    assert "cannot stop itself" in await post(c, "/hub/admin/shutdown", 409, confirm="shutdown")
    await c.post("/hub/admin/shutdown", data={"confirm": "shutdown"})  # no _xsrf: refused
    assert (await c.get("/hub/health")).status == 200


async def test_api_users_name_filter_and_sort(hub: Any) -> None:
    c, _, tok = hub
    h = {"Authorization": f"token {tok}", "Accept": "application/jupyterhub-pagination+json"}
    r = await c.get("/hub/api/users?name_filter=ST012&sort=-name&limit=3", headers=h)
    body = await r.json()
    assert [u["name"] for u in body["items"]] == ["st0129", "st0128", "st0127"]
    assert body["_pagination"]["total"] == 10
    assert "name_filter=ST012" in body["_pagination"]["next"]["url"]
    r = await c.get("/hub/api/users?sort=last_activity&limit=2&offset=1201", headers=h)
    assert [u["name"] for u in (await r.json())["items"]] == ["st0010", "st0000"]
    r = await c.get("/hub/api/users?sort=created", headers=h)
    assert r.status == 400


async def test_a_student_reaches_none_of_it(hub: Any) -> None:
    """zed (no admin-ui) is refused every admin route, with or without naming users, and
    cannot make the CSV echo answer him either."""
    c, _, _ = hub
    assert (await login(c, "zed", PASSWORD, next="/hub/home")).status == 302
    await admin(c, "", 403)
    for path, data in [
        ("/hub/admin/users/bulk", {"action": "stop", "target": "filter"}),
        ("/hub/admin/users/bulk", {"action": "reset-passwords", "user": "boss"}),
        ("/hub/admin/users/boss/edit", {"new_name": "zed2"}),
        ("/hub/admin/users/boss/delete", {"remove_account": "on"}),
        ("/hub/admin/passwords.csv", {"csv": "a,b"}),
        ("/hub/admin/shutdown", {"confirm": "shutdown"}),
    ]:
        await post(c, path, 403, **data)
    assert await c.server.app[PARTS].store.get_user("boss") is not None


def test_usage_of_a_process_tree_without_a_cgroup() -> None:
    """A server without a cgroup: the resident memory and CPU of its process tree, and its
    kernels (session leaders running ipykernel) counted."""
    import subprocess
    import sys

    from minihub.procfs import start_ticks
    from minihub.spawner.local import _tree, process_usage
    from minihub.spawner.process import Proc

    code = (
        "import subprocess, sys, time; x = b'x' * (60 << 20); "
        "k = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', "
        "'ipykernel'], start_new_session=True); print('up', flush=True); time.sleep(60)"
    )
    srv = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert srv.stdout is not None and srv.stdout.readline() == b"up\n"
        u = process_usage(Proc(srv.pid, start_ticks(srv.pid) or 0, "127.0.0.1", 0, {}))
        assert u is not None and u.memory > 60 << 20 and u.memory_limit is None
        assert u.kernels == 1 and u.cpu_seconds >= 0
    finally:
        for pid in _tree(srv.pid, start_ticks(srv.pid) or 0)[1:]:  # the "kernel" too
            os.kill(pid, signal.SIGKILL)
        srv.kill()
        srv.wait()
        srv.stdout.close()
    assert process_usage(Proc(srv.pid, 1, "127.0.0.1", 0, {})) is None  # gone: nothing
