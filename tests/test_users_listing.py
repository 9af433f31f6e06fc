"""GET /hub/api/users keeps admins' user models encoded between listings (api/users.py):
each change a model shows is in the very next listing, paginated or not."""

from __future__ import annotations

from typing import Any

from test_hub_api import auth, hub_with_tokens

PAGE = {"Accept": "application/jupyterhub-pagination+json"}


async def listed(c: Any, token: str, paginated: bool = False) -> dict[str, dict[str, Any]]:
    r = await c.get("/hub/api/users", headers={**auth(token), **(PAGE if paginated else {})})
    assert r.status == 200
    body = await r.json()
    return {u["name"]: u for u in (body["items"] if paginated else body)}


async def test_each_change_shows_in_the_next_listing(aiohttp_client, data_dir):
    c, tok = await hub_with_tokens(aiohttp_client, data_dir, {"boss": True, "amy": False})
    boss = auth(tok["boss"])
    r = await c.post("/hub/api/users", headers=boss, json={"usernames": ["ben", "cai"]})
    assert r.status == 201
    first = await listed(c, tok["boss"])
    assert await listed(c, tok["boss"], paginated=True) == first  # from what was kept
    assert first["amy"]["admin"] is False and first["amy"]["groups"] == []

    assert (await c.patch("/hub/api/users/amy", headers=boss, json={"admin": True})).status == 200
    now = await listed(c, tok["boss"], paginated=True)
    assert now["amy"]["admin"] is True and "admin" in now["amy"]["roles"]

    r = await c.post("/hub/api/groups/lab", headers=boss, json={"users": ["amy", "ben"]})
    assert r.status == 201
    now = await listed(c, tok["boss"])
    assert now["amy"]["groups"] == ["lab"] and now["ben"]["groups"] == ["lab"]
    assert now["cai"]["groups"] == []

    stamp = {"last_activity": "2030-01-01T00:00:00Z"}
    r = await c.post("/hub/api/users/cai/activity", headers=boss, json=stamp)
    assert r.status == 204
    now = await listed(c, tok["boss"], paginated=True)
    assert now["cai"]["last_activity"] not in (None, first["cai"]["last_activity"])

    assert (await c.patch("/hub/api/users/ben", headers=boss, json={"name": "bea"})).status == 200
    now = await listed(c, tok["boss"])
    assert "ben" not in now and now["bea"]["groups"] == ["lab"]

    assert (await c.delete("/hub/api/users/cai", headers=boss)).status == 204
    r = await c.post("/hub/api/users", headers=boss, json={"usernames": ["cai"]})
    assert r.status == 201
    now = await listed(c, tok["boss"], paginated=True)
    assert now["cai"]["last_activity"] is None and now["cai"]["groups"] == []
