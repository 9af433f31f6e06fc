"""The access model with real users and real servers: roles, group filters on servers,
revocation on the next request and on an open websocket, token ceilings, restarts."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from conftest import needs_root
from helpers import offline_user

from minihub import config as _config
from minihub import scopes
from minihub.access import db as access_db
from minihub.app import make_app
from minihub.errors import BadRequest, StartupError
from minihub.store import Store
from minihub.users import new_token

COURSE = """
[[groups]]
name = "students"
users = ["mhac_alice", "mhac_carl"]

[[roles]]
name = "tas"
description = "Teaching assistants look at students' work"
scopes = ["access:servers!group=students", "read:users!group=students",
          "list:users!group=students", "read:servers!group=students"]
users = ["mhac_tom"]

[[roles]]
name = "grader"
scopes = ["read:users!group=students", "list:users!group=students", "custom:grades:write"]
services = ["grading"]

[custom_scopes."custom:grades:write"]
description = "Write grades"

[[services]]
name = "grading"
api_token = "grading-service-token-0123456789"
"""


def course_config(data_dir: str, extra: str = "", **settings: Any) -> _config.Config:
    path = Path(data_dir) / "minihub.toml"
    path.write_text(COURSE + textwrap.dedent(extra))
    overrides = {"hub.data_dir": data_dir, "auth.login_failure_delay_seconds": 0.0}
    overrides.update({k.replace("__", "."): v for k, v in settings.items()})
    return _config.load(path, overrides)


async def tokens(cfg: _config.Config, names: list[str], admin: str = "") -> dict[str, str]:
    store = await Store.open(cfg.data_dir / "minihub.sqlite")
    out = {}
    for n in names:
        out[n] = (await new_token(store, await offline_user(store, n, n == admin), "t"))[0]
    await store.close()
    return out


def h(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


async def start(c: TestClient, name: str, token: str) -> None:
    r = await c.post(f"/hub/api/users/{name}/server", headers=h(token))
    assert r.status in (201, 202), await r.text()
    for _ in range(300):
        model = await (await c.get(f"/hub/api/users/{name}", headers=h(token))).json()
        if model["server"]:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name}'s server never became ready")


@needs_root
async def test_a_teaching_assistant_opens_students_servers_and_loses_access_at_once(
    aiohttp_client, data_dir, make_system_user
):
    alice, dan = make_system_user("mhac_alice"), make_system_user("mhac_dan")
    make_system_user("mhac_tom")
    cfg = course_config(data_dir)
    tok = await tokens(cfg, ["mhac_alice", "mhac_dan", "mhac_tom", "mhac_boss"], "mhac_boss")
    c = await aiohttp_client(make_app(cfg))
    await start(c, alice.name, tok[alice.name])
    await start(c, dan.name, tok[dan.name])
    ta = h(tok["mhac_tom"])

    # a student's server: yes, over HTTP and websocket; a non-member's: no
    r = await c.get(f"/user/{alice.name}/api/status", headers=ta)
    assert r.status == 200
    r = await c.get(f"/user/{dan.name}/api/status", headers=ta)
    assert r.status == 403 and "access:servers" in (await r.json())["message"]
    r = await c.post(f"/user/{alice.name}/api/kernels", headers=ta, json={})
    assert r.status == 201, await r.text()
    kernel = (await r.json())["id"]
    ws = await c.ws_connect(f"/user/{alice.name}/api/kernels/{kernel}/channels", headers=ta)

    # the role's filters on users: the TA lists and reads students only
    r = await c.get("/hub/api/users", headers=ta)
    assert r.status == 200
    assert sorted(u["name"] for u in await r.json()) == ["mhac_alice", "mhac_carl"]
    assert (await c.get(f"/hub/api/users/{dan.name}", headers=ta)).status == 403
    me = await (await c.get("/hub/api/user", headers=ta)).json()
    assert "tas" in me["roles"] and "access:servers!group=students" in me["scopes"]
    model = await (await c.get(f"/hub/api/users/{alice.name}", headers=ta)).json()
    assert model["groups"] == ["students"]

    # alice leaves the group: the very next request is refused, the open websocket closes
    boss = h(tok["mhac_boss"])
    r = await c.delete("/hub/api/groups/students/users", headers=boss, json={"users": [alice.name]})
    assert r.status == 200, await r.text()
    r = await c.get(f"/user/{alice.name}/api/status", headers=ta)
    assert r.status == 403
    msg = await asyncio.wait_for(ws.receive(), 10)
    while msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
        msg = await asyncio.wait_for(ws.receive(), 10)
    assert msg.type in (
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSED,
        aiohttp.WSMsgType.CLOSING,
    )
    assert ws.close_code == 1008
    # the owner is not affected
    assert (await c.get(f"/user/{alice.name}/api/status", headers=h(tok[alice.name]))).status == 200


@needs_root
async def test_admin_role_revoked_applies_on_the_next_request_and_survives_restart(
    aiohttp_client, data_dir
):
    cfg = course_config(data_dir)
    tok = await tokens(cfg, ["mhac_boss", "mhac_eve"], "mhac_boss")
    c = await aiohttp_client(make_app(cfg))
    boss, eve = h(tok["mhac_boss"]), h(tok["mhac_eve"])
    assert (await c.get("/hub/api/users", headers=eve)).status == 403
    r = await c.patch("/hub/api/users/mhac_eve", headers=boss, json={"admin": True})
    assert r.status == 200 and (await r.json())["admin"] is True
    assert (await c.get("/hub/api/users", headers=eve)).status == 200
    r = await c.patch("/hub/api/users/mhac_eve", headers=boss, json={"admin": False})
    assert (await r.json())["roles"] == ["user"]
    assert (await c.get("/hub/api/users", headers=eve)).status == 403
    r = await c.patch("/hub/api/users/mhac_eve", headers=boss, json={"admin": True})
    await c.close()

    c = await aiohttp_client(make_app(cfg))  # the same file: roles kept
    model = await (await c.get("/hub/api/users/mhac_eve", headers=boss)).json()
    assert model["admin"] is True and "admin" in model["roles"]
    assert (await c.get("/hub/api/users", headers=eve)).status == 200

    # a change made by another process (the CLI) while the hub runs applies within seconds
    store = await Store.open(cfg.data_dir / "minihub.sqlite")
    await access_db.unassign_role(store, "admin", "mhac_eve")
    await store.close()
    for _ in range(100):
        if (await c.get("/hub/api/users", headers=eve)).status == 403:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the CLI's change never reached the running hub")


@needs_root
async def test_a_token_holds_at_most_its_owners_scopes_checked_on_every_use(
    aiohttp_client, data_dir
):
    cfg = course_config(data_dir)
    tok = await tokens(cfg, ["mhac_tom", "mhac_alice", "mhac_boss"], "mhac_boss")
    c = await aiohttp_client(make_app(cfg))
    ta, boss = h(tok["mhac_tom"]), h(tok["mhac_boss"])
    # more than the owner holds: refused, naming the scope
    r = await c.post("/hub/api/users/mhac_tom/tokens", headers=ta, json={"scopes": ["admin:users"]})
    assert r.status == 403 and "admin:users" in (await r.json())["message"]
    r = await c.post(
        "/hub/api/users/mhac_tom/tokens", headers=ta, json={"scopes": ["access:servers"]}
    )
    assert r.status == 403
    # the owner's filtered scope: granted
    r = await c.post(
        "/hub/api/users/mhac_tom/tokens",
        headers=ta,
        json={"scopes": ["read:users!group=students"]},
    )
    assert r.status == 201, await r.text()
    narrow = h((await r.json())["token"])
    assert (await c.get("/hub/api/users/mhac_alice", headers=narrow)).status == 200
    assert (await c.get("/hub/api/users", headers=narrow)).status == 403  # no list:users
    # the admin's unfiltered token scope is narrowed by the owner's (not a user's) holdings
    r = await c.post(
        "/hub/api/users/mhac_boss/tokens", headers=boss, json={"scopes": ["read:users"]}
    )
    admin_tok = h((await r.json())["token"])
    assert (await c.get("/hub/api/users/mhac_alice", headers=admin_tok)).status == 200
    # the owner loses the role: the token they made loses what it had, on the next use
    r = await c.patch("/hub/api/users/mhac_boss", headers=boss, json={"admin": False})
    assert r.status == 200
    assert (await c.get("/hub/api/users/mhac_alice", headers=admin_tok)).status == 403
    # JupyterHub 2's token roles: the role's scopes, still capped by the owner's
    r = await c.post("/hub/api/users/mhac_tom/tokens", headers=ta, json={"roles": ["tas"]})
    assert r.status == 201 and "access:servers!group=students" in (await r.json())["scopes"]
    r = await c.post("/hub/api/users/mhac_tom/tokens", headers=ta, json={"roles": ["admin"]})
    assert r.status == 403
    r = await c.post("/hub/api/users/mhac_tom/tokens", headers=ta, json={"roles": ["nope"]})
    assert r.status == 400 and "No such role" in (await r.json())["message"]
    # unknown scopes and filters are 400s that say what is wrong
    r = await c.post("/hub/api/users/mhac_tom/tokens", headers=ta, json={"scopes": ["x:y"]})
    assert r.status == 400 and "Unknown scope" in (await r.json())["message"]
    r = await c.post(
        "/hub/api/users/mhac_tom/tokens", headers=ta, json={"scopes": ["read:users!color=red"]}
    )
    assert r.status == 400 and "filter" in (await r.json())["message"]


@needs_root
async def test_a_service_holds_its_roles_filters_and_custom_scopes(aiohttp_client, data_dir):
    cfg = course_config(data_dir)
    tok = await tokens(cfg, ["mhac_alice", "mhac_dan", "mhac_boss"], "mhac_boss")
    c = await aiohttp_client(make_app(cfg))
    svc = h("grading-service-token-0123456789")
    me = await (await c.get("/hub/api/user", headers=svc)).json()
    assert me["kind"] == "service" and me["name"] == "grading" and me["roles"] == ["grader"]
    assert "custom:grades:write" in me["scopes"]
    assert (await c.get("/hub/api/users/mhac_alice", headers=svc)).status == 200
    assert (await c.get("/hub/api/users/mhac_dan", headers=svc)).status == 403
    r = await c.get("/hub/api/users", headers=svc)
    assert sorted(u["name"] for u in await r.json()) == ["mhac_alice", "mhac_carl"]
    # a service is not a user: no user's pages, no metrics without read:metrics
    assert (await c.get("/hub/metrics", headers=svc)).status == 403
    assert (await c.get("/hub/metrics", headers=h(tok["mhac_alice"]))).status == 403
    r = await c.get("/hub/metrics", headers=h(tok["mhac_boss"]))
    assert r.status == 200 and "minihub_users" in await r.text()


@needs_root
async def test_metrics_are_one_scope_away(aiohttp_client, data_dir):
    extra = """
    [[roles]]
    name = "monitoring"
    scopes = ["read:metrics"]
    users = ["mhac_mona"]
    """
    cfg = course_config(data_dir, extra)
    tok = await tokens(cfg, ["mhac_mona"])
    c = await aiohttp_client(make_app(cfg))
    r = await c.get("/hub/metrics", headers=h(tok["mhac_mona"]))
    assert r.status == 200 and "minihub_active_servers" in await r.text()
    # and nothing else comes with it
    assert (await c.get("/hub/api/users", headers=h(tok["mhac_mona"]))).status == 403


@needs_root
async def test_the_user_role_can_be_redefined(aiohttp_client, data_dir):
    extra = """
    [[roles]]
    name = "user"
    scopes = ["self", "list:users"]
    """
    cfg = course_config(data_dir, extra)
    tok = await tokens(cfg, ["mhac_alice", "mhac_dan"])
    c = await aiohttp_client(make_app(cfg))
    r = await c.get("/hub/api/users", headers=h(tok["mhac_alice"]))
    assert r.status == 200 and {"mhac_alice", "mhac_dan"} <= {u["name"] for u in await r.json()}
    # list:users gives names, not other users' models
    assert (await c.get("/hub/api/users/mhac_dan", headers=h(tok["mhac_alice"]))).status == 403


@needs_root
async def test_the_server_token_and_admin_roles_can_be_redefined(aiohttp_client, data_dir):
    """JupyterHub's built-in roles other than user: `server` gives each server's own token
    its scopes, `token` those of a token that asked for none, `admin` may go to a service."""
    extra = """
    [[roles]]
    name = "server"
    scopes = ["access:servers!server", "read:users!user"]

    [[roles]]
    name = "token"
    scopes = ["read:users!user"]

    [[roles]]
    name = "admin"
    services = ["grading"]
    """
    cfg = course_config(data_dir, extra)
    tok = await tokens(cfg, ["mhac_alice", "mhac_dan"])
    c = await aiohttp_client(make_app(cfg))
    # alice's token asked for no scopes: it holds the token role's, capped by hers
    alice = h(tok["mhac_alice"])
    assert (await c.get("/hub/api/users/mhac_alice", headers=alice)).status == 200
    me = await (await c.get("/hub/api/user", headers=alice)).json()
    assert "servers!user=mhac_alice" not in me["scopes"]
    r = await c.post("/hub/api/users/mhac_alice/server", headers=alice)
    assert r.status == 403 and "servers" in (await r.json())["message"]
    r = await c.post("/hub/api/users/mhac_alice/tokens", headers=alice, json={})
    assert r.status == 403  # no `tokens`: it cannot mint a wider one either
    # a server's own token: the server role's scopes, activity added as JupyterHub does
    from minihub import protocols
    from minihub.context import PARTS

    p = c.server.app[PARTS]
    user = await p.store.get_user("mhac_alice")
    client = await protocols.register_server(
        p.store, user, "", "/user/mhac_alice/", p.servers.protocol.server_role
    )
    me = await (await c.get("/hub/api/user", headers=h(client.api_token))).json()
    assert {"access:servers!server=mhac_alice/", "users:activity!user=mhac_alice"} <= set(
        me["scopes"]
    )
    server = h(client.api_token)
    assert (await c.get("/hub/api/users/mhac_alice", headers=server)).status == 200
    assert (await c.get("/hub/api/users/mhac_dan", headers=server)).status == 403
    # the service in the admin role: an admin, and its own token is not the token role's
    svc = h("grading-service-token-0123456789")
    model = await (await c.get("/hub/api/services/grading", headers=svc)).json()
    assert model["admin"] is True and model["roles"] == ["admin", "grader"]
    assert (await c.get("/hub/api/users/mhac_dan", headers=svc)).status == 200


def test_the_access_control_docs_examples_load(tmp_path):
    """Every TOML example in docs/access-control.md is a configuration the hub accepts."""
    import re

    doc = (Path(__file__).parent.parent / "docs" / "access-control.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", doc, re.DOTALL)
    assert len(blocks) >= 3
    for i, block in enumerate(blocks):
        path = tmp_path / f"example{i}.toml"
        path.write_text(block)
        cfg = _config.load(path, {"hub.data_dir": str(tmp_path)})
        assert cfg.roles or cfg.groups, block
    course = _config.load(path, {"hub.data_dir": str(tmp_path)})  # the last: the course
    assert {r["name"] for r in course.roles} == {"teaching-assistant", "grader", "user"}
    assert [s["name"] for s in course.services] == ["grading"]


@pytest.mark.parametrize(
    "toml, words",
    [
        (
            '[[roles]]\nname = "tas"\nscopes = ["read:userz"]\n',
            ["[[roles]] #1 (tas)", "read:userz"],
        ),
        ('[[roles]]\nname = "tas"\ncolour = "red"\nscopes = []\n', ["[[roles]] #1", "colour"]),
        ('[[roles]]\nname = "T A"\nscopes = []\n', ["[[roles]] #1", "name"]),
        ('[[roles]]\nname = "tas"\n', ["scopes"]),
        ('[[roles]]\nname = "tas"\nscopes = ["custom:x"]\n', ["custom:x", "[custom_scopes]"]),
        ('[[groups]]\nname = "a/b"\n', ["[[groups]] #1", "name"]),
        ('[[groups]]\nname = "a"\nmembers = []\n', ["[[groups]] #1", "members"]),
        ('[custom_scopes."nope"]\ndescription = "x"\n', ["[custom_scopes]", "custom:"]),
        ('[custom_scopes."custom:a"]\nsubscopes = []\n', ["custom:a", "description"]),
        ("roles = 3\n", ["[[roles]]", "array of tables"]),
        (
            '[[roles]]\nname = "graders"\nscopes = []\nservices = ["ghost"]\n',
            ["[[roles]] graders", "'ghost' is not a [[services]] name"],
        ),
    ],
)
def test_bad_access_config_names_file_and_key(tmp_path, toml, words):
    path = tmp_path / "minihub.toml"
    path.write_text(toml)
    with pytest.raises(StartupError) as e:
        _config.load(path, {"hub.data_dir": str(tmp_path)})
    assert str(path) in str(e.value)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_scope_filters_and_intersections():
    groups = {"alice": frozenset({"students"})}
    held = scopes.expand(["access:servers!group=students", "read:users!user=bob"])
    assert scopes.covers(held, scopes.Scope("access:servers", "server", "alice/x"), groups)
    assert not scopes.covers(held, scopes.Scope("access:servers", "server", "dan/"), groups)
    assert scopes.covers(held, scopes.Scope("read:users:name", "user", "bob"), groups)
    # an unfiltered ask is narrowed to what the owner holds, not dropped (JupyterHub's rule)
    asked = scopes.expand(["read:users"])
    got = scopes.intersect(asked, held, groups)
    assert scopes.Scope("read:users", "user", "bob") in got
    assert scopes.Scope("read:users") not in got
    # a user filter inside the owner's group filter is kept
    got = scopes.intersect(scopes.expand(["access:servers!user=alice"]), held, groups)
    assert scopes.Scope("access:servers", "user", "alice") in got
    assert scopes.expand(["self"], "amy") >= {scopes.Scope("access:servers", "user", "amy")}
    assert scopes.expand(["access:servers!server"], "amy", server="lab") == {
        scopes.Scope("access:servers", "server", "amy/lab")
    }
    with pytest.raises(BadRequest):
        scopes.parse("access:servers!planet=mars")


async def test_the_admin_flag_migrates_to_the_admin_role(tmp_path):
    """A hub file from before roles (schema 4, an admin column) keeps its admins."""
    import sqlite3

    from minihub.store import MIGRATIONS

    path = tmp_path / "minihub.sqlite"
    with sqlite3.connect(path) as db:
        for i, script in enumerate(MIGRATIONS[:4], start=1):
            db.executescript(f"{script}; PRAGMA user_version={i};")
        db.execute("INSERT INTO users (name, admin, created) VALUES ('old_admin', 1, 1.0)")
        db.execute("INSERT INTO users (name, admin, created) VALUES ('old_user', 0, 1.0)")
    store = await Store.open(path)
    try:
        roles = await access_db.load_role_users(store)
        assert roles == {"admin": {"old_admin"}}
        cols = [r[1] for r in await store._all("PRAGMA table_info(users)")]
        assert "admin" not in cols
    finally:
        await store.close()


async def _relays(ws: aiohttp.ClientWebSocketResponse, tag: str) -> None:
    """The kernel answers an execute_request sent on `ws` (it is open and relayed)."""
    from helpers import execute_request

    await ws.send_json(execute_request(f"print({tag!r})", tag * 8, "s" * 32))
    async with asyncio.timeout(30):
        while True:
            msg = await ws.receive_json()
            if msg["msg_type"] == "stream" and msg["parent_header"].get("msg_id") == tag * 8:
                assert msg["content"]["text"] == tag + "\n"
                return


async def _closed_1008(ws: aiohttp.ClientWebSocketResponse) -> None:
    async with asyncio.timeout(10):
        msg = await ws.receive()
        while msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            msg = await ws.receive()
    assert ws.close_code == 1008, (msg, ws.close_code)


@needs_root
async def test_a_deleted_token_or_a_logout_closes_the_websockets_it_opened(
    aiohttp_client, data_dir, make_system_user
):
    """A revoked credential ends what it opened, not only its next request: a kernel's
    websocket opened with a token that is then deleted, or by a session that then logs out,
    closes at once (1008); the owner's other connections run on."""
    from conftest import login, xsrf_of

    amy = make_system_user("mhac_amy")
    cfg = course_config(data_dir)
    tok = await tokens(cfg, [amy.name])
    c = await aiohttp_client(make_app(cfg))
    await start(c, amy.name, tok[amy.name])
    main = h(tok[amy.name])
    r = await c.post(f"/hub/api/users/{amy.name}/tokens", headers=main, json={"note": "laptop"})
    assert r.status == 201, await r.text()
    laptop = await r.json()
    r = await c.post(f"/user/{amy.name}/api/kernels", headers=main, json={})
    assert r.status == 201, await r.text()
    url = f"/user/{amy.name}/api/kernels/{(await r.json())['id']}/channels"
    r = await login(c, amy.name, amy.password)
    assert r.status == 302, await r.text()
    by_laptop = await c.ws_connect(url, headers=h(laptop["token"]))
    by_token = await c.ws_connect(url, headers=main)
    by_session = await c.ws_connect(url)  # the session cookie
    for ws, tag in ((by_laptop, "a"), (by_token, "b"), (by_session, "c")):
        await _relays(ws, tag)

    r = await c.delete(f"/hub/api/users/{amy.name}/tokens/{laptop['id']}", headers=main)
    assert r.status == 204, await r.text()
    await _closed_1008(by_laptop)
    await _relays(by_token, "d")
    await _relays(by_session, "e")

    r = await c.post("/hub/logout", data={"_xsrf": xsrf_of(c)}, allow_redirects=False)
    assert r.status == 302
    await _closed_1008(by_session)
    await _relays(by_token, "f")
    await by_token.close()
