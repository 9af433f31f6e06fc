"""Attacks on the access model (issue 15): groups, roles, shares and tokens as an attacker
would try them. Each test is a hole found in review, against the real hub app with the
FakeSpawner (its servers answer /user/<name>/api/x with who they are)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import hub_config, login, xsrf_of
from test_hub_fake import up
from test_shares import LAB, PASSWORD, SHARING_ROLE, _users, call, h

from minihub import protocols
from minihub import servers as servers_mod
from minihub.app import make_app
from minihub.context import PARTS
from minihub.culler import Culler
from minihub.spawner.fake import FakeSpawner


@pytest.fixture(autouse=True)
def quick_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers_mod, "SLOW_SPAWN", 0.1)
    monkeypatch.setattr(servers_mod, "POLL_EVERY", 3600.0)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSpawner]:
    f = FakeSpawner()
    yield f
    await f.shutdown()


@pytest.fixture
async def hub(data_dir: str, fake: FakeSpawner) -> AsyncIterator[Any]:
    """hub(roles, **settings) -> (client, {name: token}) for amy, bo, cy and adm (an admin),
    with JupyterHub's sharing role for every user and the extra roles. Each call is a restart on the same data dir."""
    clients: list[TestClient] = []

    async def make(
        roles: tuple[dict[str, Any], ...] = (), **settings: Any
    ) -> tuple[TestClient, dict[str, str]]:
        cfg = hub_config(
            data_dir, auth__authenticator="native", hub__allow_named_servers=True, **settings
        )
        cfg = replace(cfg, roles=[SHARING_ROLE, *roles], groups=[LAB])
        tokens = await _users(cfg)
        c = TestClient(TestServer(make_app(cfg, spawner=fake)))
        await c.start_server()
        clients.append(c)
        return c, tokens

    yield make
    for c in clients:
        await c.close()


async def opens(c: TestClient, tok: str, owner: str) -> int:
    return (await c.get(f"/user/{owner}/api/x", headers=h(tok))).status


async def new_user(c: TestClient, adm: str, name: str) -> str:
    """A new account called `name` (a sign-up, or an admin adding it), and its token."""
    await call(c, "POST", f"/users/{name}", adm, 201)
    made = await call(c, "POST", f"/users/{name}/tokens", adm, 201, {"scopes": ["inherit"]})
    return str(made["token"])


# --- a share names its server by the owner's name: renaming the owner must follow -----------
async def test_a_share_follows_its_owner_through_a_rename(hub: Any) -> None:
    """amy shares her server with bo, and makes a link; the admin renames amy to ann, and
    later someone new signs up as amy. bo (and whoever takes the old link) must reach ann's
    server, never the new amy's: the share's scopes named "server=amy/"."""
    c, tok = await hub()
    await call(c, "POST", "/shares/amy/", tok["amy"], 200, {"user": "bo"})
    code = (await call(c, "POST", "/share-codes/amy/", tok["amy"], 200, {}))["code"]
    await call(c, "PATCH", "/users/amy", tok["adm"], 200, {"name": "ann"})
    squatter = await new_user(c, tok["adm"], "amy")
    await up(c, "amy", squatter)
    await up(c, "ann", tok["amy"])  # amy's old token is ann's now
    assert await opens(c, tok["bo"], "amy") == 403
    assert await opens(c, tok["bo"], "ann") == 200
    shared = (await call(c, "GET", "/users/bo/shared", tok["bo"], 200))["items"]
    assert [(s["server"]["user"]["name"], s["scopes"]) for s in shared] == [
        ("ann", ["access:servers!server=ann/"])
    ]
    # the link made before the rename shares ann's server too
    assert (await login(c, "cy", PASSWORD)).status == 302
    r = await c.post(
        "/hub/accept-share", data={"code": code, "_xsrf": xsrf_of(c)}, allow_redirects=False
    )
    assert r.status == 302 and r.headers["Location"] == "/user/ann/"
    assert await opens(c, tok["cy"], "amy") == 403
    assert await opens(c, tok["cy"], "ann") == 200
    # and so after a restart (the rows are read again)
    await c.close()
    c, tok = await hub()
    p = c.server.app[PARTS]
    for who in ("bo", "cy"):
        assert not p.access.allows(p.access.user(who), "access:servers", user="amy", server="")
        assert p.access.allows(p.access.user(who), "access:servers", user="ann", server="")


# --- the idle culler deletes users: the access model must forget them as the API does -------
async def test_a_culled_user_leaves_nothing_to_a_new_account_of_the_same_name(
    hub: Any, fake: FakeSpawner
) -> None:
    """bo is in the group graders, amy's server is shared with bo and bo shares his with cy.
    The culler deletes bo (cull_users); a new account named bo must get none of it."""
    c, tok = await hub(culler__timeout=1, culler__every=3600, culler__cull_users=True)
    await call(c, "POST", "/groups/graders", tok["adm"], 201, {"users": ["bo"]})
    await call(c, "POST", "/shares/amy/", tok["amy"], 200, {"user": "bo"})
    await call(c, "POST", "/shares/bo/", tok["bo"], 200, {"user": "cy"})
    await up(c, "bo", tok["bo"])
    p = c.server.app[PARTS]
    srv = p.servers.peek((await p.store.get_user("bo")).id, "")
    assert srv is not None
    srv.last_activity = srv.started = time.time() - 100  # idle past the timeout
    running = fake.running("bo")
    assert running is not None
    running.last_activity = srv.last_activity  # and so it says itself
    culler = Culler(p.cfg, p.servers, p.store, p.metrics, p.access, p.identities)
    assert (await c.get("/hub/api/user", headers={"Authorization": f"token {tok['bo']}"})).ok
    assert await culler.cull_once() == ["bo"]
    assert await p.store.get_user("bo") is None
    # the culled account's token is refused at once, not after the identity cache's 5 s
    r = await c.get("/hub/api/user", headers={"Authorization": f"token {tok['bo']}"})
    assert r.status == 403
    fresh = await new_user(c, tok["adm"], "bo")
    assert (await call(c, "GET", "/groups/graders", tok["adm"], 200))["users"] == []
    assert await call(c, "GET", "/users/bo/shared", fresh, 200) == {
        "items": [],
        "_pagination": {"offset": 0, "limit": 200, "total": 0, "next": None},
    }
    await up(c, "amy", tok["amy"])
    await up(c, "bo", fresh)
    assert await opens(c, fresh, "amy") == 403
    assert await opens(c, tok["cy"], "bo") == 403


# --- a server's own API token (in its environment, readable by whoever shares it) -----------
async def test_a_named_servers_token_reaches_only_that_server(hub: Any) -> None:
    """amy shares her named server "work" with bo, who can run code there and so read its
    JUPYTERHUB_API_TOKEN. As JupyterHub's "server" role, that token reaches its own server
    only (access:servers!server=amy/work), not amy's other servers."""
    c, tok = await hub()
    await up(c, "amy", tok["amy"])
    p = c.server.app[PARTS]
    amy = await p.store.get_user("amy")
    assert amy is not None
    client = await protocols.register_server(p.store, amy, "work", "/user/amy/work/")
    stolen = client.api_token
    assert await opens(c, stolen, "amy") == 403
    me = await call(c, "GET", "/user", stolen, 200)
    assert me["name"] == "amy"
    assert "access:servers!server=amy/work" in me["scopes"]
    assert not [s for s in me["scopes"] if s.startswith("access:servers!user")]
    # visitors' OAuth tokens still need only one of the two (JupyterHub's access scopes)
    assert client.access_scopes == ["access:servers!server=amy/work", "access:servers!user=amy"]


async def test_the_default_servers_token_is_not_reported_as_reaching_the_named_ones(
    hub: Any,
) -> None:
    """The same for amy's default server: `GET /hub/api/user` with its token must not say
    access:servers!user=amy, which jupyterhub-singleuser on amy's named servers accepts; amy's
    own token, which reaches all her servers, says both."""
    c, tok = await hub()
    p = c.server.app[PARTS]
    amy = await p.store.get_user("amy")
    assert amy is not None
    client = await protocols.register_server(p.store, amy, "", "/user/amy/")
    me = await call(c, "GET", "/user", client.api_token, 200)
    assert "access:servers!server=amy/" in me["scopes"]
    assert not [s for s in me["scopes"] if s.startswith("access:servers!user")], me["scopes"]
    own = await call(c, "GET", "/user", tok["amy"], 200)
    assert {"access:servers!server=amy/", "access:servers!user=amy"} <= set(own["scopes"])


# --- a share is filtered to a server: it must not reach what is done to the owner ----------
async def test_a_share_does_not_reach_the_admin_pages_actions_on_its_owner(hub: Any) -> None:
    """adm (an admin) shares her server with cy, a teaching assistant who may open the admin
    page to manage the lab group, with every scope she holds on it: admin:users and
    delete:users filtered to the server adm/ mean nothing (REST reads them so), so cy may
    start and stop adm's server there but not take away adm's admin role or delete her."""
    ta = {"name": "lab-manager", "scopes": ["admin-ui", "groups!group=lab"], "users": ["cy"]}
    c, tok = await hub(roles=(ta,))
    scopes = ["admin:users", "delete:users", "servers"]
    await call(c, "POST", "/shares/adm/", tok["adm"], 200, {"user": "cy", "scopes": scopes})
    await call(c, "PATCH", "/users/adm", tok["cy"], 403, {"admin": False})
    assert (await login(c, "cy", PASSWORD)).status == 302
    for action in ("remove-admin", "delete"):
        r = await c.post(
            f"/hub/admin/users/adm/{action}", data={"_xsrf": xsrf_of(c)}, allow_redirects=False
        )
        assert r.status == 403, (action, r.status)
    assert (await call(c, "GET", "/users/adm", tok["adm"], 200))["admin"] is True
    r = await c.post(
        "/hub/admin/users/adm/start", data={"_xsrf": xsrf_of(c)}, allow_redirects=False
    )
    assert r.status == 302  # the server's own actions: shared, so allowed


# --- ..%2F: the browser's path and the hub's route must name the same server --------------
async def test_an_encoded_slash_cannot_carry_one_servers_cookies_to_another(hub: Any) -> None:
    """bo may open amy's server (a share). A link to /user/bo/..%2Famy/x is, for a browser,
    under /user/bo/ (it sends the cookies of bo's own server's URL space, such as
    jupyterhub-singleuser's OAuth cookie), while the hub's route normalises it to amy's
    server. So such a path is never forwarded: a GET is redirected to the canonical path
    (where the browser sends /user/amy/'s cookies), anything else is refused."""
    from yarl import URL

    c, tok = await hub()
    await call(c, "POST", "/shares/amy/", tok["amy"], 200, {"user": "bo"})
    await up(c, "amy", tok["amy"])
    for raw in ("/user/bo/..%2Famy/api/x?q=1", "/user/bo/%2E%2E/amy/api/x?q=1"):
        url = c.make_url("").join(URL(raw, encoded=True))
        r = await c.session.get(url, headers=h(tok["bo"]), allow_redirects=False)
        assert r.status == 302 and r.headers["Location"] == "/user/amy/api/x?q=1", raw
        r = await c.session.post(url, headers=h(tok["bo"]), allow_redirects=False)
        assert r.status == 400 and "canonical" in (await r.json())["message"], raw
        ws = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        }
        r = await c.session.get(url, headers={**h(tok["bo"]), **ws}, allow_redirects=False)
        assert r.status == 400, raw
    # the same under /services/, and runs of / are left alone (no browser reads them apart)
    url = c.make_url("").join(URL("/services/a/..%2Fb/", encoded=True))
    r = await c.session.get(url, allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "/services/b/"
    # a client that encodes a file path's slashes too (%2F, no dot segment) is forwarded
    for raw in ("/user/amy//api/x", "/user/amy/api%2Fx"):
        url = c.make_url("").join(URL(raw, encoded=True))
        r = await c.session.get(url, headers=h(tok["bo"]), allow_redirects=False)
        assert r.status == 200, raw


# --- OAuth clients of servers: one per server, reaching that server only -------------------
async def test_servers_oauth_clients_never_collide_and_reach_their_own_server(hub: Any) -> None:
    """JupyterHub's client ids make amy's named server "lab" and the user amy-lab's default
    server both jupyterhub-user-amy-lab: the second would take over the first's client
    (redirect URI, secret, owner), breaking its logins. And a token made for one server's
    client must not carry access to the owner's other servers."""
    c, tok = await hub()
    p = c.server.app[PARTS]
    await new_user(c, tok["adm"], "amy-lab")
    amy, amy_lab = await p.store.get_user("amy"), await p.store.get_user("amy-lab")
    assert amy is not None and amy_lab is not None
    lab = await protocols.register_server(p.store, amy, "lab", "/user/amy/lab/")
    other = await protocols.register_server(p.store, amy_lab, "", "/user/amy-lab/")
    assert lab.client_id == "jupyterhub-user-amy-lab" and other.client_id != lab.client_id
    kept = await p.store.get_oauth_client(lab.client_id)
    assert kept is not None and kept.user_id == amy.id
    assert kept.redirect_uri == "/user/amy/lab/oauth_callback"
    assert kept.allowed_scopes == ["identify", "access:servers!server=amy/lab"]
    # started again, each keeps its own id
    again = await protocols.register_server(p.store, amy_lab, "", "/user/amy-lab/")
    assert again.client_id == other.client_id
    assert (await protocols.register_server(p.store, amy, "lab", "/user/amy/lab/")).client_id == (
        lab.client_id
    )


# --- what one user can make the hub keep ----------------------------------------------------
async def test_a_user_cannot_make_the_hub_keep_without_bound(
    hub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every API token is a row the hub keeps and lists in one pass; every server's
    user_options are kept with it, stored and put in every model. Both are bounded, with a
    message saying what to do."""
    from minihub import users

    monkeypatch.setattr(users, "MAX_TOKENS", 3)
    c, tok = await hub()
    made = [await call(c, "POST", "/users/amy/tokens", tok["amy"], 201) for _ in range(2)]
    # amy's login token from the fixture is the third
    r = await c.post("/hub/api/users/amy/tokens", headers=h(tok["amy"]), json={})
    assert r.status == 400 and "delete some first" in (await r.json())["message"]
    await call(c, "DELETE", f"/users/amy/tokens/{made[0]['id']}", tok["amy"], 204)
    await call(c, "POST", "/users/amy/tokens", tok["amy"], 201)

    big = {"a": [[] for _ in range(40_000)]}  # ~160 KiB of JSON, under the body limit
    r = await c.post("/hub/api/users/amy/server", headers=h(tok["amy"]), json=big)
    assert r.status == 400 and "user_options" in (await r.json())["message"]
    assert (await call(c, "GET", "/users/amy", tok["amy"], 200))["servers"] == {}
