"""Login, sessions, cookies, CSRF, throttling and redirects, through real HTTP to a real hub."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient
from conftest import hub_config, login, needs_root, xsrf_of

from minihub.app import make_app
from minihub.auth.identity import SESSION_COOKIE
from minihub.auth.native import NativeAuthenticator
from minihub.store import Store
from minihub.users import create


async def native_hub(
    aiohttp_client: Any, data_dir: str, users: dict[str, str] | None = None, **settings: Any
) -> TestClient:
    cfg = hub_config(data_dir, auth__authenticator="native", **settings)
    store = await Store.open(cfg.data_dir / "minihub.sqlite")
    auth = NativeAuthenticator(hub_config(data_dir, auth__authenticator="native"), store)
    for name, pw in (users or {}).items():
        await create(store, auth, name, name.startswith("admin"), pw)
    await store.close()
    return await aiohttp_client(make_app(cfg))


async def test_native_login_sets_safe_cookies_and_logout_revokes(aiohttp_client, data_dir):
    c = await native_hub(aiohttp_client, data_dir, {"alice": "alice-password"})
    r = await login(c, "Alice", "alice-password", next="/hub/token")
    assert r.status == 302 and r.headers["Location"] == "/hub/token"
    cookie = r.cookies[SESSION_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/"
    assert not cookie["secure"]  # plain HTTP here; TLS tests check Secure
    sid = cookie.value
    r = await c.get("/hub/home")
    assert r.status == 200 and "alice" in await r.text()
    r = await c.post("/hub/logout", data={"_xsrf": xsrf_of(c)}, allow_redirects=False)
    assert r.status == 302
    # the old session id is dead server-side, even if a client kept it
    c.session.cookie_jar.update_cookies({SESSION_COOKIE: sid})
    r = await c.get("/hub/home", allow_redirects=False)
    assert r.status == 302 and "/hub/login" in r.headers["Location"]


async def test_behind_a_trusted_tls_proxy_the_cookies_are_secure(aiohttp_client, data_dir):
    """nginx terminating TLS in front of a plain-HTTP hub says so in X-Forwarded-Proto: the
    session and XSRF cookies must be Secure then (and only when a trusted proxy says so)."""
    users = {"alice": "alice-password"}
    https = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7"}
    c = await native_hub(aiohttp_client, data_dir, users, hub__trusted_proxies=["127.0.0.1"])
    r = await login(c, "alice", "alice-password", headers=https)
    assert r.status == 302
    assert r.cookies[SESSION_COOKIE]["secure"] and r.cookies["_xsrf"]["secure"]
    r = await login(c, "alice", "alice-password")  # nginx's plain-HTTP side, if it has one
    assert r.status == 302 and not r.cookies[SESSION_COOKIE]["secure"]
    await c.close()
    c = await native_hub(aiohttp_client, data_dir)  # no trusted proxy: the header is anyone's
    r = await login(c, "alice", "alice-password", headers=https)
    assert r.status == 302 and not r.cookies[SESSION_COOKIE]["secure"]


async def test_wrong_password_and_unknown_user_are_refused_alike(aiohttp_client, data_dir):
    c = await native_hub(aiohttp_client, data_dir, {"bob": "bob-password"})
    r1 = await login(c, "bob", "wrong-password")
    r2 = await login(c, "nobody", "whatever-pass")
    assert r1.status == r2.status == 403
    assert "Invalid username or password" in await r1.text()
    assert SESSION_COOKIE not in r1.cookies


async def test_throttle_backs_off_the_failing_address_not_the_name(aiohttp_client, data_dir):
    # Was: the name locked out against its right password (issue 12 item 5, the unsafe part).
    c = await native_hub(
        aiohttp_client,
        data_dir,
        {"carol": "carol-password"},
        auth__login_delay_after=2,
        hub__trusted_proxies=["127.0.0.1"],
    )
    attacker = {"X-Forwarded-For": "203.0.113.9"}
    for _ in range(3):
        assert (await login(c, "carol", "nope-nope", headers=attacker)).status == 403
    r = await login(c, "carol", "carol-password", headers=attacker)  # backing off: waits
    assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
    text = await r.text()
    assert "Too many failed logins" in text and "second" in text
    r = await login(c, "carol", "carol-password", headers={"X-Forwarded-For": "198.51.100.4"})
    assert r.status == 302


async def test_success_resets_name_failures(aiohttp_client, data_dir):
    c = await native_hub(
        aiohttp_client, data_dir, {"dan": "dan-password"}, auth__login_delay_after=1
    )
    assert (await login(c, "dan", "bad-pass-1")).status == 403
    assert (await login(c, "dan", "dan-password")).status == 302


async def test_blocked_and_unlisted_users(aiohttp_client, data_dir):
    c = await native_hub(
        aiohttp_client,
        data_dir,
        {"erin": "erin-password", "frank": "frank-password", "gina": "gina-password"},
        auth__allowed_users=["erin", "gina"],
        auth__blocked_users=["gina"],
    )
    assert (await login(c, "erin", "erin-password")).status == 302
    assert (await login(c, "frank", "frank-password")).status == 403
    assert (await login(c, "gina", "gina-password")).status == 403


@pytest.mark.parametrize(
    "evil",
    [
        "//evil.example",
        "///evil.example",
        "/\\evil.example",
        "https://evil.example",
        "https://127.0.0.1//evil.example",
        "https://127.0.0.1@evil.example",
        "/%0a/evil",
        "\t//evil.example",
        "javascript:alert(1)",
    ],
)
async def test_login_next_never_leaves_the_origin(aiohttp_client, data_dir, evil):
    c = await native_hub(aiohttp_client, data_dir, {"hana": "hana-password"})
    r = await c.post(
        "/hub/login",
        params={"next": evil},
        data={"username": "hana", "password": "hana-password"},
        allow_redirects=False,
    )
    loc = r.headers["Location"]
    assert loc.startswith("/") and not loc.startswith("//") and "\\" not in loc
    parts = urlsplit(loc)
    assert not parts.scheme and not parts.netloc
    assert not parts.path.startswith("//") and "evil.example" not in parts.path


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Sec-Fetch-Mode": "no-cors"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-origin"},
    ],
)
async def test_csrf_cookie_post_without_token_is_refused(aiohttp_client, data_dir, headers):
    c = await native_hub(aiohttp_client, data_dir, {"admin1": "admin-password"})
    await login(c, "admin1", "admin-password")
    r = await c.post(
        "/hub/admin/users",
        data={"usernames": "victim", "password": "x" * 10},
        headers=headers,
        allow_redirects=False,
    )
    assert r.status == 403
    r = await c.post("/hub/api/users/victim", headers=headers)
    assert r.status == 403
    assert (await r.json())["status"] == 403
    r = await c.get("/hub/api/users/victim")
    assert r.status == 404  # nothing was created
    r = await c.post("/hub/api/users/victim2", headers={"X-XSRFToken": xsrf_of(c)})
    assert r.status == 201


async def test_token_auth_is_exempt_from_xsrf(aiohttp_client, data_dir):
    c = await native_hub(aiohttp_client, data_dir, {"admin2": "admin-password"})
    await login(c, "admin2", "admin-password")
    r = await c.post(
        "/hub/api/users/admin2/tokens", headers={"X-XSRFToken": xsrf_of(c)}, json={"note": "ci"}
    )
    token = (await r.json())["token"]
    c.session.cookie_jar.clear()
    r = await c.post("/hub/api/users/ivan", headers={"Authorization": f"token {token}"})
    assert r.status == 201


async def test_native_signup_off_by_default_and_password_change(aiohttp_client, data_dir):
    c = await native_hub(aiohttp_client, data_dir, {"jack": "jack-password"})
    assert (await c.get("/hub/signup")).status == 404
    await login(c, "jack", "jack-password")
    r = await c.post(
        "/hub/change-password",
        allow_redirects=False,
        data={
            "_xsrf": xsrf_of(c),
            "old": "jack-password",
            "new": "jack-new-pass",
            "new2": "jack-new-pass",
        },
    )
    assert r.status == 302
    c.session.cookie_jar.clear()
    assert (await login(c, "jack", "jack-password")).status == 403
    assert (await login(c, "jack", "jack-new-pass")).status == 302


async def test_open_signup(aiohttp_client, data_dir):
    # As root, sign-up needs create_system_users (it makes the account; issue 12 item 1).
    subprocess.run(["userdel", "-r", "-f", "mhau_kim"], capture_output=True)
    c = await native_hub(
        aiohttp_client, data_dir, auth__open_signup=True, users__create_system_users=True
    )
    r = await c.post(
        "/hub/signup",
        allow_redirects=False,
        data={"username": "Mhau_Kim", "password": "kim-password", "password2": "kim-password"},
    )
    subprocess.run(["userdel", "-r", "-f", "mhau_kim"], capture_output=True)
    assert r.status == 302
    assert (await login(c, "mhau_kim", "kim-password")).status == 302
    r = await c.post(
        "/hub/signup", data={"username": "../etc", "password": "p" * 10, "password2": "p" * 10}
    )
    assert r.status == 400


# --- PAM with real system users ------------------------------------------------------------
@needs_root
async def test_pam_login_locked_expired_and_groups(aiohttp_client, data_dir, make_system_user):
    subprocess.run(["groupadd", "-f", "mhau_staff"], check=True)
    ok = make_system_user("mhau_ok")
    staff = make_system_user("mhau_staff1", groups=["mhau_staff"])
    locked = make_system_user("mhau_locked")
    expired = make_system_user("mhau_expired")
    subprocess.run(["usermod", "-L", locked.name], check=True)
    subprocess.run(["usermod", "-e", "1", expired.name], check=True)
    cfg = hub_config(data_dir, auth__admin_groups=["mhau_staff"])
    c = await aiohttp_client(make_app(cfg))
    r = await login(c, ok.name, ok.password, next="/hub/home")
    assert r.status == 302
    r = await c.get("/hub/api/user")
    assert (await r.json())["name"] == ok.name and not (await r.json())["admin"]
    c.session.cookie_jar.clear()
    assert (await login(c, ok.name, "wrong-" + ok.password)).status == 403
    assert (await login(c, locked.name, locked.password)).status == 403
    assert (await login(c, expired.name, expired.password)).status == 403
    assert (await login(c, staff.name, staff.password, next="/hub/home")).status == 302
    assert (await (await c.get("/hub/api/user")).json())["admin"] is True
    # out of the admin group: no longer an admin at the next login
    subprocess.run(["gpasswd", "-d", staff.name, "mhau_staff"], check=True, capture_output=True)
    c.session.cookie_jar.clear()
    assert (await login(c, staff.name, staff.password, next="/hub/home")).status == 302
    assert (await (await c.get("/hub/api/user")).json())["admin"] is False


@needs_root
async def test_pam_allowed_groups(aiohttp_client, data_dir, make_system_user):
    subprocess.run(["groupadd", "-f", "mhau_class"], check=True)
    member = make_system_user("mhau_member", groups=["mhau_class"])
    outsider = make_system_user("mhau_outsider")
    c = await aiohttp_client(make_app(hub_config(data_dir, auth__allowed_groups=["mhau_class"])))
    assert (await login(c, member.name, member.password, next="/hub/home")).status == 302
    c.session.cookie_jar.clear()
    assert (await login(c, outsider.name, outsider.password)).status == 403


async def test_a_class_behind_one_address_logs_in_at_once(aiohttp_client, data_dir):
    """30 students behind one NAT press "Sign in" together: past the in-flight cap they wait
    their turn instead of getting 429 (a failing address is still turned away at once)."""
    people = {f"st{i:02d}": f"password-{i:02d}" for i in range(30)}
    c = await native_hub(aiohttp_client, data_dir, people, auth__login_concurrent_per_address=2)
    rs = await asyncio.gather(*(login(c, n, pw) for n, pw in people.items()))
    assert [r.status for r in rs] == [302] * len(people)
