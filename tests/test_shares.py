"""Sharing (issue 15), JupyterHub 5's REST API: /hub/api/shares, /share-codes, the
shared-with listings and /hub/accept-share.

REST shapes and codes against the real hub app with the FakeSpawner (seconds, no root);
who may open what through /user/ against a real hub process with real servers."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import ROOT, hub_config, hub_log_faults, login, needs_root, xsrf_of

from minihub import servers as servers_mod
from minihub.access import db as access_db
from minihub.app import make_app
from minihub.auth.native import NativeAuthenticator
from minihub.context import PARTS
from minihub.spawner.fake import FakeSpawner
from minihub.store import Store
from minihub.users import create, new_token

PASSWORD = "share-test-password"
NAMES = ("amy", "bo", "cy", "adm")
# JupyterHub's "full sharing API" role (docs/source/reference/sharing.md)
SHARING_ROLE = {
    "name": "user",
    "scopes": ["self", "shares!user", "read:users:name", "read:groups:name"],
}
LAB = {"name": "lab", "users": ["bo"]}


@pytest.fixture(autouse=True)
def quick_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers_mod, "SLOW_SPAWN", 0.1)
    monkeypatch.setattr(servers_mod, "POLL_EVERY", 3600.0)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSpawner]:
    f = FakeSpawner()
    yield f
    await f.shutdown()


Hub = Callable[..., Awaitable[tuple[TestClient, dict[str, str]]]]


@pytest.fixture
async def hub(data_dir: str, fake: FakeSpawner) -> AsyncIterator[Hub]:
    """hub(roles=[...]) -> (client, {name: token}); every user logs in with PASSWORD, adm is
    an admin. Each call is a new hub app on the same data dir: a restart."""
    clients: list[TestClient] = []

    async def make(
        roles: list[dict[str, Any]] | None = None, **settings: Any
    ) -> tuple[TestClient, dict[str, str]]:
        cfg = hub_config(
            data_dir, auth__authenticator="native", hub__allow_named_servers=True, **settings
        )
        cfg = replace(cfg, roles=[SHARING_ROLE] if roles is None else roles, groups=[LAB])
        tokens = await _users(cfg)
        c = TestClient(TestServer(make_app(cfg, spawner=fake)))
        await c.start_server()
        clients.append(c)
        return c, tokens

    yield make
    for c in clients:
        await c.close()


async def _users(cfg: Any) -> dict[str, str]:
    store = await Store.open(cfg.data_dir / "minihub.sqlite")
    try:
        out = {}
        for n in NAMES:
            user = await store.get_user(n) or await create(
                store, NativeAuthenticator(cfg, store), n, password=PASSWORD
            )
            if n == "adm":
                await access_db.assign_role(store, "admin", n)
            out[n] = (await new_token(store, user, "test"))[0]
        return out
    finally:
        await store.close()


def h(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


async def call(
    c: TestClient, method: str, path: str, tok: str, status: int, json: Any = None
) -> Any:
    r = await c.request(method, "/hub/api" + path, headers=h(tok), json=json)
    text = await r.text()
    assert r.status == status, f"{method} {path}: {r.status} {text}"
    if status == 204 or not text:
        return None
    body = await r.json()
    if status >= 400:
        assert set(body) == {"status", "message"} and body["status"] == status
    return body


def iso_ok(text: str | None) -> bool:
    return bool(text) and re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$", text) is not None


# --- REST: shapes and codes ------------------------------------------------------------------
async def test_share_grant_list_revoke_shapes(hub: Hub) -> None:
    c, tok = await hub()
    amy, bo = tok["amy"], tok["bo"]
    share = await call(c, "POST", "/shares/amy/", amy, 200, {"user": "bo"})
    assert share == {
        "server": {
            "name": "",
            "user": {"name": "amy"},
            "url": "/user/amy/",
            "full_url": None,
            "ready": False,
        },
        "scopes": ["access:servers!server=amy/"],
        "user": {"name": "bo"},
        "group": None,
        "kind": "user",
        "created_at": share["created_at"],
    }
    assert iso_ok(share["created_at"])
    listing = await call(c, "GET", "/shares/amy/", amy, 200)
    assert listing == {
        "items": [share],
        "_pagination": {"offset": 0, "limit": 200, "total": 1, "next": None},
    }
    assert (await call(c, "GET", "/shares/amy", amy, 200))["items"] == [share]
    mine = await call(c, "GET", "/users/bo/shared", bo, 200)
    assert mine["items"] == [share]
    assert await call(c, "GET", "/users/bo/shared/amy/", bo, 200) == share
    # granting more extends the share (JupyterHub's Share.grant)
    more = await call(
        c, "POST", "/shares/amy/", amy, 200, {"user": "bo", "scopes": ["read:servers"]}
    )
    assert more["scopes"] == ["access:servers!server=amy/", "read:servers!server=amy/"]
    assert more["created_at"]
    # others may not look or change; only GET on /shares/{owner}
    await call(c, "GET", "/shares/amy/", bo, 403)
    await call(c, "POST", "/shares/amy/", bo, 403, {"user": "cy"})
    await call(c, "GET", "/users/bo/shared", tok["cy"], 403)
    for method in ("POST", "PATCH", "DELETE"):
        await call(c, method, "/shares/amy", amy, 405, {"user": "bo"})
    # PATCH takes away the named scopes; the share goes when none are left
    less = await call(
        c, "PATCH", "/shares/amy/", amy, 200, {"user": "bo", "scopes": ["read:servers"]}
    )
    assert less["scopes"] == ["access:servers!server=amy/"]
    assert await call(c, "PATCH", "/shares/amy/", amy, 200, {"user": "bo"}) == {}
    assert (await call(c, "GET", "/shares/amy/", amy, 200))["items"] == []
    assert await call(c, "PATCH", "/shares/amy/", amy, 200, {"user": "bo"}) == {}
    assert await call(c, "PATCH", "/shares/amy/", amy, 200, {"user": "nobody"}) == {}
    await call(c, "GET", "/users/bo/shared/amy/", bo, 404)
    # DELETE revokes every share of the server
    await call(c, "POST", "/shares/amy/", amy, 200, {"user": "bo"})
    await call(c, "POST", "/shares/amy/", amy, 200, {"group": "lab"})
    await call(c, "DELETE", "/shares/amy/", amy, 204)
    assert (await call(c, "GET", "/shares/amy", amy, 200))["items"] == []


async def test_share_requests_refused_as_jupyterhub(hub: Hub) -> None:
    c, tok = await hub()
    amy = tok["amy"]
    bad = {
        "both": {"user": "bo", "group": "lab"},
        "neither": {"scopes": ["access:servers"]},
        "unknown field": {"user": "bo", "expires_in": 60},
        "other filter": {"user": "bo", "scopes": ["access:servers!user=amy"]},
        "other server": {"user": "bo", "scopes": ["access:servers!server=cy/"]},
        "unknown scope": {"user": "bo", "scopes": ["read:everything"]},
        "no such user": {"user": "nobody"},
        "no such group": {"group": "nogroup"},
        "the owner": {"user": "amy"},
    }
    for what, body in bad.items():
        r = await call(c, "POST", "/shares/amy/", amy, 400, body)
        assert r["message"], what
    # a scope the owner does not hold is not hers to share, even for an admin
    await call(c, "POST", "/shares/amy/", amy, 403, {"user": "bo", "scopes": ["admin:users"]})
    await call(c, "POST", "/shares/amy/", tok["adm"], 403, {"user": "bo"})
    # a named server that does not exist; an owner who does not exist
    await call(c, "POST", "/shares/amy/nope", amy, 404, {"user": "bo"})
    await call(c, "GET", "/shares/amy/nope", amy, 404)
    await call(c, "DELETE", "/shares/amy/nope", amy, 404)
    await call(c, "GET", "/shares/ghost", tok["adm"], 404)
    await call(c, "GET", "/users/ghost/shared", tok["adm"], 404)
    await call(c, "GET", "/groups/nogroup/shared", tok["adm"], 404)


async def test_sharing_needs_the_operators_role(hub: Hub) -> None:
    """As JupyterHub: users do not hold `shares` on their own servers unless a role gives
    it; without read:users:name a share code is the only way to share."""
    c, tok = await hub(roles=[])
    r = await call(c, "POST", "/shares/amy/", tok["amy"], 403, {"user": "bo"})
    assert "shares" in r["message"]
    await call(c, "POST", "/share-codes/amy/", tok["amy"], 403, {})
    assert (await call(c, "GET", "/shares/amy/", tok["amy"], 200))["items"] == []
    await c.close()
    c, tok = await hub(roles=[{"name": "user", "scopes": ["self", "shares!user"]}])
    r = await call(c, "POST", "/shares/amy/", tok["amy"], 403, {"user": "bo"})
    assert r["message"] == "Need scope 'read:users:name' to share with users by name"
    await call(c, "POST", "/shares/amy/", tok["amy"], 403, {"group": "lab"})
    code = await call(c, "POST", "/share-codes/amy/", tok["amy"], 200, {})
    assert code["code"]


async def test_group_share_listings_and_leaving(hub: Hub) -> None:
    c, tok = await hub()
    adm = tok["adm"]
    share = await call(c, "POST", "/shares/amy/", tok["amy"], 200, {"group": "lab"})
    assert share["group"] == {"name": "lab"} and share["user"] is None
    assert share["kind"] == "group"
    assert (await call(c, "GET", "/groups/lab/shared", adm, 200))["items"] == [share]
    assert await call(c, "GET", "/groups/lab/shared/amy/", adm, 200) == share
    await call(c, "GET", "/groups/lab/shared", tok["bo"], 403)  # read:groups:shares
    # a member sees it among the servers shared with them; a non-member does not
    assert (await call(c, "GET", "/users/bo/shared", tok["bo"], 200))["items"] == [share]
    assert (await call(c, "GET", "/users/cy/shared", tok["cy"], 200))["items"] == []
    # a member cannot leave for the whole group; the group's DELETE can
    await call(c, "DELETE", "/users/bo/shared/amy/", tok["bo"], 404)
    await call(c, "DELETE", "/groups/lab/shared/amy/", tok["bo"], 403)
    await call(c, "DELETE", "/groups/lab/shared/amy/", adm, 204)
    await call(c, "GET", "/groups/lab/shared/amy/", adm, 404)
    # a user leaves a share made with them
    await call(c, "POST", "/shares/amy/", tok["amy"], 200, {"user": "bo"})
    await call(c, "DELETE", "/users/bo/shared/amy/", tok["cy"], 403)
    await call(c, "DELETE", "/users/bo/shared/amy/", tok["bo"], 204)
    assert (await call(c, "GET", "/shares/amy/", tok["amy"], 200))["items"] == []


async def test_named_servers_shares_and_removal(hub: Hub, fake: FakeSpawner) -> None:
    c, tok = await hub()
    amy = tok["amy"]
    r = await c.post("/hub/api/users/amy/servers/work", headers=h(amy))
    assert r.status in (201, 202), await r.text()
    share = await call(c, "POST", "/shares/amy/work", amy, 200, {"user": "bo"})
    assert share["server"]["name"] == "work" and share["server"]["url"] == "/user/amy/work/"
    assert share["scopes"] == ["access:servers!server=amy/work"]
    await call(c, "POST", "/share-codes/amy/work", amy, 200, {})
    await call(c, "POST", "/shares/amy/", amy, 200, {"user": "cy"})
    assert len((await call(c, "GET", "/shares/amy", amy, 200))["items"]) == 2
    assert await call(c, "GET", "/users/bo/shared/amy/work", tok["bo"], 200) == share
    # removing the server takes its shares and codes with it, and only its own
    r = await c.delete("/hub/api/users/amy/servers/work", headers=h(amy), json={"remove": True})
    assert r.status in (202, 204)
    left = (await call(c, "GET", "/shares/amy", amy, 200))["items"]
    assert [s["user"]["name"] for s in left] == ["cy"]
    assert (await call(c, "GET", "/share-codes/amy", amy, 200))["items"] == []
    await call(c, "GET", "/shares/amy/work", amy, 404)


async def test_share_codes_rest(hub: Hub) -> None:
    c, tok = await hub()
    amy = tok["amy"]
    before = time.time()
    made = await call(c, "POST", "/share-codes/amy/", amy, 200, {})
    code = made.pop("code")
    assert made["accept_url"] == f"/hub/accept-share#code={code}"  # never sent by browsers
    assert made.pop("full_accept_url") is None and made.pop("accept_url")
    assert made["id"].startswith("sc_") and made["scopes"] == ["access:servers!server=amy/"]
    assert made["exchange_count"] == 0 and made["last_exchanged_at"] is None
    assert made["server"]["user"] == {"name": "amy"}
    expires = time.mktime(time.strptime(made["expires_at"][:19], "%Y-%m-%dT%H:%M:%S"))
    expires -= time.timezone  # mktime took it as local time
    assert before + 86400 - 5 <= expires <= time.time() + 86400 + 5  # JupyterHub's default
    # the hub keeps the hash only: listings never show the code
    listing = await call(c, "GET", "/share-codes/amy/", amy, 200)
    assert listing["items"] == [made] and listing["_pagination"]["total"] == 1
    assert (await call(c, "GET", "/share-codes/amy", amy, 200))["items"] == [made]
    db = sqlite3.connect(str(Path(c.server.app[PARTS].cfg.data_dir) / "minihub.sqlite"))
    assert code not in str(db.execute("SELECT * FROM share_codes").fetchall())
    db.close()
    for bad in (59, 525600 * 60 + 1, 90.5, "soon"):
        await call(c, "POST", "/share-codes/amy/", amy, 400, {"expires_in": bad})
    await call(c, "POST", "/share-codes/amy/", amy, 400, {"scopes": ["read:users!user=amy"]})
    await call(c, "POST", "/share-codes/amy/", tok["bo"], 403, {})
    await call(c, "GET", "/share-codes/amy/", tok["bo"], 403)
    await call(c, "POST", "/share-codes/amy", amy, 405, {})
    week = await call(c, "POST", "/share-codes/amy/", amy, 200, {"expires_in": 604800})
    third = await call(c, "POST", "/share-codes/amy/", amy, 200, {"expires_in": 60})
    # revoke one by code, one by id, then all
    await call(c, "DELETE", f"/share-codes/amy/?code={code}", amy, 204)
    await call(c, "DELETE", f"/share-codes/amy/?code={code}", amy, 404)
    await call(c, "DELETE", f"/share-codes/amy/?id={week['id']}", amy, 204)
    await call(c, "DELETE", f"/share-codes/amy/?id={week['id']}", amy, 404)
    await call(c, "DELETE", "/share-codes/amy/?id=x1", amy, 404)
    left = (await call(c, "GET", "/share-codes/amy/", amy, 200))["items"]
    assert [x["id"] for x in left] == [third["id"]]
    await call(c, "DELETE", "/share-codes/amy/", amy, 204)
    assert (await call(c, "GET", "/share-codes/amy/", amy, 200))["items"] == []


async def test_pagination(hub: Hub) -> None:
    c, tok = await hub()
    for name in ("bo", "cy", "adm"):
        await call(c, "POST", "/shares/amy/", tok["amy"], 200, {"user": name})
    r = await c.get(
        "/hub/api/shares/amy/?limit=2",
        headers={**h(tok["amy"]), "Accept": "application/jupyterhub-pagination+json"},
    )
    page = await r.json()
    assert [s["user"]["name"] for s in page["items"]] == ["bo", "cy"]
    nxt = page["_pagination"]["next"]
    assert page["_pagination"]["total"] == 3 and (nxt["offset"], nxt["limit"]) == (2, 2)
    rest = await call(c, "GET", "/shares/amy/?offset=2&limit=2", tok["amy"], 200)
    assert [s["user"]["name"] for s in rest["items"]] == ["adm"]
    await call(c, "GET", "/shares/amy/?limit=many", tok["amy"], 400)


# --- /hub/accept-share ------------------------------------------------------------------------
async def test_accept_share_page(hub: Hub, fake: FakeSpawner) -> None:
    c, tok = await hub()
    made = await call(c, "POST", "/share-codes/amy/", tok["amy"], 200, {})
    code = made["code"]
    # the code is in the fragment: the request carries none; logged out, the page's script
    # keeps it in the tab and sends the browser to log in, then back here
    r = await c.get(made["accept_url"], allow_redirects=False)
    page = await r.text()
    assert r.status == 200 and 'data-logged-in="0"' in page and code not in page
    assert 'data-login="/hub/login?next=%2Fhub%2Faccept-share"' in page
    assert (await login(c, "bo", PASSWORD)).status == 302
    r = await c.get(made["accept_url"])
    assert r.status == 200 and 'data-logged-in="1"' in await r.text()
    # what the script posts: the preview, then the accept
    r = await c.post("/hub/accept-share", data={"code": code, "_xsrf": xsrf_of(c), "preview": "1"})
    page = await r.text()
    assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
    assert "amy shares a server with you" in page and 'id="accept"' in page
    # JupyterHub's links carry the code in the query: shown at once
    r = await c.get(f"/hub/accept-share?code={code}")
    assert r.status == 200 and "amy shares a server with you" in await r.text()
    # the form needs its _xsrf
    r = await c.post("/hub/accept-share", data={"code": code}, allow_redirects=False)
    assert r.status == 403
    r = await c.post(
        "/hub/accept-share", data={"code": code, "_xsrf": xsrf_of(c)}, allow_redirects=False
    )
    assert r.status == 302 and r.headers["Location"] == "/user/amy/"
    mine = await call(c, "GET", "/users/bo/shared", tok["bo"], 200)
    assert [s["scopes"] for s in mine["items"]] == [["access:servers!server=amy/"]]
    codes = (await call(c, "GET", "/share-codes/amy/", tok["amy"], 200))["items"]
    assert codes[0]["exchange_count"] == 1 and iso_ok(codes[0]["last_exchanged_at"])
    # a code can be used again until it expires (JupyterHub); accepting twice is one share
    r = await c.post(
        "/hub/accept-share", data={"code": code, "_xsrf": xsrf_of(c)}, allow_redirects=False
    )
    assert r.status == 302
    assert len((await call(c, "GET", "/shares/amy/", tok["amy"], 200))["items"]) == 1
    # unknown, revoked and expired codes say so
    r = await c.get("/hub/accept-share?code=not-a-code")
    assert r.status == 404 and "unknown, has expired or was revoked" in await r.text()
    r = await c.post(
        "/hub/accept-share", data={"code": "nope", "_xsrf": xsrf_of(c)}, allow_redirects=False
    )
    assert r.status == 400
    old = await call(c, "POST", "/share-codes/amy/", tok["amy"], 200, {"expires_in": 60})
    await c.server.app[PARTS].store._write(
        "UPDATE share_codes SET expires = ? WHERE id = ?", time.time() - 1, int(old["id"][3:])
    )
    r = await c.post(
        "/hub/accept-share", data={"code": old["code"], "_xsrf": xsrf_of(c), "preview": "1"}
    )
    assert r.status == 404 and "expired" in await r.text()
    r = await c.post(
        "/hub/accept-share",
        data={"code": old["code"], "_xsrf": xsrf_of(c)},
        allow_redirects=False,
    )
    assert r.status == 400
    # the owner's own link
    c.session.cookie_jar.clear()
    assert (await login(c, "amy", PASSWORD)).status == 302
    r = await c.post("/hub/accept-share", data={"code": code, "_xsrf": xsrf_of(c), "preview": "1"})
    assert r.status == 403 and "your own server" in await r.text()
    r = await c.post(
        "/hub/accept-share", data={"code": code, "_xsrf": xsrf_of(c)}, allow_redirects=False
    )
    assert r.status == 400


async def test_home_page_sharing(hub: Hub) -> None:
    c, tok = await hub()
    await call(c, "POST", "/shares/amy/", tok["amy"], 200, {"user": "bo"})
    await call(c, "POST", "/shares/cy/", tok["cy"], 200, {"group": "lab"})
    assert (await login(c, "bo", PASSWORD, next="/hub/home")).status == 302
    page = await (await c.get("/hub/home")).text()
    assert 'id="share-dialog"' in page and 'class="share-open" data-server=""' in page
    assert 'id="shared-with-me"' in page
    rows = re.findall(r'<tr data-owner="(\w+)" data-server="(\w*)">', page)
    assert rows == [("amy", ""), ("cy", "")]
    assert "through the group lab" in page
    assert "/hub/static/share.js" in page
    assert (await c.get("/hub/static/share.js")).status == 200
    # without `shares` there is no Share button (and no one shared anything with amy)
    await c.close()
    c, tok = await hub(roles=[])
    assert (await login(c, "amy", PASSWORD, next="/hub/home")).status == 302
    page = await (await c.get("/hub/home")).text()
    assert 'id="share-dialog"' not in page and 'id="shared-with-me"' not in page


async def test_shares_survive_restart_and_go_with_users(hub: Hub) -> None:
    c, tok = await hub()
    await call(c, "POST", "/shares/amy/", tok["amy"], 200, {"user": "bo"})
    await call(c, "POST", "/shares/amy/", tok["amy"], 200, {"group": "lab"})
    code = await call(c, "POST", "/share-codes/amy/", tok["amy"], 200, {})
    await c.close()
    c, tok = await hub()
    items = (await call(c, "GET", "/shares/amy/", tok["amy"], 200))["items"]
    assert [(s["kind"], (s["user"] or s["group"])["name"]) for s in items] == [
        ("user", "bo"),
        ("group", "lab"),
    ]
    assert (await call(c, "GET", "/share-codes/amy/", tok["amy"], 200))["items"][0]["id"] == (
        code["id"]
    )
    # deleting the grantee takes their share; deleting the owner takes the rest
    await call(c, "DELETE", "/users/bo", tok["adm"], 204)
    items = (await call(c, "GET", "/shares/amy/", tok["amy"], 200))["items"]
    assert [s["kind"] for s in items] == ["group"]
    await call(c, "DELETE", "/users/amy", tok["adm"], 204)
    assert (await call(c, "GET", "/groups/lab/shared", tok["adm"], 200))["items"] == []


# --- a real hub process, real servers: who may open alice's server through /user/ ----------
SHARING_TOML = """
[[roles]]
name = "user"
scopes = ["self", "shares!user", "read:users:name", "read:groups:name"]

[[groups]]
name = "lab"
users = ["{member}"]
"""


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory, make_system_user: Any) -> Iterator[Any]:
    from test_named_servers import make_hub

    if not ROOT:
        pytest.skip("needs root to create system users")
    people = {k: make_system_user(f"mhsh_{k}").name for k in ("alice", "bob", "carol")}
    hub = make_hub(
        tmp_path_factory.mktemp("shares"),
        list(people.values()),
        SHARING_TOML.format(member=people["bob"]),
    )
    hub.people = people
    try:
        yield hub
    finally:
        hub.stop()
    assert not hub_log_faults(hub.log)


async def status_of(s: aiohttp.ClientSession, url: str) -> int:
    async with s.get(url, allow_redirects=False) as r:
        return r.status


@needs_root
async def test_a_share_opens_the_server_and_revoking_closes_it(real: Any) -> None:
    from test_named_servers import start

    alice, bob, carol = (real.people[k] for k in ("alice", "bob", "carol"))
    status = f"{real.base}/user/{alice}/api/status"
    shares = f"{real.api}/shares/{alice}/"
    async with real.session(alice) as a, real.session(bob) as b, real.session(carol) as c:
        await start(a, real, alice, "")
        assert await status_of(a, status) == 200
        assert await status_of(b, status) == 403
        r = await a.post(shares, json={"user": bob})
        assert r.status == 200, await r.text()
        assert (await r.json())["server"]["ready"] is True
        assert await status_of(b, status) == 200
        # bob runs a kernel there and keeps its websocket open
        r = await b.post(f"{real.base}/user/{alice}/api/kernels", json={})
        assert r.status == 201, await r.text()
        kernel = (await r.json())["id"]
        ws = await b.ws_connect(f"{real.base}/user/{alice}/api/kernels/{kernel}/channels")
        # revoked: the very next request is refused, and the open websocket is closed
        r = await a.patch(shares, json={"user": bob})
        assert r.status == 200 and await r.json() == {}
        assert await status_of(b, status) == 403
        async with asyncio.timeout(10):
            while (await ws.receive()).type not in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.CLOSING,
            ):
                pass
        await ws.close()
        # a group share reaches its member (bob) and not carol
        r = await a.post(shares, json={"group": "lab"})
        assert r.status == 200, await r.text()
        assert await status_of(b, status) == 200
        assert await status_of(c, status) == 403
        r = await b.get(f"{real.api}/users/{bob}/shared")
        assert [x["group"] for x in (await r.json())["items"]] == [{"name": "lab"}]
        # bob may not pass it on: he holds no `shares` on alice's server
        r = await b.post(shares, json={"user": carol})
        assert r.status == 403
        r = await a.post(shares, json={"user": carol})
        assert r.status == 200
        assert await status_of(c, status) == 200

    # the shares outlive a hub restart (the server is re-adopted)
    real.stop()
    real.restart()
    async with real.session(alice) as a, real.session(bob) as b, real.session(carol) as c:
        assert await status_of(b, status) == 200
        assert await status_of(c, status) == 200
        r = await a.get(shares)
        assert sorted(x["kind"] for x in (await r.json())["items"]) == ["group", "user"]
        r = await a.delete(shares)
        assert r.status == 204
        assert await status_of(b, status) == 403
        assert await status_of(c, status) == 403
