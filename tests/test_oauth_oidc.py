"""Sign-in through a real OpenID Connect provider (oidc-provider from npm, on loopback):
the full browser flow, state and code replays, allow rules, key rotation, logout."""

from __future__ import annotations

import asyncio
import json
import pwd
import re
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from conftest import hub_config, needs_root

from minihub.app import make_app

pytestmark = needs_root
OIDC_DIR = Path(__file__).parent / "oidc"
CLIENT_ID, CLIENT_SECRET = "minihub-test", "oidc-test-secret-0123456789"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def hub_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def accounts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("oidc") / "accounts.json"
    path.write_text("{}")
    return path


def set_account(accounts: Path, login: str, **claims: Any) -> None:
    data = json.loads(accounts.read_text())
    data[login] = {
        "preferred_username": login,
        "email": f"{login}@example.org",
        "email_verified": True,
        **claims,
    }
    accounts.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def provider(hub_port: int, accounts: Path) -> Iterator[str]:
    """The issuer URL of a running oidc-provider that knows the hub as a client."""
    if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        pytest.fail(
            "oidc-provider is not installed: run bash scripts/install test "
            "(it runs npm ci in tests/oidc)"
        )
    redirects = [f"http://127.0.0.1:{hub_port}{b}hub/oauth_callback" for b in ("/", "/jh/")]
    cfg = accounts.parent / "provider.json"
    cfg.write_text(
        json.dumps(
            {
                "accounts_file": str(accounts),
                "clients": [
                    {
                        "client_id": CLIENT_ID,
                        "client_secret": CLIENT_SECRET,
                        "redirect_uris": redirects,
                        "post_logout_redirect_uris": [f"http://127.0.0.1:{hub_port}/jh/hub/login"],
                        "grant_types": ["authorization_code"],
                        "response_types": ["code"],
                    }
                ],
            }
        )
    )
    proc = subprocess.Popen(
        ["node", str(OIDC_DIR / "provider.mjs"), str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        issuer = _wait_listening(proc)
        yield issuer
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        assert proc.stdout is not None
        proc.stdout.close()


def _wait_listening(proc: subprocess.Popen[str]) -> str:
    import selectors

    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout=30):
        raise AssertionError("oidc-provider did not start within 30 s")
    line = proc.stdout.readline()
    assert line.startswith("listening "), f"oidc-provider said {line!r}"
    return line.split()[1]


@pytest.fixture
async def start_hub(hub_port: int, provider: str, data_dir: str) -> AsyncIterator[Any]:
    servers: list[TestServer] = []

    async def start(**settings: Any) -> TestServer:
        oauth = {
            "provider": "oidc",
            "issuer": provider,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "allow_all": True,
        }
        oauth.update(settings.pop("oauth", {}))
        values = {
            "auth.authenticator": "oauth",
            "hub.cleanup_servers": True,
            **{f"auth.oauth.{k}": v for k, v in oauth.items()},
            **settings,
        }
        cfg = hub_config(data_dir, **values)
        server = TestServer(make_app(cfg), host="127.0.0.1", port=hub_port)
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for s in servers:
        await s.close()


@pytest.fixture
async def browser() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=aiohttp.ClientTimeout(total=30)
    ) as s:
        yield s


async def to_callback(
    browser: aiohttp.ClientSession, url: str, login: str, consent: bool = True
) -> str:
    """Follow a sign-in from the hub through the provider's login and consent pages, driven by
    form posts; return the hub callback URL the provider redirects to (not yet visited)."""
    for _ in range(20):
        if urlsplit(url).path.endswith("/hub/oauth_callback"):
            return url
        r = await browser.get(url, allow_redirects=False)
        if r.status in (302, 303):
            url = urljoin(url, r.headers["Location"])
            continue
        page = await r.text()
        assert r.status == 200, (r.status, page[:500])
        form = re.search(r'<form[^>]*action="([^"]+)"', page)
        assert form, page[:500]
        action = urljoin(url, form.group(1).replace("&amp;", "&"))
        if 'value="login"' in page:
            data = {"prompt": "login", "login": login, "password": "any"}
        elif consent:
            data = {"prompt": "consent"}
        else:
            url = action + "/abort"
            continue
        r = await browser.post(action, data=data, allow_redirects=False)
        assert r.status in (302, 303), (r.status, (await r.text())[:500])
        url = urljoin(action, r.headers["Location"])
    raise AssertionError("too many redirects")


async def sign_in(
    browser: aiohttp.ClientSession,
    hub: TestServer,
    login: str,
    next_url: str = "/hub/home",
    base: str = "/",
) -> aiohttp.ClientResponse:
    start = str(hub.make_url(f"{base}hub/oauth_login?next={base}{next_url.lstrip('/')}"))
    callback = await to_callback(browser, start, login)
    return await browser.get(callback, allow_redirects=False)


async def userdel(name: str) -> None:
    await asyncio.to_thread(
        subprocess.run, ["userdel", "-r", "-f", name], check=False, capture_output=True
    )


def session_cookie(browser: aiohttp.ClientSession) -> str:
    return next((c.value for c in browser.cookie_jar if c.key == "minihub-session"), "")


async def test_login_page_offers_the_provider_and_no_password_form(start_hub, browser):
    hub = await start_hub()
    r = await browser.get(hub.make_url("/hub/login?next=/hub/token"))
    page = await r.text()
    assert r.status == 200 and "Sign in with 127.0.0.1" in page
    assert 'href="/hub/oauth_login?next=/hub/token"' in page
    assert 'type="password"' not in page


async def test_full_login_ends_with_a_session_and_a_running_server(
    start_hub, browser, accounts, make_system_user
):
    user = make_system_user("mhoa_ann")
    set_account(accounts, "MHOA_Ann")  # the name is normalised to lower case
    hub = await start_hub()
    start = str(hub.make_url("/hub/oauth_login"))
    r = await browser.get(start, allow_redirects=False)
    auth_url = r.headers["Location"]
    q = parse_qs(urlsplit(auth_url).query)
    assert q["code_challenge_method"] == ["S256"] and len(q["code_challenge"][0]) == 43
    assert q["nonce"] and q["state"] and q["client_id"] == [CLIENT_ID]
    state_cookie = next(c for c in browser.cookie_jar if c.key == "minihub-oauth-state")
    assert state_cookie["httponly"] and state_cookie["path"] == "/hub/"
    callback = await to_callback(browser, auth_url, "MHOA_Ann")
    r = await browser.get(callback, allow_redirects=False)
    assert r.status == 302, await r.text()
    assert r.headers["Location"].startswith("/hub/spawn-pending/mhoa_ann")
    assert session_cookie(browser)
    assert not any(c.key == "minihub-oauth-state" and c.value for c in browser.cookie_jar)
    model: dict[str, Any] = {}
    for _ in range(300):  # the server spawns as the real Unix user
        model = await (await browser.get(hub.make_url("/hub/api/users/mhoa_ann"))).json()
        if model.get("server") or (model.get("pending") is None and model.get("servers") == {}):
            break
        await asyncio.sleep(0.1)
    assert model["name"] == "mhoa_ann" and model["server"] == "/user/mhoa_ann/", model
    r = await browser.get(hub.make_url("/user/mhoa_ann/api/status"))
    assert r.status == 200
    ps = await asyncio.to_thread(
        subprocess.run,
        ["ps", "-o", "user=", "-u", str(user.uid)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert "mhoa_ann" in ps.stdout or str(user.uid) in ps.stdout


async def test_wrong_state_replays_and_another_browser_are_refused(
    start_hub, browser, accounts, make_system_user
):
    make_system_user("mhoa_bob")
    set_account(accounts, "mhoa_bob")
    hub = await start_hub()
    first = await to_callback(browser, str(hub.make_url("/hub/oauth_login")), "mhoa_bob")
    q = parse_qs(urlsplit(first).query)
    assert q["iss"] and q["code"]
    bad = first.replace(f"state={q['state'][0]}", "state=forged-state")
    r = await browser.get(bad, allow_redirects=False)
    assert r.status == 400 and "expired or was already used" in await r.text()
    # a stolen callback URL is useless in another browser (and uses the state up)
    second = await to_callback(browser, str(hub.make_url("/hub/oauth_login")), "mhoa_bob")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as thief:
        r = await thief.get(second, allow_redirects=False)
        assert r.status == 400 and "another browser" in await r.text()
    r = await browser.get(first, allow_redirects=False)
    assert r.status == 302 and session_cookie(browser)
    r = await browser.get(first, allow_redirects=False)  # the same answer again
    assert r.status == 400 and "already used" in await r.text()
    # the old code under a fresh state: the provider refuses the replayed code
    fresh = await to_callback(browser, str(hub.make_url("/hub/oauth_login")), "mhoa_bob")
    fq = parse_qs(urlsplit(fresh).query)
    replay = str(
        hub.make_url(
            f"/hub/oauth_callback?code={q['code'][0]}&state={fq['state'][0]}&iss={fq['iss'][0]}"
        )
    )
    r = await browser.get(replay, allow_redirects=False)
    page = await r.text()
    assert r.status == 403 and "refused the sign-in code" in page and "invalid_grant" in page


async def test_denied_consent_is_a_clear_page(start_hub, browser, accounts):
    set_account(accounts, "mhoa_den")
    hub = await start_hub()
    url = str(hub.make_url("/hub/oauth_login"))
    callback = await to_callback(browser, url, "mhoa_den", consent=False)
    r = await browser.get(callback, allow_redirects=False)
    page = await r.text()
    assert r.status == 403 and "access_denied" in page and "Traceback" not in page
    assert not session_cookie(browser)


@pytest.mark.parametrize(
    "login, claims, ok",
    [
        ("mhoa_dom", {"email": "mhoa_dom@elsewhere.net", "groups": ["lab"]}, False),
        ("mhoa_unv", {"email_verified": False, "groups": ["lab"]}, False),
        ("mhoa_grp", {"groups": ["other"]}, False),
        ("mhoa_cat", {"groups": ["lab", "x"]}, True),
    ],
)
async def test_domain_and_group_rules(
    start_hub, browser, accounts, make_system_user, login, claims, ok
):
    make_system_user(login)
    set_account(accounts, login, **claims)
    hub = await start_hub(
        oauth={
            "allow_all": False,
            "allowed_domains": ["example.org"],
            "allowed_groups": ["lab"],
            "scopes": ["openid", "email", "profile", "groups"],
        }
    )
    r = await sign_in(browser, hub, login)
    page = await r.text()
    if ok:
        assert r.status == 302 and r.headers["Location"] == "/hub/home", page
    else:
        assert r.status == 403
        assert "may not use this hub" in page or "list of allowed users" in page
        assert not session_cookie(browser)
        r = await browser.get(hub.make_url("/hub/api/users"))
        assert r.status == 403


@pytest.mark.parametrize(
    "login, claims, domains, refused",
    [
        ("mhoa_em1", {}, ["example.org"], ""),
        ("mhoa_em2", {"email": "mhoa_em2@elsewhere.net"}, [], "is an email address"),
        ("mhoa_em3", {}, ["example.org", "example.net"], "is an email address"),
        ("mhoa_em4", {"email_verified": False}, ["example.org"], "not verified"),
    ],
)
async def test_an_email_becomes_a_user_name_only_within_one_domain(
    start_hub, browser, accounts, make_system_user, login, claims, domains, refused
):
    """username_claim = "email" (Auth0's and Google's default): mhoa_em1@example.org signs
    in as mhoa_em1 only where example.org is the one allowed domain; else anyone's
    mhoa_em1@ of any domain, verified or not, would be that same hub user."""
    make_system_user(login)
    set_account(accounts, login, **claims)
    oauth = {"username_claim": "email", "allowed_domains": domains, "allow_all": not domains}
    hub = await start_hub(oauth=oauth)
    r = await sign_in(browser, hub, login)
    page = await r.text()
    if not refused:
        assert r.status == 302, page
        me = await (await browser.get(hub.make_url("/hub/api/user"))).json()
        assert me["name"] == login
    else:
        assert r.status == 403 and refused in page, page
        assert not session_cookie(browser)


async def test_admin_groups_and_blocked_users(start_hub, browser, accounts, make_system_user):
    make_system_user("mhoa_adm")
    set_account(accounts, "mhoa_adm", groups=["staff"])
    set_account(accounts, "mhoa_blk")
    hub = await start_hub(
        oauth={"admin_groups": ["staff"], "scopes": ["openid", "email", "profile", "groups"]},
        **{"auth.blocked_users": ["mhoa_blk"]},
    )
    r = await sign_in(browser, hub, "mhoa_adm")
    assert r.status == 302
    me = await (await browser.get(hub.make_url("/hub/api/user"))).json()
    assert me["name"] == "mhoa_adm" and me["admin"] is True
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other:
        r = await sign_in(other, hub, "mhoa_blk")
        assert r.status == 403 and "may not use this hub" in await r.text()
    # out of the provider's staff group: no longer an admin at the next sign-in
    set_account(accounts, "mhoa_adm", groups=[])
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as again:
        assert (await sign_in(again, hub, "mhoa_adm")).status == 302
        me = await (await again.get(hub.make_url("/hub/api/user"))).json()
        assert me["name"] == "mhoa_adm" and me["admin"] is False


async def test_missing_unix_account_is_refused_with_advice_or_created(start_hub, browser, accounts):
    name = "mhoa_new"
    await userdel(name)
    set_account(accounts, name)
    hub = await start_hub()
    r = await sign_in(browser, hub, name)
    page = await r.text()
    assert r.status == 403 and "useradd -m mhoa_new" in page and "create_system_users" in page
    await hub.close()
    try:
        hub = await start_hub(**{"users.create_system_users": True})
        r = await sign_in(browser, hub, name)
        assert r.status == 302, await r.text()
        assert pwd.getpwnam(name).pw_dir == f"/home/{name}"
    finally:
        await userdel(name)


async def test_key_rotation_at_the_provider_is_followed(
    start_hub, browser, accounts, make_system_user, provider
):
    make_system_user("mhoa_rot")
    set_account(accounts, "mhoa_rot")
    hub = await start_hub()
    assert (await sign_in(browser, hub, "mhoa_rot")).status == 302
    async with aiohttp.ClientSession() as s:
        before = (await (await s.get(f"{provider}/jwks")).json())["keys"][0]["kid"]
        assert (await s.post(f"{provider}/_test/rotate")).status == 204
        after = (await (await s.get(f"{provider}/jwks")).json())["keys"]
    assert [k["kid"] for k in after] != [before]
    browser.cookie_jar.clear()
    r = await sign_in(browser, hub, "mhoa_rot")
    assert r.status == 302, await r.text()
    assert session_cookie(browser)


async def test_under_a_base_url_with_logout_at_the_provider(
    start_hub, browser, accounts, make_system_user, provider
):
    make_system_user("mhoa_out")
    set_account(accounts, "mhoa_out")
    hub = await start_hub(oauth={"logout_redirect": True}, **{"hub.base_url": "/jh/"})
    r = await sign_in(browser, hub, "mhoa_out", base="/jh/")
    assert r.status == 302 and r.headers["Location"] == "/jh/hub/home"
    xsrf = next(c.value for c in browser.cookie_jar if c.key == "_xsrf")
    r = await browser.post(
        hub.make_url("/jh/hub/logout"), data={"_xsrf": xsrf}, allow_redirects=False
    )
    where = r.headers["Location"]
    assert r.status == 302 and where.startswith(f"{provider}/session/end?"), where
    q = parse_qs(urlsplit(where).query)
    assert q["post_logout_redirect_uri"] == [str(hub.make_url("/jh/hub/login"))]
    assert q["client_id"] == [CLIENT_ID]
    r = await browser.get(where)  # the provider accepts it: its "sign out?" page
    assert r.status == 200 and "logout" in (await r.text()).lower()
    assert not session_cookie(browser)


async def test_provider_down_is_a_clear_page(data_dir, browser):
    issuer = f"http://127.0.0.1:{free_port()}"
    cfg = hub_config(
        data_dir,
        **{
            "auth.authenticator": "oauth",
            "auth.oauth.issuer": issuer,
            "auth.oauth.client_id": "x",
            "auth.oauth.http_timeout": 5,
        },
    )
    server = TestServer(make_app(cfg), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        r = await browser.get(server.make_url("/hub/oauth_login"), allow_redirects=False)
        page = await r.text()
        assert r.status == 502 and "Could not reach 127.0.0.1" in page
        r = await browser.get(server.make_url("/hub/oauth_callback?state=x&code=y"))
        assert r.status == 400 and "expired or was already used" in await r.text()
    finally:
        await server.close()


async def test_wrong_client_secret_tells_the_admin(start_hub, browser, accounts, caplog):
    set_account(accounts, "mhoa_sec")
    hub = await start_hub(oauth={"client_secret": "not-the-secret"})
    r = await sign_in(browser, hub, "mhoa_sec")
    page = await r.text()
    assert r.status == 502 and "client_id or client_secret" in page
    assert "not-the-secret" not in caplog.text and CLIENT_SECRET not in caplog.text


@pytest.mark.browser
async def test_sign_in_with_headless_chromium(start_hub, accounts, make_system_user):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    from playwright.async_api import async_playwright

    make_system_user("mhoa_web")
    set_account(accounts, "mhoa_web")
    hub = await start_hub()
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await chromium.new_page()
            page.set_default_timeout(20_000)
            await page.goto(str(hub.make_url("/hub/login?next=/hub/home")))
            await page.click("#oauth_login")
            await page.fill("input[name=login]", "mhoa_web")
            await page.fill("input[name=password]", "anything")
            await page.click("button[type=submit]")
            await page.click("button[type=submit]")  # the consent page's Continue
            await page.wait_for_url(str(hub.make_url("/hub/home")))
            assert "mhoa_web" in await page.content()
        finally:
            await chromium.close()
