"""The admin page's users table in real Chromium, on a hub process with 1,000 users (rows
made in its SQLite file) and real system users for real servers: paging, the filter kept in
the URL through a reload, sorting, a bulk stop of a filtered set, edit (rename), delete
with and without removing the Unix account, a kernel's memory growing in the table, and
shutting the hub down from the page."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import pwd
import socket
import stat
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from conftest import SystemUser
from helpers import execute, fill_login, hub_process
from test_browser_notebook import ARTIFACTS, account, chromium, needs_browser

from minihub.store import Store
from minihub.users import new_token

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]
MANY = 1000


class Hub:
    def __init__(self, url: str, data: Path, admin: SystemUser, users: dict[str, SystemUser]):
        self.url, self.data, self.admin, self.users = url, data, admin, users
        self.tokens: dict[str, str] = {}


async def _seed(data: Path, lab: list[str], token_for: str, more: list[str]) -> str:
    """1,000 users as rows (no accounts), the real users, the lab group, and a token for
    one of them."""
    store = await Store.open(data / "minihub.sqlite")
    now = time.time()
    await store.db.executemany(
        "INSERT INTO users (name, created, last_activity) VALUES (?, ?, ?)",
        [(f"u{i:04d}", now, now - i) for i in range(MANY)],
    )
    for name in [*lab, token_for, *more]:
        await store.add_user(name)
    await store.db.execute("INSERT INTO groups (name) VALUES ('lab')")
    for name in lab:
        await store.db.execute(
            "INSERT INTO group_users SELECT g.id, u.id FROM groups g, users u "
            "WHERE g.name = 'lab' AND u.name = ?",
            (name,),
        )
    user = await store.get_user(token_for)
    secret = (await new_token(store, user, "kernel test"))[0]
    await store.close()
    return secret


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, make_system_user: Any) -> Iterator[Hub]:
    needs_browser()
    tmp = tmp_path_factory.mktemp("admin-browser")
    data = tmp / "data"
    data.mkdir(mode=0o711)
    admin = make_system_user(account("mhad_a"))
    users = {k: make_system_user(account(f"mhad_{k}")) for k in ("s1", "s2", "s3", "d1")}
    lab = [users["s1"].name, users["s2"].name]
    token = asyncio.run(_seed(data, lab, users["s3"].name, [users["d1"].name]))
    toml = tmp / "minihub.toml"
    toml.write_text(
        f'[hub]\ncleanup_servers = true\n[auth]\nadmin_users = ["{admin.name}"]\n'
        "[spawner]\nactive_server_limit = 40\n"
    )
    with hub_process(toml, data, tmp / "hub.log") as url:
        h = Hub(url, data, admin, users)
        h.tokens[users["s3"].name] = token
        yield h


@pytest.fixture(scope="module")
def browser(hub: Hub) -> Iterator[Any]:
    """One Chromium for the module; each test gets a context of its own (no shared cookies)."""
    with chromium() as b:
        yield b


@pytest.fixture
def page(hub: Hub, browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    try:
        pg = context.new_page()
        pg.on("dialog", lambda d: d.accept())
        pg.goto(hub.url + "/hub/login?next=%2Fhub%2Fadmin")
        fill_login(pg, hub.admin)
        pg.wait_for_url("**/hub/admin")
        yield pg
    finally:
        context.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"admin-{name}.png"), full_page=True)


def names(page: Any) -> list[str]:
    return [
        str(n)
        for n in page.locator("#users tbody tr[data-user]").evaluate_all(
            "rows => rows.map(r => r.dataset.user)"
        )
    ]


def query(page: Any) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


def test_paging_filter_and_sorting_stay_in_the_url(hub: Hub, page: Any) -> None:
    from playwright.sync_api import expect

    first = names(page)
    assert len(first) == 50 and first == sorted(first)
    expect(page.locator("#page-info")).to_contain_text(f"{MANY + 5} user(s)")
    page.click("#next-page")
    page.wait_for_url("**/hub/admin?page=2")
    assert names(page)[0] > first[-1] and len(names(page)) == 50

    page.fill("#user-filter input[name=q]", "U012")
    page.click("#apply-filter")
    page.wait_for_url("**q=U012**")
    assert names(page) == [f"u012{i}" for i in range(10)]
    page.reload()
    assert names(page) == [f"u012{i}" for i in range(10)]
    expect(page.locator("#user-filter input[name=q]")).to_have_value("U012")

    page.click("#users a.sort[data-sort=name]")  # sorted by name already: the other way
    page.wait_for_url("**sort=-name**")
    assert names(page)[0] == "u0129" and query(page)["q"] == ["U012"]
    page.click("#users a.sort[data-sort=last_activity]")
    page.wait_for_url("**sort=last_activity**")
    assert names(page)[0] == "u0129"  # least recently active first, going up
    page.select_option("#user-filter select[name=group]", "lab")
    page.fill("#user-filter input[name=q]", "")
    page.click("#apply-filter")
    assert sorted(names(page)) == sorted([hub.users["s1"].name, hub.users["s2"].name])
    page.goto(hub.url + "/hub/admin?per_page=200&page=3")
    assert len(names(page)) == 200
    shot(page, "paged")


def wait_rows(page: Any, url: str, want: dict[str, str], timeout: float = 60) -> None:
    """Reload `url` until each user's default server has the status wanted (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        page.goto(url)
        seen = {
            n: page.locator(f"#users tr[data-user='{n}'] .srv.default").get_attribute("data-status")
            for n in want
        }
        if seen == want:
            return
        assert time.monotonic() < deadline, seen
        page.wait_for_timeout(300)


def test_bulk_stop_of_a_filtered_set_and_a_kernels_memory(hub: Hub, page: Any) -> None:
    s1, s2, s3 = (hub.users[k].name for k in ("s1", "s2", "s3"))
    # start all of group lab from its filter, and s3 from its own row
    page.goto(hub.url + "/hub/admin?group=lab")
    page.click("button.start-all")
    page.locator("#admin-message").wait_for()
    page.goto(hub.url + f"/hub/admin?q={s3}")
    page.locator(f"tr[data-user='{s3}'] td.actions button.start").click()
    every = f"{hub.url}/hub/admin?q=mhad_s"
    wait_rows(page, every, {s1: "running", s2: "running", s3: "running"})
    shot(page, "running")

    # stop everyone the filter "lab, running" shows: s3 keeps running
    page.goto(hub.url + "/hub/admin?group=lab&state=running")
    assert sorted(names(page)) == sorted([s1, s2])
    page.select_option("#bulk select[name=target]", "filter")
    page.select_option("#bulk-action", "stop")
    page.click("#bulk-apply")
    page.locator("#admin-message").wait_for()
    assert "Stopped 2" in page.locator("#admin-message").inner_text()
    wait_rows(page, every, {s1: "stopped", s2: "stopped", s3: "running"})

    # a kernel allocating 200 MB shows in s3's memory on reload
    before = usage(page, hub, s3)
    kernel = off_loop(start_kernel(hub, s3))
    after_start = usage(page, hub, s3)
    assert after_start["kernels"] == "1"
    out = off_loop(run(hub, s3, kernel, "x = b'x' * (200 << 20); print(len(x))"))
    assert out.strip() == str(200 << 20)
    grown = usage(page, hub, s3)
    assert int(grown["memory"]) - int(after_start["memory"]) > 150 << 20, (before, grown)
    assert float(grown["cpu"]) > 0
    line = page.locator("#hub-line")
    assert int(line.get_attribute("data-memory") or 0) > 0
    assert page.locator("#hub-running").inner_text() == "1"
    shot(page, "memory")


def off_loop(coro: Any) -> Any:
    """Run a coroutine to its end in a thread of its own (Playwright's sync API keeps an
    event loop running in this one)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout=180)


def usage(page: Any, hub: Hub, name: str) -> dict[str, str]:
    page.goto(f"{hub.url}/hub/admin?q={name}")
    u = page.locator(f"#users tr[data-user='{name}'] .srv.default .usage")
    return {k: str(u.get_attribute(f"data-{k}")) for k in ("memory", "cpu", "kernels")}


async def start_kernel(hub: Hub, name: str) -> str:
    h = {"Authorization": f"token {hub.tokens[name]}"}
    async with aiohttp.ClientSession(headers=h) as s:
        async with s.post(f"{hub.url}/user/{name}/api/kernels", json={"name": "python3"}) as r:
            assert r.status == 201, await r.text()
            kid = str((await r.json())["id"])
        # ready once it answers: the first execute waits for the kernel to start
        await execute(
            s, f"{hub.url.replace('http', 'ws')}/user/{name}/api/kernels/{kid}/channels", "1"
        )
    return kid


async def run(hub: Hub, name: str, kid: str, code: str) -> str:
    h = {"Authorization": f"token {hub.tokens[name]}"}
    url = f"{hub.url.replace('http', 'ws')}/user/{name}/api/kernels/{kid}/channels"
    async with aiohttp.ClientSession(headers=h) as s:
        return await execute(s, url, code, timeout=120)


def test_edit_and_delete_with_and_without_the_unix_account(hub: Hub, page: Any) -> None:
    from playwright.sync_api import expect

    page.goto(hub.url + "/hub/admin?q=u0007")
    row = page.locator("tr[data-user='u0007']")
    row.locator("details.edit summary").click()
    row.locator("input[name=new_name]").fill("renamed7")
    row.locator("details.edit input[name=admin]").check()
    row.locator("details.edit button").click()
    page.wait_for_url("**/hub/admin?q=u0007")
    assert names(page) == []
    page.goto(hub.url + "/hub/admin?admin=1")
    assert "renamed7" in names(page)

    page.goto(hub.url + "/hub/admin?q=u0008")
    row = page.locator("tr[data-user='u0008']")
    row.locator("details.delete summary").click()
    row.locator("details.delete button").click()
    page.wait_for_url("**/hub/admin?q=u0008")
    assert names(page) == []

    d1 = hub.users["d1"]
    note = Path(d1.home) / "work.ipynb"
    note.write_text("{}")
    os.chown(note, d1.uid, d1.gid)
    page.goto(hub.url + f"/hub/admin?q={d1.name}")
    row = page.locator(f"tr[data-user='{d1.name}']")
    row.locator("details.delete summary").click()
    row.locator("details.delete input[name=remove_account]").check()
    row.locator("details.delete button").click()
    expect(page.locator("#admin-message")).to_contain_text("removed the Unix account")
    shot(page, "deleted-account")
    with pytest.raises(KeyError):
        pwd.getpwnam(d1.name)
    assert not os.path.exists(d1.home)
    archives = list((hub.data / "archives").glob(f"{d1.name}-*.tar.gz"))
    assert len(archives) == 1
    st = archives[0].stat()
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE((hub.data / "archives").stat().st_mode) == 0o700
    with tarfile.open(archives[0]) as tar:
        assert "./work.ipynb" in tar.getnames()
    page.goto(hub.url + f"/hub/admin?q={d1.name}")
    assert names(page) == []

    # the admin's own account and root are never removed
    page.goto(hub.url + f"/hub/admin?q={hub.admin.name}")
    expect(page.locator(f"tr[data-user='{hub.admin.name}'] details.delete")).to_have_count(0)


def test_shutdown_from_the_page_stops_the_hub(hub: Hub, page: Any) -> None:
    """Last in this module: the hub process exits."""
    page.fill("#shutdown input[name=confirm]", "shutdown")
    page.click("#shutdown-hub")
    page.get_by_text("The hub is shutting down").wait_for()
    port = int(urlsplit(hub.url).port or 0)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            break
        assert time.monotonic() < deadline, "the hub still listens"
        time.sleep(0.1)
