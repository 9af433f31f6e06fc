"""Announcements: [hub] announcement and its per-page variants, set and cleared by an admin
(admin:users) over HTTP without a restart, kept across one, shown escaped on the hub's pages
and served to the notebook app, whose banner in real Chromium follows a change unreloaded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import hub_config
from conftest import login as login_form

from minihub.app import make_app
from minihub.auth.native import NativeAuthenticator
from minihub.store import Store
from minihub.users import create


async def login(c: Any, name: str, password: str) -> Any:
    """The login form, landing on the home page: no server is started (nor, on this root
    hub, a Unix account made for it)."""
    return await login_form(c, name, password, next="/hub/home")


def config(data_dir: str) -> Any:
    cfg = hub_config(
        data_dir,
        auth__authenticator="native",
        hub__announcement="From the config",
        hub__announcement_login="Welcome, sign in",
    )
    cfg.roles = [{"name": "helper", "scopes": ["admin-ui", "read:users"], "users": ["ta"]}]
    return cfg


async def seed(cfg: Any) -> None:
    store = await Store.open(cfg.data_dir / "minihub.sqlite")
    auth = NativeAuthenticator(cfg, store)
    for name, admin in (("boss", True), ("joe", False), ("ta", False)):
        await create(store, auth, name, admin, f"{name}-password")
    await store.close()


async def as_user(c: Any, name: str) -> aiohttp.ClientSession:
    s = aiohttp.ClientSession(str(c.make_url("/")), cookie_jar=aiohttp.CookieJar(unsafe=True))
    assert (await login(s, name, f"{name}-password")).status == 302
    return s


async def announce(s: aiohttp.ClientSession, xsrf: bool = True, **fields: str) -> tuple[int, str]:
    token = next((str(k.value) for k in s.cookie_jar if k.key == "_xsrf"), "")
    data = {"_xsrf": token if xsrf else "", **fields}
    async with s.post("/hub/admin/announcement", data=data) as r:
        return r.status, await r.text()


async def text_of(s: Any, path: str) -> str:
    async with s.get(path) as r:
        assert r.status == 200
        return await r.text()


async def test_an_admin_sets_and_clears_it_without_a_restart(aiohttp_client, data_dir):
    cfg = config(data_dir)
    await seed(cfg)
    c = await aiohttp_client(make_app(cfg))
    page = await text_of(c, "/hub/login")  # the login page's own text replaces the general
    assert "Welcome, sign in" in page and "From the config" not in page
    r = await c.get("/hub/api/announcement")  # no login needed, cached briefly
    assert (await r.json())["announcement"] == "From the config"
    assert "max-age=5" in r.headers["Cache-Control"]

    boss, joe = await as_user(c, "boss"), await as_user(c, "joe")
    try:
        assert "From the config" in await text_of(joe, "/hub/token")
        status, page = await announce(
            boss,
            all="Exam <b>Friday</b>\nsee https://example.org/exam.",
            home="Home only",
            login="",
        )
        assert status == 200 and "Announcement saved" in page
        home, token = await text_of(joe, "/hub/home"), await text_of(joe, "/hub/token")
        assert "Home only" in home and "Exam" not in home
        # plain text: escaped, its link a link, its line break kept; never markup
        assert "Exam &lt;b&gt;Friday&lt;/b&gt;<br>see " in token and "<b>Friday" not in token
        assert '<a href="https://example.org/exam" rel="noopener noreferrer">' in token
        assert "Exam &lt;b&gt;" in await text_of(c, "/hub/login")  # "" cleared its own
        r = await c.get("/hub/api/announcement")
        assert (await r.json())["announcement"].startswith("Exam <b>Friday</b>\n")
    finally:
        await joe.close()
        await boss.close()
    await c.close()

    c = await aiohttp_client(make_app(cfg))  # kept across a restart (SQLite)
    assert "Exam &lt;b&gt;" in await text_of(c, "/hub/login")
    boss = await as_user(c, "boss")
    try:
        status, page = await announce(boss, all="", home="", login="", spawn="", logout="")
        assert status == 200 and "Announcements cleared" in page
        assert 'id="announcement"' not in await text_of(boss, "/hub/home")
        assert (await (await c.get("/hub/api/announcement")).json())["announcement"] == ""
        status, page = await announce(boss, action="reset")
        assert status == 200 and "From the config" in page
        assert "Welcome, sign in" in await text_of(c, "/hub/login")
    finally:
        await boss.close()


async def test_only_admin_users_may_announce(aiohttp_client, data_dir):
    cfg = config(data_dir)
    await seed(cfg)
    c = await aiohttp_client(make_app(cfg))
    joe, ta, boss = await as_user(c, "joe"), await as_user(c, "ta"), await as_user(c, "boss")
    try:
        for s in (joe, ta):  # a user; a helper with admin-ui but not admin:users
            assert (await announce(s, all="Free pizza"))[0] == 403
        assert 'id="announcement-form"' not in await text_of(ta, "/hub/admin")
        assert (await announce(boss, xsrf=False, all="Free pizza"))[0] == 403  # forged form
        status, page = await announce(boss, all="x" * 2001)
        assert status == 400 and "at most 2000 characters" in page
        assert "Free pizza" not in await text_of(c, "/hub/login")
    finally:
        for s in (joe, ta, boss):
            await s.close()


# --- the notebook app's banner in real Chromium ------------------------------------------------
@pytest.fixture
def hub(data_dir: str, tmp_path: Path, make_system_user: Any) -> Iterator[Any]:
    from helpers import Hub, hub_process
    from test_browser_notebook import account, needs_browser

    needs_browser()
    user = make_system_user(account("mhan_adm"))
    toml = tmp_path / "minihub.toml"
    toml.write_text(
        '[hub]\ncleanup_servers = true\nannouncement = "Welcome to the class"\n'
        f'announcement_poll_seconds = 1\n[auth]\nadmin_users = ["{user.name}"]\n'
    )
    with hub_process(toml, data_dir, tmp_path / "hub.log") as url:
        yield Hub(url, user)


@pytest.mark.browser
@pytest.mark.timeout(300)
def test_the_notebook_app_shows_the_banner_and_follows_a_change(hub: Any) -> None:
    from helpers import log_in
    from playwright.sync_api import expect, sync_playwright
    from test_browser_notebook import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            tree = context.new_page()
            log_in(tree, hub.url, hub.user)
            banner = tree.locator("#announcement")
            expect(banner).to_contain_text("Welcome to the class")

            admin = context.new_page()  # the same login, another tab
            admin.goto(hub.url + "/hub/admin")
            admin.fill(
                "#announcement-form textarea[name=all]",
                "Break until 11:00, https://example.org/plan",
            )
            admin.click("#save-announcement")
            expect(admin.locator("#admin-message")).to_contain_text("Announcement saved")
            expect(admin.locator("#announcement")).to_contain_text("Break until 11:00")

            # the open file browser, never reloaded, follows within its poll
            expect(banner).to_contain_text("Break until 11:00", timeout=15000)
            link = banner.locator("a")
            expect(link).to_have_attribute("href", "https://example.org/plan")
            ARTIFACTS.mkdir(exist_ok=True)
            tree.screenshot(path=str(ARTIFACTS / "announcement-tree.png"))
            admin.screenshot(path=str(ARTIFACTS / "announcement-admin.png"), full_page=True)
            admin.fill("#announcement-form textarea[name=all]", "")
            admin.click("#save-announcement")
            expect(banner).to_be_hidden(timeout=15000)
        finally:
            browser.close()
