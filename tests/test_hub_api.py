"""The REST API under /hub/api: JupyterHub's paths, shapes and error format; who may do what."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient
from conftest import hub_config

from minihub.app import make_app
from minihub.store import Store
from minihub.users import create, new_token


async def hub_with_tokens(
    aiohttp_client: Any, data_dir: str, names: dict[str, bool]
) -> tuple[TestClient, dict[str, str]]:
    cfg = hub_config(data_dir, auth__authenticator="native")
    store = await Store.open(cfg.data_dir / "minihub.sqlite")
    from minihub.auth.native import NativeAuthenticator

    tokens = {}
    for name, admin in names.items():
        user = await create(store, NativeAuthenticator(cfg, store), name, admin)
        tokens[name] = (await new_token(store, user, "test"))[0]
    await store.close()
    return await aiohttp_client(make_app(cfg)), tokens


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


async def test_version_and_error_shape(aiohttp_client, data_dir):
    c, tok = await hub_with_tokens(aiohttp_client, data_dir, {"root1": True})
    r = await c.get("/hub/api")
    assert r.status == 200 and "version" in await r.json()
    r = await c.get("/hub/api/users/nobody", headers=auth(tok["root1"]))
    body = await r.json()
    assert r.status == 404 and body["status"] == 404 and isinstance(body["message"], str)
    r = await c.get("/hub/api/user")
    assert r.status == 403 and (await r.json())["status"] == 403
    r = await c.post("/hub/api/users", headers=auth(tok["root1"]), data=b"{not json")
    assert r.status == 400 and "JSON" in (await r.json())["message"]
    r = await c.get("/hub/api/info", headers={"Authorization": "Bearer " + tok["root1"]})
    assert r.status == 200 and "spawner" in await r.json()


async def test_users_see_and_change_only_themselves(aiohttp_client, data_dir):
    c, tok = await hub_with_tokens(
        aiohttp_client, data_dir, {"boss": True, "amy": False, "ben": False}
    )
    r = await c.get("/hub/api/user", headers=auth(tok["amy"]))
    me = await r.json()
    assert me["name"] == "amy" and me["kind"] == "user" and me["admin"] is False
    assert (await c.get("/hub/api/users/amy", headers=auth(tok["amy"]))).status == 200
    assert (await c.get("/hub/api/users/ben", headers=auth(tok["amy"]))).status == 403
    assert (await c.get("/hub/api/users", headers=auth(tok["amy"]))).status == 403
    assert (await c.delete("/hub/api/users/ben", headers=auth(tok["amy"]))).status == 403
    assert (await c.get("/hub/api/users/ben/tokens", headers=auth(tok["amy"]))).status == 403
    assert (await c.post("/hub/api/users/ben/tokens", headers=auth(tok["amy"]))).status == 403
    assert (await c.post("/hub/api/users/ben/server", headers=auth(tok["amy"]))).status == 403
    # privilege escalation: PATCH admin on oneself
    r = await c.patch("/hub/api/users/amy", headers=auth(tok["amy"]), json={"admin": True})
    assert r.status == 403
    r = await c.get("/hub/api/users/amy", headers=auth(tok["boss"]))
    assert (await r.json())["admin"] is False


async def test_admin_manages_users(aiohttp_client, data_dir):
    c, tok = await hub_with_tokens(aiohttp_client, data_dir, {"boss": True})
    h = auth(tok["boss"])
    r = await c.post("/hub/api/users", headers=h, json={"usernames": ["S1", "s2"]})
    assert r.status == 201 and [u["name"] for u in await r.json()] == ["s1", "s2"]
    r = await c.post("/hub/api/users", headers=h, json={"usernames": ["s1"]})
    assert r.status == 409
    r = await c.post("/hub/api/users/bad%2Fname", headers=h)
    assert 400 <= r.status < 500
    r = await c.post("/hub/api/users/..", headers=h)
    assert 400 <= r.status < 500
    r = await c.patch("/hub/api/users/s1", headers=h, json={"admin": True})
    assert (await r.json())["admin"] is True
    r = await c.get("/hub/api/users?limit=1&offset=1", headers=h)
    assert [u["name"] for u in await r.json()] == ["s1"]
    r = await c.get("/hub/api/users?state=active", headers=h)
    assert await r.json() == []
    r = await c.get(
        "/hub/api/users?state=inactive&limit=2",
        headers={**h, "Accept": "application/jupyterhub-pagination+json"},
    )
    page = await r.json()
    assert len(page["items"]) == 2 and page["_pagination"]["next"]["offset"] == 2
    r = await c.get("/hub/api/users?state=bogus", headers=h)
    assert r.status == 400
    assert (await c.delete("/hub/api/users/s2", headers=h)).status == 204
    assert (await c.get("/hub/api/users/s2", headers=h)).status == 404
    assert (await c.delete("/hub/api/users/boss", headers=h)).status == 400


async def test_tokens_create_list_revoke(aiohttp_client, data_dir):
    c, tok = await hub_with_tokens(aiohttp_client, data_dir, {"amy": False})
    h = auth(tok["amy"])
    r = await c.post(
        "/hub/api/users/amy/tokens", headers=h, json={"note": "laptop", "expires_in": 3600}
    )
    assert r.status == 201
    new = await r.json()
    assert new["token"] and new["note"] == "laptop" and new["expires_at"]
    # asked for no scopes: it holds the token role's ("inherit": all amy's), and says so
    assert {"read:users!user=amy", "tokens!user=amy", "access:servers!user=amy"} <= set(
        new["scopes"]
    )
    r = await c.get("/hub/api/users/amy/tokens", headers=h)
    listed = (await r.json())["api_tokens"]
    assert next(t for t in listed if t["id"] == new["id"])["scopes"] == new["scopes"]
    assert {t["id"] for t in listed} >= {new["id"]}
    assert all("token" not in t for t in listed)
    assert (await c.get("/hub/api/user", headers=auth(new["token"]))).status == 200
    r = await c.delete(f"/hub/api/users/amy/tokens/{new['id']}", headers=h)
    assert r.status == 204
    assert (await c.get("/hub/api/user", headers=auth(new["token"]))).status == 403
    r = await c.post("/hub/api/users/amy/tokens", headers=h, json={"expires_in": -5})
    assert r.status == 400


async def test_activity(aiohttp_client, data_dir):
    c, tok = await hub_with_tokens(aiohttp_client, data_dir, {"amy": False})
    h = auth(tok["amy"])
    r = await c.post(
        "/hub/api/users/amy/activity",
        headers=h,
        json={"servers": {"": {"last_activity": "2026-01-02T03:04:05Z"}}},
    )
    assert r.status == 204
    r = await c.get("/hub/api/users/amy", headers=h)
    assert (await r.json())["last_activity"].startswith("2026-01-02T03:04:05")
    r = await c.post("/hub/api/users/amy/activity", headers=h, json={"last_activity": "soon"})
    assert r.status == 400


async def test_health_and_metrics(aiohttp_client, data_dir):
    c, tok = await hub_with_tokens(aiohttp_client, data_dir, {"boss": True})
    assert (await c.get("/hub/health")).status == 200
    assert (await c.get("/hub/metrics")).status == 403
    r = await c.get("/hub/metrics", headers=auth(tok["boss"]))
    text = await r.text()
    from prometheus_client.parser import text_string_to_metric_families

    names = {f.name for f in text_string_to_metric_families(text)}
    assert {
        "minihub_active_servers",
        "minihub_login_failures",
        "minihub_spawn_duration_seconds",
    } <= names
