"""Groups: JupyterHub's /hub/api/groups paths, codes and shapes, group-filtered scopes,
[[groups]] across restarts, and [auth] manage_groups from real Unix groups (PAM) and a real
OpenID Connect provider's groups claim."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import test_oauth_oidc as oidc
from aiohttp.test_utils import TestClient, TestServer
from conftest import hub_config, login, needs_root, xsrf_of

from minihub.app import make_app
from minihub.auth.native import NativeAuthenticator
from minihub.config import Config
from minihub.errors import StartupError
from minihub.store import Store
from minihub.users import create, new_token

PAGINATION = "application/jupyterhub-pagination+json"
# The OpenID Connect provider's fixtures, for this module's own provider (module-scoped).
accounts, browser, hub_port = oidc.accounts, oidc.browser, oidc.hub_port
provider, start_hub = oidc.provider, oidc.start_hub


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


async def seed(
    cfg: Config, names: dict[str, bool], scoped: dict[str, tuple[str, list[str]]] | None = None
) -> dict[str, str]:
    """Users (name -> admin) with a token each; `scoped`: token label -> (owner, scopes)."""
    store = await Store.open(cfg.data_dir / "minihub.sqlite")
    tokens, made = {}, {}
    for name, admin in names.items():
        made[name] = await create(store, NativeAuthenticator(cfg, store), name, admin)
        tokens[name] = (await new_token(store, made[name], "test"))[0]
    for label, (owner, scopes) in (scoped or {}).items():
        tokens[label] = (await new_token(store, made[owner], "test", scopes))[0]
    await store.close()
    return tokens


@pytest.fixture
async def hub(data_dir: str) -> AsyncIterator[Callable[..., Any]]:
    """start(cfg) -> a TestClient on a fresh app; every one is closed at the end."""
    clients: list[TestClient[Any, Any]] = []

    async def start(cfg: Config) -> TestClient[Any, Any]:
        c: TestClient[Any, Any] = TestClient(TestServer(make_app(cfg)))
        await c.start_server()
        clients.append(c)
        return c

    yield start
    for c in clients:
        await c.close()


async def status(r: Any, want: int) -> Any:
    body = await r.json() if r.status != 204 else None
    assert r.status == want, body
    if want >= 400:
        assert body["status"] == want and isinstance(body["message"], str)
    return body


# --- the REST API ---------------------------------------------------------------------------
async def test_every_group_path_with_jupyterhubs_codes_and_shapes(hub, data_dir):
    cfg = hub_config(data_dir, auth__authenticator="native")
    tok = await seed(cfg, {"boss": True, "amy": False, "ben": False, "cat": False})
    c = await hub(cfg)
    h = auth(tok["boss"])
    assert await status(await c.get("/hub/api/groups", headers=h), 200) == []

    # POST /groups/{name}: 201 with the model, 409 if it exists, unknown users 400 by name
    g = await status(await c.post("/hub/api/groups/cs 101", headers=h), 201)
    assert g == {"kind": "group", "name": "cs 101", "roles": [], "users": [], "properties": {}}
    await status(await c.post("/hub/api/groups/cs%20101", headers=h), 409)
    r = await c.post("/hub/api/groups/lab", headers=h, json={"users": ["amy", "zed", "yul"]})
    msg = (await status(r, 400))["message"]
    assert "zed" in msg and "yul" in msg and "amy" not in msg
    assert (await c.get("/hub/api/groups/lab", headers=h)).status == 404  # nothing made
    g = await status(await c.post("/hub/api/groups/lab", headers=h, json={"users": ["AMY"]}), 201)
    assert g["users"] == ["amy"]

    # POST /groups: several at once, all or none
    r = await c.post("/hub/api/groups", headers=h, json={"groups": ["g1", "g2"], "users": ["ben"]})
    made = await status(r, 201)
    assert [(x["name"], x["users"]) for x in made] == [("g1", ["ben"]), ("g2", ["ben"])]
    r = await c.post("/hub/api/groups", headers=h, json={"groups": ["g3", "g1"]})
    await status(r, 409)
    assert (await c.get("/hub/api/groups/g3", headers=h)).status == 404
    await status(await c.post("/hub/api/groups", headers=h, json={}), 400)
    await status(await c.post("/hub/api/groups", headers=h, json={"groups": ["a/b"]}), 400)

    # GET /groups: oldest first, offset/limit, the pagination envelope when asked for
    names = [x["name"] for x in await status(await c.get("/hub/api/groups", headers=h), 200)]
    assert names == ["cs 101", "lab", "g1", "g2"]
    r = await c.get("/hub/api/groups?offset=1&limit=2", headers=h)
    assert [x["name"] for x in await status(r, 200)] == ["lab", "g1"]
    r = await c.get("/hub/api/groups?limit=3", headers={**h, "Accept": PAGINATION})
    page = await status(r, 200)
    assert [x["name"] for x in page["items"]] == ["cs 101", "lab", "g1"]
    assert page["_pagination"]["total"] == 4 and page["_pagination"]["next"]["offset"] == 3
    await status(await c.get("/hub/api/groups?limit=x", headers=h), 400)

    # members: 200 with the model; the user model shows the change at once
    r = await c.post("/hub/api/groups/cs%20101/users", headers=h, json={"users": ["amy", "ben"]})
    assert (await status(r, 200))["users"] == ["amy", "ben"]
    r = await c.get("/hub/api/users/amy", headers=h)
    assert (await status(r, 200))["groups"] == ["cs 101", "lab"]
    r = await c.post("/hub/api/groups/cs%20101/users", headers=h, json={"users": ["nobody"]})
    assert "nobody" in (await status(r, 400))["message"]
    await status(await c.post("/hub/api/groups/cs%20101/users", headers=h, json={}), 400)
    await status(await c.post("/hub/api/groups/nope/users", headers=h, json={"users": []}), 404)
    r = await c.delete("/hub/api/groups/cs%20101/users", headers=h, json={"users": ["amy"]})
    assert (await status(r, 200))["users"] == ["ben"]
    r = await c.get("/hub/api/users/amy", headers=h)
    assert (await status(r, 200))["groups"] == ["lab"]
    await status(await c.delete("/hub/api/groups/lab/users", headers=h, json={}), 400)

    # properties: replaced whole, 200 with the model
    r = await c.put("/hub/api/groups/lab/properties", headers=h, json={"room": "B1", "n": 2})
    assert (await status(r, 200))["properties"] == {"room": "B1", "n": 2}
    r = await c.put("/hub/api/groups/lab/properties", headers=h, json={})
    assert (await status(r, 200))["properties"] == {}
    await status(await c.put("/hub/api/groups/lab/properties", headers=h, json=[1]), 400)

    # GET and DELETE /groups/{name}
    g = await status(await c.get("/hub/api/groups/cs%20101", headers=h), 200)
    assert g["users"] == ["ben"] and g["kind"] == "group"
    await status(await c.delete("/hub/api/groups/g2", headers=h), 204)
    await status(await c.delete("/hub/api/groups/g2", headers=h), 404)
    await status(await c.get("/hub/api/groups/g2", headers=h), 404)
    r = await c.get("/hub/api/users/ben", headers=h)
    assert (await status(r, 200))["groups"] == ["cs 101", "g1"]

    # names in URLs: percent-decoded, no '/' and no control characters
    await status(await c.post("/hub/api/groups/a%2Fb", headers=h), 400)
    await status(await c.post("/hub/api/groups/a%01b", headers=h), 400)
    await status(await c.get("/hub/api/groups/%7F", headers=h), 400)

    # an ordinary user: 403 on every path, before any 404
    u = auth(tok["amy"])
    for method, path in [
        ("GET", "/hub/api/groups"),
        ("POST", "/hub/api/groups"),
        ("GET", "/hub/api/groups/lab"),
        ("GET", "/hub/api/groups/nope"),
        ("POST", "/hub/api/groups/new"),
        ("DELETE", "/hub/api/groups/lab"),
        ("POST", "/hub/api/groups/lab/users"),
        ("DELETE", "/hub/api/groups/lab/users"),
        ("PUT", "/hub/api/groups/lab/properties"),
    ]:
        r = await c.request(method, path, headers=u, json={"users": ["amy"], "groups": ["x"]})
        await status(r, 403)
    await status(await c.get("/hub/api/groups"), 403)  # anonymous


async def test_group_filters_scope_what_a_role_and_a_token_may_do(hub, data_dir):
    cfg = hub_config(data_dir, auth__authenticator="native")
    cfg.roles = [
        {
            "name": "tas",
            "scopes": ["groups!group=x", "read:roles:groups!group=x"],
            "users": ["tia"],
        },
        {"name": "course", "scopes": ["self"], "groups": ["x"]},
    ]
    tok = await seed(
        cfg,
        {"boss": True, "tia": False, "amy": False, "ben": False},
        {"boss-read-x": ("boss", ["read:groups!group=x"]), "tia-list": ("tia", ["list:groups"])},
    )
    c = await hub(cfg)
    h = auth(tok["boss"])
    for name in ("x", "y"):
        await status(await c.post(f"/hub/api/groups/{name}", headers=h), 201)

    t = auth(tok["tia"])
    r = await c.post("/hub/api/groups/x/users", headers=t, json={"users": ["amy", "ben"]})
    assert (await status(r, 200))["users"] == ["amy", "ben"]
    r = await c.post("/hub/api/groups/y/users", headers=t, json={"users": ["amy"]})
    assert "groups" in (await status(r, 403))["message"]
    r = await c.delete("/hub/api/groups/x/users", headers=t, json={"users": ["ben"]})
    assert (await status(r, 200))["users"] == ["amy"]
    r = await c.put("/hub/api/groups/x/properties", headers=t, json={"week": 3})
    assert (await status(r, 200))["properties"] == {"week": 3}
    await status(await c.put("/hub/api/groups/y/properties", headers=t, json={}), 403)
    await status(await c.delete("/hub/api/groups/x", headers=t), 403)  # no delete:groups
    await status(await c.post("/hub/api/groups/z", headers=t), 403)  # no admin:groups
    await status(await c.get("/hub/api/groups/y", headers=t), 403)
    # the list is filtered to x; roles shown (read:roles:groups), roles list the group's
    listed = await status(await c.get("/hub/api/groups", headers=t), 200)
    assert [g["name"] for g in listed] == ["x"] and listed[0]["roles"] == ["course"]
    # a token of tia's with list:groups holds it only as far as tia does: x, names only
    r = await c.get("/hub/api/groups", headers=auth(tok["tia-list"]))
    assert await status(r, 200) == [{"kind": "group", "name": "x"}]

    # an admin's token narrowed to read:groups!group=x: reads x, nothing else
    n = auth(tok["boss-read-x"])
    g = await status(await c.get("/hub/api/groups/x", headers=n), 200)
    assert set(g) == {"kind", "name", "users", "properties"} and g["users"] == ["amy"]
    await status(await c.get("/hub/api/groups/y", headers=n), 403)
    await status(await c.post("/hub/api/groups/x/users", headers=n, json={"users": []}), 403)
    await status(await c.get("/hub/api/groups", headers=n), 403)

    # the group's role reaches its members at once, and leaves with them
    r = await c.get("/hub/api/users/amy", headers=h)
    assert "course" in (await status(r, 200))["roles"]
    await c.delete("/hub/api/groups/x/users", headers=h, json={"users": ["amy"]})
    r = await c.get("/hub/api/users/amy", headers=h)
    body = await status(r, 200)
    assert "course" not in body["roles"] and body["groups"] == []


async def test_configured_groups_at_start_up_and_across_restarts(hub, data_dir):
    cfg = hub_config(data_dir, auth__authenticator="native")
    cfg.groups = [
        {"name": "class", "users": ["amy", "ben"], "properties": {"room": "B1"}},
        {"name": "staff", "users": ["tia"]},
    ]
    tok = await seed(cfg, {"boss": True})
    c = await hub(cfg)
    h = auth(tok["boss"])
    g = await status(await c.get("/hub/api/groups/class", headers=h), 200)
    assert g["users"] == ["amy", "ben"] and g["properties"] == {"room": "B1"}
    r = await c.get("/hub/api/users/tia", headers=h)  # configured members are made users
    assert (await status(r, 200))["groups"] == ["staff"]
    # changes made through the API: a member more, a new group with its own members
    await c.post("/hub/api/groups/class/users", headers=h, json={"users": ["tia"]})
    await c.post("/hub/api/groups/extra", headers=h, json={"users": ["amy"]})
    await c.close()

    c = await hub(cfg)  # the same config again: configured groups as configured
    g = await status(await c.get("/hub/api/groups/class", headers=h), 200)
    assert g["users"] == ["amy", "ben"] and g["properties"] == {"room": "B1"}
    g = await status(await c.get("/hub/api/groups/extra", headers=h), 200)
    assert g["users"] == ["amy"]  # made through the API: kept as it was
    await c.close()

    cfg.groups = [{"name": "class", "users": ["amy"]}]  # an operator edits minihub.toml
    c = await hub(cfg)
    g = await status(await c.get("/hub/api/groups/class", headers=h), 200)
    assert g["users"] == ["amy"]
    names = [x["name"] for x in await status(await c.get("/hub/api/groups", headers=h), 200)]
    assert set(names) == {"class", "staff", "extra"}  # a group left out is not deleted


def test_manage_groups_and_configured_groups_do_not_mix(data_dir, tmp_path):
    toml = tmp_path / "minihub.toml"
    toml.write_text('[auth]\nmanage_groups = true\n\n[[groups]]\nname = "class"\nusers = []\n')
    with pytest.raises(StartupError, match="manage_groups"):
        from minihub import config

        config.load(toml, {"hub.data_dir": data_dir})


# --- the admin page's group forms: each checked on the group ---------------------------------
async def test_admin_page_group_forms_need_the_scope_on_that_group(hub, data_dir):
    cfg = hub_config(data_dir, auth__authenticator="native")
    cfg.roles = [{"name": "tas", "scopes": ["admin-ui", "groups!group=x"], "users": ["tia"]}]
    tok = await seed(cfg, {"boss": True, "amy": False})
    store = await Store.open(cfg.data_dir / "minihub.sqlite")
    await create(store, NativeAuthenticator(cfg, store), "tia", password="tia-password-1")
    await store.close()
    c = await hub(cfg)
    for name in ("x", "y"):
        await status(await c.post(f"/hub/api/groups/{name}", headers=auth(tok["boss"])), 201)
    assert (await login(c, "tia", "tia-password-1", next="/hub/admin")).status == 302
    page = await (await c.get("/hub/admin")).text()
    assert 'data-group="x"' in page and 'data-group="y"' not in page  # read:groups!group=x
    assert 'id="new-group"' not in page  # no admin:groups
    x = {"_xsrf": xsrf_of(c)}

    r = await c.post("/hub/admin/groups/x/add", data={**x, "users": "amy,\nghost tia"})
    page = await r.text()
    assert r.status == 200 and "Added 2 to x" in page and "ghost" in page
    assert (await status(await c.get("/hub/api/groups/x", headers=auth(tok["boss"])), 200))[
        "users"
    ] == ["amy", "tia"]
    r = await c.post("/hub/admin/groups/x/add", data={**x, "users": "ghost"})
    assert r.status == 400 and "ghost" in await r.text()
    r = await c.post("/hub/admin/groups/x/remove", data={**x, "user": "amy"})
    assert r.status == 200 and "Removed amy from x" in await r.text()
    for path, data in [
        ("/hub/admin/groups/y/add", {"users": "amy"}),
        ("/hub/admin/groups/y/remove", {"user": "amy"}),
        ("/hub/admin/groups/x/delete", {}),
        ("/hub/admin/groups", {"name": "z"}),
    ]:
        r = await c.post(path, data={**x, **data})
        assert r.status == 403, (path, await r.text())
    r = await c.post("/hub/admin/groups/x/add", data={"users": "amy"})  # no _xsrf
    assert r.status == 403
    names = [
        g["name"] for g in await (await c.get("/hub/api/groups", headers=auth(tok["boss"]))).json()
    ]
    assert names == ["x", "y"]
    # a big group lists its first members and links to the users table filtered by it
    many = [f"s{i:02}" for i in range(60)]
    boss = auth(tok["boss"])
    await status(await c.post("/hub/api/users", headers=boss, json={"usernames": many}), 201)
    await status(await c.post("/hub/api/groups/x/users", headers=boss, json={"users": many}), 200)
    page = await (await c.get("/hub/admin")).text()
    assert "Showing 50 of 61" in page and 'href="/hub/admin?group=x"' in page
    assert 'data-member="s49"' in page and 'data-member="s50"' not in page


# --- manage_groups: PAM, real Unix groups ---------------------------------------------------
@pytest.fixture
def unix_groups() -> Iterator[Callable[[str], str]]:
    made: list[str] = []

    def make(name: str) -> str:
        subprocess.run(["groupdel", name], capture_output=True)
        subprocess.run(["groupadd", name], check=True, capture_output=True)
        made.append(name)
        return name

    yield make
    for name in made:
        subprocess.run(["groupdel", "-f", name], capture_output=True)


@needs_root
async def test_pam_logins_mirror_matching_unix_groups(hub, data_dir, make_system_user, unix_groups):
    a, b, other = unix_groups("mhgc_algebra"), unix_groups("mhgc_biology"), unix_groups("mhgx_lab")
    stu = make_system_user("mhg_stu", groups=[a, other])
    cfg = hub_config(
        data_dir,
        auth__authenticator="pam",
        auth__manage_groups=True,
        auth__manage_groups_include=["mhgc_*"],
    )
    store = await Store.open(cfg.data_dir / "minihub.sqlite")
    boss = await store.add_user("mhg_boss")
    tok = (await new_token(store, boss, "test"))[0]
    await store.close()
    cfg.roles = [{"name": "admin", "users": ["mhg_boss"]}]
    c = await hub(cfg)
    h = auth(tok)
    # a group made by hand, with the student in it: the authenticator takes it away
    await status(await c.post("/hub/api/groups/handmade", headers=h), 201)

    r = await login(c, stu.name, stu.password, next="/hub/home")
    assert r.status == 302, await r.text()
    r = await c.get(f"/hub/api/users/{stu.name}", headers=h)
    assert (await status(r, 200))["groups"] == [a]  # mhgx_lab and mhg_stu do not match
    await c.post("/hub/api/groups/handmade/users", headers=h, json={"users": [stu.name]})

    # the student moves from algebra to biology in /etc/group: the next login follows
    await asyncio.to_thread(subprocess.run, ["usermod", "-G", f"{b},{other}", stu.name], check=True)
    c.session.cookie_jar.clear()
    r = await login(c, stu.name, stu.password, next="/hub/home")
    assert r.status == 302
    r = await c.get(f"/hub/api/users/{stu.name}", headers=h)
    assert (await status(r, 200))["groups"] == [b]
    g = await status(await c.get(f"/hub/api/groups/{a}", headers=h), 200)
    assert g["users"] == []  # the group stays, without them
    g = await status(await c.get("/hub/api/groups/handmade", headers=h), 200)
    assert g["users"] == []
    # JupyterHub 5.3+: the API still changes membership with manage_groups on (until the
    # next login)
    r = await c.post(f"/hub/api/groups/{a}/users", headers=h, json={"users": [stu.name]})
    assert (await status(r, 200))["users"] == [stu.name]


# --- manage_groups: the OpenID Connect groups claim -----------------------------------------
@needs_root
async def test_oidc_groups_claim_synced_at_each_login(
    start_hub, browser, accounts, make_system_user
):
    make_system_user("mhog_kim")
    oidc.set_account(accounts, "mhog_kim", groups=["course-a", "staff", "course-b"])
    hub = await start_hub(
        auth__manage_groups=True,
        auth__manage_groups_include=["course-*"],
        oauth={"scopes": ["openid", "email", "profile", "groups"]},
    )
    r = await oidc.sign_in(browser, hub, "mhog_kim")
    assert r.status == 302, await r.text()
    me = await (await browser.get(hub.make_url("/hub/api/users/mhog_kim"))).json()
    assert me["groups"] == ["course-a", "course-b"]

    oidc.set_account(accounts, "mhog_kim", groups=["course-b", "course-c"])
    browser.cookie_jar.clear()
    r = await oidc.sign_in(browser, hub, "mhog_kim")
    assert r.status == 302, await r.text()
    me = await (await browser.get(hub.make_url("/hub/api/users/mhog_kim"))).json()
    assert me["groups"] == ["course-b", "course-c"]
