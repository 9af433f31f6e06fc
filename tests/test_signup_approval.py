"""Native sign-up with approval, as NativeAuthenticator's: a sign-up is a request that cannot
log in; an admin (admin:users) approves it on the admin page (a user with its own password,
and on a root hub a Unix account made then) or refuses it; the Admin link counts requests
for those who may approve. Through real HTTP to a real hub, as root with real useradd."""

from __future__ import annotations

import asyncio
import pwd
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import helpers
import pytest
from conftest import hub_config
from conftest import login as login_form

from minihub.app import make_app
from minihub.auth import signups
from minihub.auth.native import NativeAuthenticator
from minihub.context import PARTS
from minihub.store import Store
from minihub.users import create

PREFIX = "mhsa_"
NAMES = [f"{PREFIX}{n}" for n in ("ann", "bob", "cy", "dee", "eve", "fay")]


async def login(c: Any, name: str, password: str) -> Any:
    """The login form, landing on the home page: no server is started (nor, on this root
    hub, a Unix account made for it)."""
    return await login_form(c, name, password, next="/hub/home")


def userdel(name: str) -> None:
    subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
    subprocess.run(["userdel", "-r", "-f", name], capture_output=True)


def account(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture
def clean() -> Iterator[None]:
    for n in NAMES:
        userdel(n)
    yield
    for n in NAMES:
        userdel(n)


def hub_cfg(data_dir: str) -> Any:
    cfg = hub_config(
        data_dir,
        auth__authenticator="native",
        auth__open_signup=True,
        auth__signup_approval=True,
        auth__signup_ask_email=True,
        users__create_system_users=True,
    )
    cfg.roles = [{"name": "helper", "scopes": ["admin-ui", "read:users"], "users": ["ta"]}]
    return cfg


async def seed(cfg: Any) -> None:
    store = await Store.open(cfg.data_dir / "minihub.sqlite")
    auth = NativeAuthenticator(cfg, store)
    await create(store, auth, "boss", True, "boss-password")
    await create(store, auth, "ta", False, "ta-password")
    await create(store, auth, "joe", False, "joe-password")
    await store.close()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seeded store (three bcrypt hashes), made once; each test's hub starts on a copy."""
    return helpers.seed_once(tmp_path_factory, hub_cfg, seed)[0]


@pytest.fixture
async def hub(aiohttp_client: Any, data_dir: str, clean: None, seeded: Path) -> AsyncIterator[Any]:
    cfg = hub_cfg(data_dir)
    shutil.copyfile(seeded, cfg.data_dir / "minihub.sqlite")
    yield await aiohttp_client(make_app(cfg))


async def sign_up(c: Any, name: str, email: str = "x@example.org", pw: str = "new-password-1"):
    data = {"username": name, "password": pw, "password2": pw, "email": email}
    return await c.post("/hub/signup", data=data, allow_redirects=False)


async def as_user(c: Any, name: str, password: str) -> aiohttp.ClientSession:
    s = aiohttp.ClientSession(str(c.make_url("/")), cookie_jar=aiohttp.CookieJar(unsafe=True))
    r = await login(s, name, password)
    assert r.status == 302, await r.text()
    return s


async def post(s: Any, path: str, **data: str) -> tuple[int, str]:
    data.setdefault("_xsrf", next((str(k.value) for k in s.cookie_jar if k.key == "_xsrf"), ""))
    async with s.post(path, data=data, allow_redirects=False) as r:
        return r.status, await r.text()


async def test_a_request_waits_for_an_admin_who_approves_or_refuses(hub):
    c = hub
    r = await c.get("/hub/signup")
    assert r.status == 200 and 'name="email"' in await r.text()
    r = await sign_up(c, NAMES[0], "ann@example.org")
    assert r.status == 200 and "awaits approval" in await r.text()
    assert not account(NAMES[0])  # nothing is made before an admin says so
    assert (await sign_up(c, NAMES[0])).status == 409  # one request a name
    assert (await sign_up(c, NAMES[1], "no-at-sign")).status == 400  # the email is asked for
    assert (await sign_up(c, NAMES[1], "bob@example.org")).status == 200

    # a pending name cannot log in; only its own password learns that it is pending
    r = await login(c, NAMES[0], "new-password-1")
    assert r.status == 403 and "awaits approval" in await r.text()
    r = await login(c, NAMES[0], "wrong-password")
    assert r.status == 403 and "awaits approval" not in (text := await r.text())
    assert "Invalid username or password" in text

    boss = await as_user(c, "boss", "boss-password")
    try:
        async with boss.get("/hub/home") as r:  # the count on every page's Admin link
            assert 'id="pending-signups"' in (text := await r.text()) and ">2</span>" in text
        async with boss.get("/hub/admin") as r:
            text = await r.text()
        assert f'data-signup="{NAMES[0]}"' in text and "ann@example.org" in text
        status, text = await post(boss, f"/hub/admin/signups/{NAMES[0]}/approve")
        assert status == 200 and "Approved" in text, text
        assert account(NAMES[0])  # made at approval, by useradd
        status, text = await post(boss, f"/hub/admin/signups/{NAMES[1]}/refuse")
        assert status == 200 and "Refused" in text
        assert f'data-signup="{NAMES[1]}"' not in text and 'id="pending-signups"' not in text
        status, _ = await post(boss, f"/hub/admin/signups/{NAMES[1]}/approve")
        assert status == 404  # gone
    finally:
        await boss.close()
    assert (await login(c, NAMES[0], "new-password-1")).status == 302  # its own password
    assert (await login(c, NAMES[1], "new-password-1")).status == 403
    assert not account(NAMES[1])


async def test_only_admin_users_approve_and_never_without_xsrf(hub):
    c = hub
    assert (await sign_up(c, NAMES[2])).status == 200
    joe = await as_user(c, "joe", "joe-password")
    ta = await as_user(c, "ta", "ta-password")  # admin-ui without admin:users
    boss = await as_user(c, "boss", "boss-password")
    try:
        for s in (joe, ta):
            for action in ("approve", "refuse"):
                status, text = await post(s, f"/hub/admin/signups/{NAMES[2]}/{action}")
                assert status == 403, (action, text)
        async with ta.get("/hub/admin") as r:
            text = await r.text()
        assert r.status == 200 and NAMES[2] not in text and "pending-signups" not in text
        # a forged form (another site's page) carries no _xsrf: refused, even for the admin
        status, _ = await post(boss, f"/hub/admin/signups/{NAMES[2]}/approve", _xsrf="")
        assert status == 403
        async with boss.post(f"/hub/admin/signups/{NAMES[2]}/approve") as r:
            assert r.status == 403
        assert not account(NAMES[2])
        status, _ = await post(boss, f"/hub/admin/signups/{NAMES[2]}/approve")
        assert status == 200 and account(NAMES[2])
    finally:
        for s in (joe, ta, boss):
            await s.close()


async def test_approval_refuses_a_name_taken_meanwhile(hub, make_system_user):
    """A Unix account made between the request and the approval is someone else's."""
    c = hub
    assert (await sign_up(c, NAMES[3])).status == 200
    make_system_user(NAMES[3])
    boss = await as_user(c, "boss", "boss-password")
    try:
        status, text = await post(boss, f"/hub/admin/signups/{NAMES[3]}/approve")
        assert status == 409 and "refuse the request" in text
    finally:
        await boss.close()
    assert (await login(c, NAMES[3], "new-password-1")).status == 403


def test_the_cli_lists_approves_and_refuses(data_dir, tmp_path, clean, capsys):
    """`minihub user requests | approve NAME | refuse NAME`, against the hub's SQLite."""
    from minihub.auth.native import hash_password
    from minihub.auth.signups import Signups
    from minihub.cli import main

    async def ask() -> None:
        store = await Store.open(Path(data_dir) / "minihub.sqlite")
        for name in NAMES[4:]:
            await Signups(store).add(name, hash_password("new-password-1"), f"{name}@example.org")
        await store.close()

    asyncio.run(ask())
    toml = tmp_path / "minihub.toml"
    toml.write_text('[auth]\nauthenticator = "native"\n')
    base = ["-f", str(toml), "--data-dir", data_dir, "user"]
    assert main([*base, "requests"]) == 0
    out = capsys.readouterr().out
    assert f"{NAMES[4]}@example.org" in out and NAMES[5] in out
    assert main([*base, "approve", NAMES[4]]) == 0 and account(NAMES[4])
    assert main([*base, "refuse", NAMES[5]]) == 0
    assert main([*base, "refuse", NAMES[5]]) == 1  # gone
    capsys.readouterr()
    assert main([*base, "requests"]) == 0
    assert capsys.readouterr().out == ""


async def test_requests_stop_at_max_pending(hub, monkeypatch):
    """Throttling is per address: a flood from many addresses meets this cap instead."""
    monkeypatch.setattr(signups, "MAX_PENDING", 1)
    c = hub
    assert (await sign_up(c, NAMES[0])).status == 200
    r = await sign_up(c, NAMES[1])
    assert r.status == 429 and "try again later" in await r.text()
    assert r.headers["Retry-After"] == "3600"
    assert await c.server.app[PARTS].authenticator.signups.get(NAMES[1]) is None
