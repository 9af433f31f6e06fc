"""OAuth sign-in against loopback stand-ins whose keys and answers the tests control: ID tokens
signed by another key, for another audience, expired or replayed; the GitHub preset; auth state;
the [auth.oauth] config table."""

from __future__ import annotations

import base64
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from conftest import hub_config, needs_root
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from minihub.app import make_app
from minihub.auth.oauth import OAuthenticator
from minihub.config import load
from minihub.errors import StartupError
from minihub.store import Store

pytestmark = needs_root
CLIENT_ID, CLIENT_SECRET = "standin-client", "standin-secret-0123456789abcdef0123456789"


class StandIn:
    """An OIDC provider (or GitHub's OAuth endpoints) in a few routes, with knobs for the tests."""

    def __init__(self) -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
        self.other_key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
        self.codes: dict[str, dict[str, str]] = {}
        self.tokens: dict[str, str] = {}  # access token -> login
        self.people: dict[str, dict[str, Any]] = {}
        self.members: dict[str, set[str]] = {}
        self.tamper: dict[str, Any] = {}
        self.sign_with = "good"
        self.issuer = ""
        self.next_login = ""
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self.discovery)
        app.router.add_get("/jwks", self.jwks)
        app.router.add_get("/authorize", self.authorize)
        app.router.add_get("/login/oauth/authorize", self.authorize)
        app.router.add_post("/token", self.token)
        app.router.add_post("/login/oauth/access_token", self.github_token)
        app.router.add_get("/userinfo", self.userinfo)
        app.router.add_get("/api/user", self.github_user)
        app.router.add_get("/api/orgs/{org}/members/{login}", self.github_member)
        self.server = TestServer(app, host="127.0.0.1", port=0)

    async def discovery(self, request: web.Request) -> web.Response:
        i = self.issuer
        return web.json_response(
            {
                "issuer": i,
                "authorization_endpoint": f"{i}/authorize",
                "token_endpoint": f"{i}/token",
                "userinfo_endpoint": f"{i}/userinfo",
                "jwks_uri": f"{i}/jwks",
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        )

    async def jwks(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": [self.key.as_dict(private=False)]})

    async def authorize(self, request: web.Request) -> web.Response:
        q = request.query
        assert q["client_id"] == CLIENT_ID and q["code_challenge_method"] == "S256"
        code = secrets.token_urlsafe(16)
        self.codes[code] = {
            "login": self.next_login,
            "nonce": q.get("nonce", ""),
            "challenge": q["code_challenge"],
            "redirect_uri": q["redirect_uri"],
        }
        sep = "&" if "?" in q["redirect_uri"] else "?"
        raise web.HTTPFound(
            q["redirect_uri"] + sep + urlencode({"code": code, "state": q["state"]})
        )

    def take_code(self, form: Any) -> dict[str, str] | None:
        grant = self.codes.pop(str(form.get("code", "")), None)  # single use
        if grant is None or form.get("redirect_uri") != grant["redirect_uri"]:
            return None
        if create_s256_code_challenge(str(form.get("code_verifier", ""))) != grant["challenge"]:
            return None
        return grant

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        basic = request.headers.get("Authorization", "").removeprefix("Basic ")
        assert base64.b64decode(basic).decode() == f"{CLIENT_ID}:{CLIENT_SECRET}"
        grant = self.take_code(form)
        if grant is None:
            return web.json_response({"error": "invalid_grant"}, status=400)
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": CLIENT_ID,
            "sub": grant["login"],
            "iat": now,
            "exp": now + 300,
            "nonce": grant["nonce"],
            **self.tamper,
        }
        key: Any = {
            "good": self.key,
            "other": self.other_key,
            "secret": OctKey.import_key(CLIENT_SECRET),
        }[self.sign_with]
        alg = "HS256" if self.sign_with == "secret" else "RS256"
        id_token = jwt.encode({"alg": alg, "kid": "k1"}, claims, key, algorithms=[alg])
        access = secrets.token_urlsafe(16)
        self.tokens[access] = grant["login"]
        return web.json_response(
            {
                "access_token": access,
                "token_type": "Bearer",
                "id_token": id_token,
                "expires_in": 300,
            }
        )

    async def userinfo(self, request: web.Request) -> web.Response:
        login = self.tokens.get(request.headers.get("Authorization", "")[7:])
        if login is None:
            return web.json_response({"error": "invalid_token"}, status=401)
        return web.json_response({"sub": login, **self.people.get(login, {})})

    async def github_token(self, request: web.Request) -> web.Response:
        form = await request.post()
        assert form["client_id"] == CLIENT_ID and form["client_secret"] == CLIENT_SECRET
        grant = self.take_code(form)
        if grant is None:  # GitHub answers 200 with an error body
            return web.json_response(
                {
                    "error": "bad_verification_code",
                    "error_description": "The code is incorrect or expired.",
                }
            )
        access = "gho_" + secrets.token_urlsafe(16)
        self.tokens[access] = grant["login"]
        return web.json_response(
            {"access_token": access, "token_type": "bearer", "scope": "read:org"}
        )

    async def github_user(self, request: web.Request) -> web.Response:
        login = self.tokens.get(request.headers.get("Authorization", "")[7:])
        if login is None:
            return web.json_response({"message": "Bad credentials"}, status=401)
        return web.json_response({"login": login, "id": 1, **self.people.get(login, {})})

    async def github_member(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization", "")[7:] not in self.tokens:
            return web.json_response({"message": "Bad credentials"}, status=401)
        members = self.members.get(request.match_info["org"], set())
        return web.Response(status=204 if request.match_info["login"] in members else 404)


@pytest.fixture
async def standin() -> AsyncIterator[StandIn]:
    s = StandIn()
    await s.server.start_server()
    s.issuer = str(s.server.make_url("")).rstrip("/")
    yield s
    await s.server.close()


@pytest.fixture
async def start_hub(data_dir: str, standin: StandIn) -> AsyncIterator[Any]:
    servers: list[TestServer] = []

    async def start(**oauth: Any) -> TestServer:
        settings = {
            "provider": "oidc",
            "issuer": standin.issuer,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "allow_all": True,
            **oauth,
        }
        cfg = hub_config(
            data_dir,
            **{
                "auth.authenticator": "oauth",
                **{f"auth.oauth.{k}": v for k, v in settings.items()},
            },
        )
        server = TestServer(make_app(cfg), host="127.0.0.1", port=0)
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
    browser: aiohttp.ClientSession, standin: StandIn, hub: TestServer, login: str
) -> str:
    standin.next_login = login
    r = await browser.get(hub.make_url("/hub/oauth_login?next=/hub/home"), allow_redirects=False)
    r = await browser.get(r.headers["Location"], allow_redirects=False)
    assert r.status == 302
    return r.headers["Location"]


async def sign_in(
    browser: aiohttp.ClientSession, standin: StandIn, hub: TestServer, login: str
) -> tuple[int, str]:
    r = await browser.get(await to_callback(browser, standin, hub, login), allow_redirects=False)
    return r.status, await r.text()


@pytest.mark.parametrize(
    "sign_with, tamper, why",
    [
        ("other", {}, "bad_signature"),
        ("secret", {}, "alg"),  # HS256 keyed by the client secret: algorithm confusion
        ("good", {"aud": "someone-else"}, "aud"),
        ("good", {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 4000}, "expired"),
        ("good", {"nonce": "replayed-nonce"}, "nonce"),
        ("good", {"iss": "https://evil.example"}, "iss"),
    ],
)
async def test_invalid_id_tokens_are_refused(start_hub, standin, browser, sign_with, tamper, why):
    standin.sign_with, standin.tamper = sign_with, tamper
    hub = await start_hub()
    status, page = await sign_in(browser, standin, hub, "mhoa_tok")
    assert status == 403 and "ID token" in page and why in page.lower(), page[-800:]
    assert "Traceback" not in page
    assert not any(c.key == "minihub-session" for c in browser.cookie_jar)


async def test_valid_id_token_with_pkce_signs_in(start_hub, standin, browser, make_system_user):
    make_system_user("mhoa_sid")
    standin.people["mhoa_sid"] = {"preferred_username": "mhoa_sid"}
    hub = await start_hub()
    status, page = await sign_in(browser, standin, hub, "mhoa_sid")
    assert status == 302, page
    me = await (await browser.get(hub.make_url("/hub/api/user"))).json()
    assert me["name"] == "mhoa_sid"


def github_settings(standin: StandIn, **more: Any) -> dict[str, Any]:
    base = standin.issuer
    return {
        "provider": "github",
        "issuer": "",
        "allow_all": False,
        "authorize_url": f"{base}/login/oauth/authorize",
        "token_url": f"{base}/login/oauth/access_token",
        "userdata_url": f"{base}/api/user",
        **more,
    }


async def test_github_organisation_members_sign_in_others_do_not(
    start_hub, standin, browser, make_system_user
):
    make_system_user("mhoa_gh1")
    standin.members["lab-org"] = {"MHOA_GH1"}
    hub = await start_hub(**github_settings(standin, allowed_organizations=["lab-org"]))
    r = await browser.get(hub.make_url("/hub/login"))
    assert "Sign in with GitHub" in await r.text()
    callback = await to_callback(browser, standin, hub, "MHOA_GH1")
    q = parse_qs(urlsplit(callback).query)
    r = await browser.get(callback, allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "/hub/home", await r.text()
    me = await (await browser.get(hub.make_url("/hub/api/user"))).json()
    assert me["name"] == "mhoa_gh1"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other:
        status, page = await sign_in(other, standin, hub, "mhoa_gh2")
        assert status == 403 and "list of allowed users: ask an admin" in page
        # GitHub's code is single use: an old code under a fresh state is refused
        fresh = parse_qs(urlsplit(await to_callback(other, standin, hub, "x")).query)
        r = await other.get(
            hub.make_url(
                "/hub/oauth_callback?"
                + urlencode({"code": q["code"][0], "state": fresh["state"][0]})
            ),
            allow_redirects=False,
        )
        page = await r.text()
        assert r.status == 403 and "bad_verification_code" in page


async def test_auth_state_is_kept_encrypted(
    start_hub, standin, browser, make_system_user, data_dir
):
    make_system_user("mhoa_st")
    hub = await start_hub(**github_settings(standin, allow_all=True, enable_auth_state=True))
    status, page = await sign_in(browser, standin, hub, "mhoa_st")
    assert status == 302, page
    access = next(t for t, login in standin.tokens.items() if login == "mhoa_st")
    db = sqlite3.connect(f"{data_dir}/minihub.sqlite")
    (blob,) = db.execute("SELECT data FROM auth_state").fetchone()
    db.close()
    assert access.encode() not in blob and b"access_token" not in blob
    cfg = hub_config(
        data_dir,
        **{
            "auth.authenticator": "oauth",
            "auth.oauth.client_id": "c",
            "auth.oauth.provider": "github",
            "auth.oauth.enable_auth_state": True,
        },
    )
    store = await Store.open(cfg.data_dir / "minihub.sqlite")
    try:
        user = await store.get_user("mhoa_st")
        assert user is not None
        state = await OAuthenticator(cfg, store).load_auth_state(user.id)
        assert state is not None and state["access_token"] == access
    finally:
        await store.close()


def test_oauth_table_in_the_config_file(tmp_path, data_dir):
    path = tmp_path / "minihub.toml"
    path.write_text(
        f'[hub]\ndata_dir = "{data_dir}"\n[auth]\nauthenticator = "oauth"\n'
        '[auth.oauth]\nprovider = "auth0"\ndomain = "t.example"\nclient_id = "c"\n'
        'allowed_domains = ["example.org"]\n'
    )
    cfg = load(path)
    assert cfg.get("auth.oauth.provider") == "auth0"
    assert cfg.section("auth.oauth")["allowed_domains"] == ["example.org"]
    auth = OAuthenticator(cfg, None)  # type: ignore[arg-type]
    assert auth.client.s.issuer == "https://t.example/" and auth.username_claim == "email"
    path.write_text('[auth.oauth]\nprovder = "github"\n')
    with pytest.raises(StartupError, match=r"unknown key 'provder' in \[auth.oauth\]"):
        load(path)
    path.write_text('[auth.oauth]\nallowed_domains = "example.org"\n')
    with pytest.raises(StartupError, match=r"\[auth.oauth\] allowed_domains must be a list"):
        load(path)
    cfg = hub_config(data_dir, **{"auth.authenticator": "oauth", "auth.oauth.issuer": "x"})
    with pytest.raises(StartupError, match="client_id"):
        OAuthenticator(cfg, None)  # type: ignore[arg-type]


def test_a_flood_of_started_sign_ins_does_not_push_out_others() -> None:
    """GET /hub/oauth_login needs no login: one address starting sign-ins it never finishes
    evicts only its own oldest, and a full store gives up the biggest holder's first, so a
    sign-in started elsewhere meanwhile still finishes."""
    from minihub.auth.oauth import PendingLogins

    store = PendingLogins(limit=40, per_address=5)
    state, _ = store.add("browser-of-amy", "", "192.0.2.10")
    flood = [store.add("x", "", "198.51.100.9")[0] for _ in range(100)]
    assert sum(store.take(s) is not None for s in flood[:-5]) == 0  # only its newest 5 kept
    for i in range(100):  # many addresses, to the store's limit and past it
        store.add("x", "", f"203.0.113.{i % 20}")
    assert store.take(state) is not None
