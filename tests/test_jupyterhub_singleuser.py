"""The real jupyterhub-singleuser + JupyterLab under minihub, and the hub's OAuth2 provider.

A real system user logs in, the hub spawns JupyterHub's own single-user server for them,
an HTTP client follows the OAuth dance, opens JupyterLab and runs code in a kernel.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import shutil
import sys
from typing import Any
from urllib.parse import parse_qs, urlparse

import helpers
import pytest
from aiohttp.test_utils import TestClient
from conftest import hub_config, login, needs_root, xsrf_of
from helpers import offline_user as hub_login
from test_config_cli import free_port

from minihub.app import make_app
from minihub.store import Store
from minihub.users import new_token

SINGLEUSER = shutil.which(
    "jupyterhub-singleuser", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
)


async def wait_ready(c: TestClient, name: str) -> dict[str, Any]:
    for _ in range(600):
        r = await c.get(f"/hub/api/users/{name}")
        model = await r.json()
        srv = model.get("servers", {}).get("")
        if model.get("server"):
            return dict(model)
        if srv is None and model.get("pending") is None and r.status == 200:
            log = await c.get(f"/hub/api/users/{name}/server/progress")
            raise AssertionError(f"server did not start: {await log.text()}")
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name}'s server never became ready: {model}")


def page_config(html: str) -> dict[str, Any]:
    m = re.search(
        r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', html, re.DOTALL
    )
    assert m, html[:500]
    return dict(json.loads(m.group(1)))


async def execute(c: TestClient, name: str, kernel_id: str, code: str) -> str:
    """Run `code` over the kernel websocket, through the hub's proxy; return its stdout."""
    url = f"/user/{name}/api/kernels/{kernel_id}/channels"
    return await helpers.execute(c, url, code, username=name, lab=True, timeout=30)


@needs_root
@pytest.mark.skipif(SINGLEUSER is None, reason="jupyterhub-singleuser is not installed")
async def test_jupyterlab_oauth_kernel_and_activity(aiohttp_client, data_dir, make_system_user):
    alice = make_system_user("mhjh_alice")
    port = free_port()
    cfg = hub_config(
        data_dir,
        hub__port=port,
        spawner__cmd=[SINGLEUSER],
        spawner__start_timeout=60,
        spawner__environment={"JUPYTERHUB_ACTIVITY_INTERVAL": "1"},
    )
    c = await aiohttp_client(make_app(cfg), server_kwargs={"port": port})
    r = await login(c, alice.name, alice.password)
    assert r.status == 302, await r.text()
    r = await c.post(f"/hub/api/users/{alice.name}/server", headers={"X-XSRFToken": xsrf_of(c)})
    assert r.status in (201, 202), await r.text()
    await wait_ready(c, alice.name)

    # The OAuth dance: lab -> hub authorize (PKCE) -> oauth_callback -> lab, all redirects.
    r = await c.get(f"/user/{alice.name}/lab")
    hops = [str(h.url) for h in r.history]
    assert r.status == 200, (hops, await r.text())
    assert any("/hub/api/oauth2/authorize" in h and "code_challenge=" in h for h in hops), hops
    assert any("/oauth_callback?code=" in h for h in hops), hops
    html = await r.text()
    config = page_config(html)
    assert config["hubUser"] == alice.name
    token = config["token"]
    assert token

    # JupyterLab's own calls carry that token; the hub knows who it is and what it may do.
    auth = {"Authorization": f"token {token}"}
    me = await (await c.get("/hub/api/user", headers=auth)).json()
    assert me["name"] == alice.name and me["kind"] == "user" and me["admin"] is False
    assert f"access:servers!server={alice.name}/" in me["scopes"]
    # made for this server, it reaches this server only (JupyterHub's server client scopes)
    assert f"access:servers!user={alice.name}" not in me["scopes"]
    r = await c.get("/hub/api/users", headers=auth)  # an OAuth token is not a user token
    assert r.status == 403

    before = (await (await c.get(f"/hub/api/users/{alice.name}")).json())["last_activity"]
    r = await c.post(f"/user/{alice.name}/api/kernels", headers=auth, json={})
    assert r.status == 201, await r.text()
    kernel = await r.json()
    out = await execute(c, alice.name, kernel["id"], "import os; print(os.getuid())")
    assert out.strip() == str(alice.uid)

    # the server posts its activity to the hub (JUPYTERHUB_ACTIVITY_URL, every second here)
    for _ in range(100):
        model = await (await c.get(f"/hub/api/users/{alice.name}")).json()
        if model["last_activity"] != before:
            break
        await asyncio.sleep(0.1)
    assert model["last_activity"] > before

    r = await c.delete(f"/hub/api/users/{alice.name}/server", headers={"X-XSRFToken": xsrf_of(c)})
    assert r.status in (202, 204)


# --- the OAuth2 provider on its own (no server process) --------------------------------------


async def _setup(cfg: Any, name: str, password: str) -> tuple[str, str]:
    """A native user, and an OAuth client for their server: (client id, client secret)."""
    from minihub import protocols, users
    from minihub.auth.native import NativeAuthenticator

    store = await Store.open(cfg.data_dir / "minihub.sqlite")
    user = await users.create(store, NativeAuthenticator(cfg, store), name, password=password)
    client = await protocols.register_server(store, user, "", f"{cfg.base_url}user/{name}/")
    await store.close()
    return client.client_id, client.api_token


async def _authorize(c: TestClient, client_id: str, **extra: str) -> str:
    params = {"client_id": client_id, "response_type": "code", "state": "st8", **extra}
    r = await c.get("/hub/api/oauth2/authorize", params=params, allow_redirects=False)
    assert r.status == 302, await r.text()
    q = parse_qs(urlparse(r.headers["Location"]).query)
    assert q["state"] == ["st8"]
    return q["code"][0]


async def test_oauth_provider_pkce_and_plain(aiohttp_client, data_dir):
    cfg = hub_config(data_dir, auth__authenticator="native")
    client_id, secret = await _setup(cfg, "mhjh_bea", "pw-long-enough-1")
    c = await aiohttp_client(make_app(cfg))
    r = await login(c, "mhjh_bea", "pw-long-enough-1")
    assert r.status == 302

    r = await c.get(
        "/hub/api/oauth2/authorize", params={"client_id": "nope"}, allow_redirects=False
    )
    assert r.status == 400 and (await r.json())["error"] == "invalid_client"

    # PKCE S256: the right verifier gets a token, a wrong one does not
    verifier = "v" * 50
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    )
    code = await _authorize(c, client_id, code_challenge=challenge, code_challenge_method="S256")
    form = {
        "grant_type": "authorization_code",
        "client_id": client_id,
        "client_secret": secret,
        "code": code,
    }
    r = await c.post("/hub/api/oauth2/token", data={**form, "code_verifier": "w" * 50})
    assert r.status == 400 and (await r.json())["error"] == "invalid_grant"
    code = await _authorize(c, client_id, code_challenge=challenge, code_challenge_method="S256")
    r = await c.post(
        "/hub/api/oauth2/token", data={**form, "code": code, "code_verifier": verifier}
    )
    assert r.status == 200, await r.text()
    access = (await r.json())["access_token"]
    r = await c.post(
        "/hub/api/oauth2/token", data={**form, "code": code, "code_verifier": verifier}
    )
    assert r.status == 400  # a code is used once

    # without PKCE, and a wrong client secret
    code = await _authorize(c, client_id)
    r = await c.post("/hub/api/oauth2/token", data={**form, "code": code, "client_secret": "x"})
    assert r.status == 401
    code = await _authorize(c, client_id)
    r = await c.post("/hub/api/oauth2/token", data={**form, "code": code})
    assert r.status == 200

    r = await c.get("/hub/api/user", headers={"Authorization": f"Bearer {access}"})
    me = await r.json()
    assert r.headers["X-JupyterHub-Version"]
    assert me["name"] == "mhjh_bea" and "access:servers!server=mhjh_bea/" in me["scopes"]
    # the OAuth token reads its owner's name and groups (identify), nothing more
    assert {s.split("!")[0] for s in me["scopes"]} <= {
        "access:servers",
        "read:users:name",
        "read:users:groups",
    }
    assert "servers" not in me and "created" not in me

    # only the user's own server skips the consent page (as JupyterHub): one shared with
    # another user asks them first, and Authorize gives the code
    from minihub import users
    from minihub.context import PARTS

    p = c.server.app[PARTS]
    await users.create(p.store, p.authenticator, "mhjh_bob", password="pw-long-enough-1")
    await p.access.share("mhjh_bea", "", ["access:servers!server=mhjh_bea/"], user="mhjh_bob")
    c.session.cookie_jar.clear()
    assert (await login(c, "mhjh_bob", "pw-long-enough-1")).status == 302
    params = {"client_id": client_id, "response_type": "code", "state": "st8"}
    r = await c.get("/hub/api/oauth2/authorize", params=params, allow_redirects=False)
    page = await r.text()
    assert r.status == 200 and "Server at /user/mhjh_bea/</strong> wants to:" in page
    assert "Identify the owner of the requesting entity." in page
    form = {**params, "_xsrf": xsrf_of(c), "decision": "authorize"}
    r = await c.post("/hub/api/oauth2/authorize", data=form, allow_redirects=False)
    assert r.status == 302 and "code=" in r.headers["Location"], await r.text()


async def test_oauth_tokens_end_with_the_login_that_authorized_them(aiohttp_client, data_dir):
    """As JupyterHub: an OAuth token (a server's or service's HubOAuth cookie holds one)
    lasts as long as the hub session that authorized it. A logout ends the tokens that
    session authorized, a password change all the user's; a code authorized by a session
    that has ended since gives no token."""
    from conftest import xsrf_of as xsrf

    cfg = hub_config(data_dir, auth__authenticator="native")
    client_id, secret = await _setup(cfg, "mhjh_eli", "pw-long-enough-1")
    c = await aiohttp_client(make_app(cfg))
    form = {"grant_type": "authorization_code", "client_id": client_id, "client_secret": secret}

    async def token_of(code: str) -> tuple[int, str]:
        r = await c.post("/hub/api/oauth2/token", data={**form, "code": code})
        return r.status, (await r.json()).get("access_token", "")

    async def works(token: str) -> bool:
        r = await c.get("/hub/api/user", headers={"Authorization": f"Bearer {token}"})
        return r.status == 200

    assert (await login(c, "mhjh_eli", "pw-long-enough-1")).status == 302
    code = await _authorize(c, client_id)
    # a session near its end (as if logged in 14 days ago): the token ends with it
    import sqlite3
    import time

    with sqlite3.connect(cfg.data_dir / "minihub.sqlite") as db:
        db.execute("UPDATE sessions SET expires = ?", (time.time() + 600,))
    r = await c.post("/hub/api/oauth2/token", data={**form, "code": code})
    first = (await r.json())["access_token"]
    assert await works(first)
    assert 0 < (await r.json())["expires_in"] <= 600
    # a second browser: its own session, its own token
    other = TestClient(c.server)
    assert (await login(other, "mhjh_eli", "pw-long-enough-1")).status == 302
    r = await other.get(
        "/hub/api/oauth2/authorize",
        params={"client_id": client_id, "response_type": "code"},
        allow_redirects=False,
    )
    second_code = parse_qs(urlparse(r.headers["Location"]).query)["code"][0]
    second = (await token_of(second_code))[1]
    pending_code = await _authorize(c, client_id)  # authorized now, exchanged after logout

    r = await c.post("/hub/logout", data={"_xsrf": xsrf(c)}, allow_redirects=False)
    assert r.status == 302
    assert not await works(first)
    assert await works(second)  # the other browser's login goes on
    status, _ = await token_of(pending_code)
    assert status == 400

    r = await other.post(
        "/hub/change-password",
        data={"old": "pw-long-enough-1", "new": "pw-long-enough-2", "new2": "pw-long-enough-2",
              "_xsrf": xsrf(other)},
        allow_redirects=False,
    )  # fmt: skip
    assert r.status == 302, await r.text()
    assert not await works(second)
    await other.close()


async def test_scoped_tokens_and_logged_out_authorize(aiohttp_client, data_dir):
    cfg = hub_config(data_dir)
    store = await Store.open(cfg.data_dir / "minihub.sqlite")
    u = await hub_login(store, "mhjh_cy", False)
    await hub_login(store, "mhjh_dee", False)
    full, _ = await new_token(store, u, "t")
    limited, _ = await new_token(store, u, "t", ["read:users!user=mhjh_cy"])
    await store.close()
    c = await aiohttp_client(make_app(cfg))
    r = await c.get("/hub/api/oauth2/authorize", params={"client_id": "x"}, allow_redirects=False)
    assert r.status == 302 and "/hub/login?next=" in r.headers["Location"]
    h = {"Authorization": f"token {limited}"}
    assert (await c.get("/hub/api/users/mhjh_cy", headers=h)).status == 200
    assert (await c.post("/hub/api/users/mhjh_cy/tokens", headers=h, json={})).status == 403
    assert (await c.get("/hub/api/users/mhjh_dee", headers=h)).status == 403
    r = await c.get("/user/mhjh_cy/api/status", headers=h)
    assert r.status == 403  # no access:servers in this token
    me = await (await c.get("/hub/api/user", headers=h)).json()
    assert me["scopes"] == sorted(
        [
            "read:users!user=mhjh_cy",
            "read:users:name!user=mhjh_cy",
            "read:users:groups!user=mhjh_cy",
            "read:users:activity!user=mhjh_cy",
        ]
    )
    h = {"Authorization": f"token {full}"}
    r = await c.post("/hub/api/users/mhjh_cy/tokens", headers=h, json={"scopes": ["bogus"]})
    assert r.status == 400
    assert (await c.get("/hub/api/users/mhjh_dee", headers=h)).status == 403


# --- the proxy: whose Authorization reaches a jupyterhub-singleuser server ---------------------


async def test_authorization_reaches_only_owners_jupyterhub_server(
    aiohttp_client, aiohttp_server, tmp_path
):
    """jupyterhub-singleuser authenticates API clients by their hub token, so the hub forwards
    the owner's Authorization to it; never an admin's, never to minihub's own server."""
    from aiohttp import web

    from minihub.context import PARTS
    from minihub.spawner.base import Endpoint

    seen: list[str] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({})

    up = web.Application()
    up.router.add_route("*", "/{tail:.*}", echo)
    upstream = await aiohttp_server(up)

    for cmd, forwarded in ((["jupyterhub-singleuser"], True), ([], False)):
        data = tmp_path / str(len(cmd))
        data.mkdir(mode=0o711)
        cfg = hub_config(str(data), spawner__cmd=cmd, hub__admin_access=True)
        store = await Store.open(cfg.data_dir / "minihub.sqlite")
        owner = await hub_login(store, "mhjh_own", False)
        own_tok = (await new_token(store, owner, "t"))[0]
        adm_tok = (await new_token(store, await hub_login(store, "mhjh_adm", True), "t"))[0]
        await store.close()
        c = await aiohttp_client(make_app(cfg))
        # A stand-in for a running server: the proxy's upstream is the echo server.
        srv = c.app[PARTS].servers.get(owner)
        srv.status, srv.secret = "running", "s3cret"
        srv.endpoint = Endpoint("127.0.0.1", upstream.port)
        seen.clear()
        for tok in (own_tok, adm_tok):
            r = await c.get("/user/mhjh_own/api/x", headers={"Authorization": f"token {tok}"})
            assert r.status == 200
        assert seen == [f"token {own_tok}" if forwarded else "", ""]
        srv.status, srv.endpoint = "stopped", None
