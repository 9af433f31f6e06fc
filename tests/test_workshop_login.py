"""The workshop login ([auth] authenticator = "shared-password", as JupyterHub 5.3's
SharedPasswordAuthenticator): any new name with the user password, admins by the admin
password, an expiry, a limit on new names, the hub's throttle, and on a root hub only Unix
accounts the login made itself. Through real HTTP to a real hub, as root with real useradd."""

from __future__ import annotations

import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import hub_config
from conftest import login as login_form

from minihub.app import make_app
from minihub.auth.shared import SharedPasswordAuthenticator
from minihub.context import PARTS
from minihub.errors import StartupError
from minihub.store import Store

USER_PW = "workshop-2026"
ADMIN_PW = "a" * 16 + "-admin-password-long"
NAMES = [f"mhws_{n}" for n in ("ann", "bob", "cy", "dee", "boss")]


async def login(c: Any, name: str, password: str) -> Any:
    """The login form, landing on the home page: no server is started (nor, on this root
    hub, a Unix account made for it)."""
    return await login_form(c, name, password, next="/hub/home")


def userdel(name: str) -> None:
    subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
    subprocess.run(["userdel", "-r", "-f", name], capture_output=True)


def uid(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


@pytest.fixture
def clean() -> Iterator[None]:
    for n in NAMES:
        userdel(n)
    yield
    for n in NAMES:
        userdel(n)


def workshop(data_dir: str, **settings: Any) -> Any:
    values: dict[str, Any] = {
        "auth__authenticator": "shared-password",
        "auth__admin_users": ["mhws_boss"],
        "auth.shared_password.user_password": USER_PW,
        "auth.shared_password.admin_password": ADMIN_PW,
        "users__create_system_users": True,
    }
    values.update(settings)
    return hub_config(data_dir, **values)


async def admin_of(c: Any, name: str) -> bool:
    return bool(c.server.app[PARTS].access.is_admin(name))


async def test_any_new_name_with_the_password_admins_by_theirs(aiohttp_client, data_dir, clean):
    c = await aiohttp_client(make_app(workshop(data_dir, **{"auth.shared_password.max_users": 2})))
    r = await c.get("/hub/login")
    assert 'id="login-notice">Choose a name and sign in' in await r.text()
    r = await login(c, " MHWS_Ann ", USER_PW)  # normalised, as every name
    assert r.status == 302, await r.text()
    assert uid("mhws_ann") is not None  # a new Unix account, made by the login
    assert not await admin_of(c, "mhws_ann")
    assert (await login(c, "mhws_bob", "workshop-2025")).status == 403  # wrong password
    assert (await login(c, "mhws_bob", ADMIN_PW)).status == 403  # not an admin_users name
    assert (await login(c, "mhws_boss", USER_PW)).status == 403  # an admin needs theirs
    assert (await login(c, "mhws_boss", ADMIN_PW)).status == 302
    assert await admin_of(c, "mhws_boss")
    assert (await login(c, "bad/name", USER_PW)).status == 403

    # max_users = 2 new names: the third is refused, the ones made still sign in
    assert (await login(c, "mhws_bob", USER_PW)).status == 302
    r = await login(c, "mhws_cy", USER_PW)
    assert r.status == 403 and "workshop is full" in await r.text()
    assert uid("mhws_cy") is None
    assert (await login(c, "mhws_ann", USER_PW)).status == 302


async def test_an_account_the_login_did_not_make_is_refused(
    aiohttp_client, data_dir, clean, make_system_user
):
    """The attack: the user password must not open a Unix account someone else owns."""
    victim = make_system_user("mhws_dee")
    Path(victim.home, "notes.txt").write_text("private")
    c = await aiohttp_client(make_app(workshop(data_dir)))
    for name in (victim.name, "root", "daemon"):
        r = await login(c, name, USER_PW)
        assert r.status == 403 and "is taken" in await r.text(), name
    store = c.server.app[PARTS].store
    assert await store.get_user(victim.name) is None


def uid_taken(n: int) -> bool:
    try:
        pwd.getpwuid(n)
        return True
    except KeyError:
        return False


async def test_a_made_name_whose_account_changed_hands_is_refused(aiohttp_client, data_dir, clean):
    """The login made mhws_ann's account; the operator removed it, and the name is someone
    else's account now: the user password must not open it."""
    c = await aiohttp_client(make_app(workshop(data_dir)))
    assert (await login(c, "mhws_ann", USER_PW)).status == 302
    first = uid("mhws_ann")
    userdel("mhws_ann")
    # another uid than before, chosen here: useradd's own pick may give the freed one back
    # (the highest in use plus one, when other test processes remove accounts meanwhile)
    other = next(n for n in range(first + 1000 if first else 4000, 60000) if not uid_taken(n))
    subprocess.run(["useradd", "-m", "-u", str(other), "mhws_ann"], check=True)
    assert uid("mhws_ann") not in (None, first)
    r = await login(c, "mhws_ann", USER_PW)
    assert r.status == 403 and "is taken" in await r.text()
    assert (await login(c, "mhws_ann", USER_PW)).status == 403  # and it stays refused


async def test_a_hub_user_from_before_is_not_the_workshops(aiohttp_client, data_dir, clean):
    cfg = workshop(data_dir)
    store = await Store.open(cfg.data_dir / "minihub.sqlite")
    await store.add_user("mhws_cy")  # e.g. from when the hub used PAM
    await store.close()
    c = await aiohttp_client(make_app(cfg))
    r = await login(c, "mhws_cy", USER_PW)
    assert r.status == 403 and "is taken" in await r.text()


async def test_the_user_password_stops_at_expiry(aiohttp_client, data_dir, clean):
    past = workshop(data_dir, **{"auth.shared_password.expires": "2020-01-01T09:00+00:00"})
    c = await aiohttp_client(make_app(past))
    r = await c.get("/hub/login")
    assert "login closed at 2020-01-01 09:00 UTC" in await r.text()
    r = await login(c, "mhws_ann", USER_PW)
    assert r.status == 403 and "closed" in await r.text()
    assert uid("mhws_ann") is None
    assert (await login(c, "mhws_boss", ADMIN_PW)).status == 302  # the admin still gets in


async def test_an_open_workshop_says_until_when(aiohttp_client, data_dir):
    later = workshop(data_dir, **{"auth.shared_password.expires": "2999-06-01T18:00+02:00"})
    c = await aiohttp_client(make_app(later))
    assert "(until 2999-06-01 18:00 UTC+02:00)" in await (await c.get("/hub/login")).text()


async def test_logins_stay_throttled(aiohttp_client, data_dir):
    c = await aiohttp_client(make_app(workshop(data_dir, auth__login_delay_after=2)))
    codes = [(await login(c, "mhws_ann", f"guess-{i:04d}")).status for i in range(4)]
    assert codes[:2] == [403, 403] and 429 in codes[2:], codes


@pytest.mark.parametrize(
    "settings, key",
    [
        ({"auth.shared_password.user_password": "short"}, "user_password: must be at least 8"),
        ({"auth.shared_password.admin_password": "x" * 31}, "admin_password: must be at least 32"),
        ({"auth.shared_password.expires": "next friday"}, "expires: 'next friday' is not"),
        ({"auth.shared_password.expires": "2026-12-24"}, "expires: give a time too"),
        ({"auth.shared_password.user_password": ""}, "user_password: set the workshop's"),
        ({"auth.shared_password.admin_password": USER_PW * 4}, "admin_password: must differ"),
        ({"users__create_system_users": False}, "needs [users] create_system_users = true"),
    ],
)
async def test_bad_settings_stop_start_up_naming_the_key(data_dir, settings, key):
    if settings.get("auth.shared_password.admin_password") == USER_PW * 4:
        settings["auth.shared_password.user_password"] = USER_PW * 4
    store = await Store.open(Path(data_dir) / "minihub.sqlite")
    try:
        with pytest.raises(StartupError) as e:
            SharedPasswordAuthenticator(workshop(data_dir, **settings), store)
    finally:
        await store.close()
    assert key in str(e.value)
    assert "[auth.shared_password]" in str(e.value) or "[users]" in str(e.value)
    assert USER_PW not in str(e.value) and "short" not in str(e.value)  # no password shown
