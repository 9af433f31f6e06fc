"""GET /hub/api/users keeps admins' user models encoded between listings (api/users.py):
each change a model shows is in the very next listing, paginated or not."""

from __future__ import annotations

from typing import Any

import pytest
from test_hub_api import auth, hub_with_tokens

from minihub.api import users as users_api
from minihub.context import PARTS

PAGE = {"Accept": "application/jupyterhub-pagination+json"}


async def listed(c: Any, token: str, paginated: bool = False) -> dict[str, dict[str, Any]]:
    r = await c.get("/hub/api/users", headers={**auth(token), **(PAGE if paginated else {})})
    assert r.status == 200
    body = await r.json()
    return {u["name"]: u for u in (body["items"] if paginated else body)}


@pytest.mark.parametrize("cap", [users_api.MAX_ENCODED, 2])  # 2: fewer than the users
async def test_each_change_shows_in_the_next_listing(aiohttp_client, data_dir, monkeypatch, cap):
    monkeypatch.setattr(users_api, "MAX_ENCODED", cap)
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


async def test_a_full_cache_keeps_what_it_holds(aiohttp_client, data_dir, monkeypatch):
    """More users listed than it holds: it keeps the first ones it was given, instead of
    evicting each one just before the next listing asks for it again (it did: every page of
    every listing of 10,002 users was encoded anew)."""
    monkeypatch.setattr(users_api, "MAX_ENCODED", 3)
    c, tok = await hub_with_tokens(aiohttp_client, data_dir, {"boss": True, "amy": False})
    boss = auth(tok["boss"])
    r = await c.post("/hub/api/users", headers=boss, json={"usernames": ["ben", "cai", "dan"]})
    assert r.status == 201
    first = await listed(c, tok["boss"], paginated=True)
    access = c.server.app[PARTS].access
    _, held = users_api._ENCODED[access]
    kept = dict(held)
    assert len(kept) == 3
    assert await listed(c, tok["boss"], paginated=True) == first
    _, held = users_api._ENCODED[access]
    assert held == kept and all(held[k] is kept[k] for k in kept)  # the same, not re-made
