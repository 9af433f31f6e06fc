"""Services with a url: /services/<name>/ proxied to a real service that logs users in with
JupyterHub's own HubOAuth through the hub's OAuth provider, the REST models, the home page
the consent page and a hub restart."""

from __future__ import annotations

import asyncio
import html
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from conftest import hub_config, login
from test_config_cli import free_port

from minihub.app import make_app
from minihub.auth.native import NativeAuthenticator
from minihub.config import Config
from minihub.context import PARTS
from minihub.store import Store
from minihub.users import create

pytest.importorskip("jupyterhub.services.auth")

SERVICE = Path(__file__).parent / "hub_oauth_service.py"
LISTER = "lister-token-" + "z" * 20
PW = "pw-long-enough-1"
TA, OUT = "mhsv_ta", "mhsv_out"
AUTHORIZE = "/hub/api/oauth2/authorize"
HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


def config(data_dir: str, port: int, sport: int, grader: bool = True) -> Config:
    cfg = hub_config(data_dir, hub__port=port, auth__authenticator="native")
    cfg.roles = [
        {
            "name": "graders",
            "scopes": [
                "access:services!service=grader",
                "access:services!service=hidden",
                "list:services!service=grader",
            ],
            "users": [TA],
        }
    ]
    cfg.services = [
        {"name": "lister", "api_token": LISTER, "scopes": ["list:services", "read:services"]},
        # nothing listens there: an external service that is down
        {
            "name": "hidden",
            "url": f"http://127.0.0.1:{free_port()}",
            "display": False,
            "oauth_no_confirm": True,
        },
    ]
    if grader:
        cfg.services.append(
            {
                "name": "grader",
                "url": f"http://127.0.0.1:{sport}",
                "command": [sys.executable, str(SERVICE)],
                "info": {"description": "Grades homework"},
                "oauth_client_allowed_scopes": ["read:users:activity!user"],
            }
        )
    return cfg


async def make_users(cfg: Config) -> None:
    store = await Store.open(cfg.data_dir / "minihub.sqlite")
    for name in (TA, OUT):
        await create(store, NativeAuthenticator(cfg, store), name, password=PW)
    await store.close()


async def wait_service(c: TestClient, path: str) -> dict[str, Any]:
    """Poll (anonymously: the hub lets it through) until the started service answers."""
    for _ in range(300):
        r = await c.get(path)
        if r.status == 200:
            return dict(await r.json())
        assert r.status == 503, await r.text()
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never answered")


async def log_in_as(c: TestClient, name: str) -> None:
    c.session.cookie_jar.clear()
    r = await login(c, name, PW, next="/hub/home")  # no spawn: these users have no account
    assert r.status == 302, await r.text()


def consent_form(page: str) -> dict[str, str]:
    return {k: html.unescape(v) for k, v in HIDDEN.findall(page)}


async def oauth_to_service(c: TestClient, consent: bool) -> aiohttp.ClientResponse:
    """The service's login through the hub; `consent`: the consent page comes, Authorize."""
    r = await c.get("/services/grader/?x=1")
    if consent:
        assert r.status == 200 and r.url.path == AUTHORIZE, await r.text()
        form = {**consent_form(await r.text()), "decision": "authorize"}
        r = await c.post(AUTHORIZE, data=form)
    hops = [str(h.url) for h in r.history]
    assert r.status == 200, (hops, await r.text())
    assert any("/hub/api/oauth2/authorize" in h for h in hops), hops
    assert any("/services/grader/oauth_callback?code=" in h for h in hops), hops
    return r


def h(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


async def test_service_oauth_proxy_api_home_and_restart(aiohttp_client: Any, data_dir: str) -> None:
    port, sport = free_port(), free_port()
    cfg = config(data_dir, port, sport)
    await make_users(cfg)
    c: TestClient = await aiohttp_client(make_app(cfg), server_kwargs={"port": port})

    # anonymous: let through (the service's own pages decide), path and query kept
    public = await wait_service(c, "/services/grader/public?a=1&b=two")
    assert public == {
        "cookies": [],
        "uri": "/services/grader/public?a=1&b=two",
        "authorization": False,
    }
    # ...and the service's HubOAuth sends the browser to the hub's authorize, then login
    r = await c.get("/services/grader/", allow_redirects=False)
    assert r.status == 302 and "/hub/api/oauth2/authorize?" in r.headers["Location"]
    r = await c.get("/services/grader/")
    assert r.status == 200 and str(r.url.path) == "/hub/login"

    # a user with access:services!service=grader logs in through the hub: first the consent
    # page, as JupyterHub's, with what the client's scopes allow
    await log_in_as(c, TA)
    r = await c.get("/services/grader/?x=1")
    assert r.status == 200 and r.url.path == AUTHORIZE, await r.text()
    page = await r.text()
    assert '<strong id="oauth-client">JupyterHub service grader</strong> wants to:' in page
    assert "<li>Read time of last user activity. Applies to only you.</li>" in page
    assert 'value="authorize"' in page and 'value="cancel"' in page
    form = consent_form(page)
    assert form["client_id"] == "service-grader" and form["state"] and form["code_challenge"]
    # the form is checked as the query is: a forged POST (no _xsrf), another redirect_uri
    forged = {k: v for k, v in form.items() if k != "_xsrf"} | {"decision": "authorize"}
    r = await c.post(AUTHORIZE, data=forged, allow_redirects=False)
    assert r.status == 403
    elsewhere = {**form, "decision": "authorize", "redirect_uri": "http://127.0.0.1:9/steal"}
    r = await c.post(AUTHORIZE, data=elsewhere, allow_redirects=False)
    assert r.status == 400 and (await r.json())["error"] == "invalid_request"
    # Cancel: back to the client with error=access_denied (RFC 6749 4.1.2.1), no code
    r = await c.post(AUTHORIZE, data={**form, "decision": "cancel"}, allow_redirects=False)
    assert r.status == 302
    back = urlsplit(r.headers["Location"])
    args = parse_qs(back.query)
    assert back.path == "/services/grader/oauth_callback" and "code" not in args
    assert args["error"] == ["access_denied"] and args["state"] == [form["state"]]
    r = await c.get(r.headers["Location"])
    assert r.status == 400  # HubOAuth's callback: "Error in oauth" (tornado shows no reason)
    store = c.app[PARTS].store
    row = await store._one("SELECT count(*) FROM tokens WHERE client_id = 'service-grader'")
    assert row[0] == 0
    # Authorize: the code, the service's callback, then the page with their name
    r = await oauth_to_service(c, consent=True)
    page = await r.json()
    assert page["user"] == TA and page["uri"] == "/services/grader/?x=1"
    assert "service-grader" in page["cookies"]
    assert "minihub-session" not in page["cookies"]  # the hub's cookie never reaches it
    public = await (await c.get("/services/grader/public", headers=h("not-a-hub-token"))).json()
    assert "minihub-session" not in public["cookies"] and public["authorization"] is True
    # the OAuth token carries explicit scopes: the access scope, never "all of the user's"
    row = await store._one(
        "SELECT scopes FROM tokens WHERE kind = 'oauth' AND client_id = ?", "service-grader"
    )
    assert "access:services!service=grader" in row[0]

    # a websocket through /services/
    async with c.ws_connect("/services/grader/ws") as ws:
        await ws.send_str("hello")
        assert (await ws.receive(timeout=10)).data == "hello"

    # the home page lists what this user may open and what is displayed
    home = await (await c.get("/hub/home")).text()
    assert 'data-service="grader"' in home and "Grades homework" in home
    assert 'data-service="hidden"' not in home  # display = false

    # the REST models, by scope
    r = await c.get("/hub/api/services")
    assert r.status == 200
    assert await r.json() == {"grader": {"kind": "service", "name": "grader", "admin": False}}
    assert (await c.get("/hub/api/services/hidden")).status == 403
    models = await (await c.get("/hub/api/services", headers=h(LISTER))).json()
    assert sorted(models) == ["grader", "hidden", "lister"]
    g = models["grader"]
    assert g["url"] == f"http://127.0.0.1:{sport}" and g["prefix"] == "/services/grader/"
    assert g["command"] == [sys.executable, str(SERVICE)] and g["pid"] > 0
    assert g["info"] == {"description": "Grades homework"} and g["display"] is True
    assert g["kind"] == "service" and g["admin"] is False and "roles" not in g
    assert models["hidden"]["pid"] == 0 and models["hidden"]["display"] is False
    assert models["lister"]["url"] == "" and models["lister"]["prefix"] == ""
    r = await c.get("/hub/api/services/grader", headers=h(LISTER))
    assert await r.json() == g
    r = await c.get("/hub/api/services/nope", headers=h(LISTER))
    assert r.status == 404 and (await r.json())["status"] == 404
    c.session.cookie_jar.clear()
    assert (await c.get("/hub/api/services")).status == 403

    # unknown, url-less and unreachable services
    r = await c.get("/services/nope/")
    assert r.status == 404 and "not configured" in await r.text()
    r = await c.get("/services/lister/")
    assert r.status == 404 and "no url" in await r.text()
    await log_in_as(c, TA)
    r = await c.get("/services/hidden/", headers={"Accept": "application/json"})
    assert r.status == 503 and "not answering" in (await r.json())["message"]
    # oauth_no_confirm = true: no consent page, the code at once
    ask = {"client_id": "service-hidden", "response_type": "code", "state": "s1"}
    r = await c.get(AUTHORIZE, params=ask, allow_redirects=False)
    assert r.status == 302, await r.text()
    assert r.headers["Location"].startswith("/services/hidden/oauth_callback?code=")

    # a user without the scope: refused by the hub (proxy and authorize alike)
    await log_in_as(c, OUT)
    r = await c.get("/services/grader/", allow_redirects=False)
    assert r.status == 403
    r = await c.get(
        "/hub/api/oauth2/authorize",
        params={"client_id": "service-grader", "response_type": "code"},
        allow_redirects=False,
    )
    assert r.status == 403 and (await r.json())["error"] == "access_denied"
    assert "access:services!service=grader" in (await r.json())["error_description"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as e:
        await c.ws_connect("/services/grader/ws")
    assert e.value.status == 403
    # given access (admin), then taken away: the open websocket closes (1008)
    access = c.app[PARTS].access
    await access.set_admin(OUT, True)
    ws = await c.ws_connect("/services/grader/ws")
    await ws.send_str("ping")
    assert (await ws.receive(timeout=10)).data == "ping"
    await access.set_admin(OUT, False)
    msg = await ws.receive(timeout=10)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1008
    await ws.close()

    # a restart: the service is started again, its OAuth client re-registered (new secret)
    session = next(k.value for k in c.session.cookie_jar if k.key == "minihub-session")
    await c.close()
    c = await aiohttp_client(make_app(cfg), server_kwargs={"port": port})
    await wait_service(c, "/services/grader/public")
    await log_in_as(c, TA)
    # no consent page this time: TA's token from this client already holds these scopes
    page = await (await oauth_to_service(c, consent=False)).json()
    assert page["user"] == TA
    assert session  # OUT's session survived too: still not allowed in
    c.session.cookie_jar.clear()
    c.session.cookie_jar.update_cookies({"minihub-session": session})
    assert (await c.get("/services/grader/", allow_redirects=False)).status == 403
    await c.close()

    # removed from the config: its OAuth client and its tokens are forgotten
    c = await aiohttp_client(
        make_app(config(data_dir, port, sport, grader=False)), server_kwargs={"port": port}
    )
    store = c.app[PARTS].store
    assert await store.get_oauth_client("service-grader") is None
    assert await store.get_oauth_client("service-hidden") is not None
    row = await store._one("SELECT count(*) FROM tokens WHERE client_id = 'service-grader'")
    assert row[0] == 0
    r = await c.get("/services/grader/")
    assert r.status == 404


def test_service_defaults(data_dir: str) -> None:
    """The defaults JupyterHub gives a service's OAuth client and environment."""
    from minihub.service_spec import validate
    from minihub.services import client_scopes, service_env

    cfg = hub_config(data_dir, hub__port=8123)
    [svc] = validate([{"name": "g", "url": "http://127.0.0.1:9000/"}], "t")
    assert svc.oauth_client_id == "service-g" and svc.url == "http://127.0.0.1:9000"
    assert svc.redirect_uri("/") == "/services/g/oauth_callback"
    assert client_scopes(svc) == ["access:services!service=g", "identify"]
    env = service_env(cfg, svc, "tok")
    assert env["JUPYTERHUB_SERVICE_PREFIX"] == "/services/g/"
    assert env["JUPYTERHUB_SERVICE_URL"] == "http://127.0.0.1:9000"
    assert env["JUPYTERHUB_OAUTH_ACCESS_SCOPES"] == '["access:services!service=g"]'
    assert env["JUPYTERHUB_OAUTH_CALLBACK_URL"] == "/services/g/oauth_callback"
    assert env["JUPYTERHUB_CLIENT_ID"] == "service-g"
    assert env["JUPYTERHUB_API_URL"] == "http://127.0.0.1:8123/hub/api"
