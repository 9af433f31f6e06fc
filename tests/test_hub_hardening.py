"""Holes a review found, pinned: tokens on pages, token escalation, scope-narrowed admin
tokens, cross-origin websockets, form-body XSRF on proxied paths, odd numbers and times."""

from __future__ import annotations

import time

import aiohttp
import pytest
from conftest import login, xsrf_of
from test_hub_api import auth, hub_with_tokens
from test_hub_auth import native_hub

from minihub.isotime import parse_iso


async def test_tokens_cannot_use_the_page_forms(aiohttp_client, data_dir):
    c, tok = await hub_with_tokens(aiohttp_client, data_dir, {"boss": True, "amy": False})
    r = await c.post("/hub/token", headers=auth(tok["amy"]), data={"note": "x"})
    assert r.status == 403
    r = await c.post("/hub/admin/users/amy/make-admin", headers=auth(tok["boss"]))
    assert r.status == 403
    r = await c.get("/hub/api/users/amy", headers=auth(tok["boss"]))
    assert (await r.json())["admin"] is False


async def test_a_scoped_token_makes_no_stronger_token(aiohttp_client, data_dir):
    c, tok = await hub_with_tokens(aiohttp_client, data_dir, {"amy": False})
    r = await c.post(
        "/hub/api/users/amy/tokens",
        headers=auth(tok["amy"]),
        json={"scopes": ["tokens!user=amy", "read:users!user=amy"]},
    )
    narrow = (await r.json())["token"]
    r = await c.post("/hub/api/users/amy/tokens", headers=auth(narrow), json={})
    assert r.status == 201
    # the model shows what it holds, expanded as JupyterHub's get_scopes_for: no wider
    held = {"tokens", "read:tokens", "read:users", "read:users:name", "read:users:groups"}
    held |= {"read:users:activity"}
    assert set((await r.json())["scopes"]) == {f"{s}!user=amy" for s in held}
    r = await c.post(
        "/hub/api/users/amy/tokens", headers=auth(narrow), json={"scopes": ["servers!user=amy"]}
    )
    assert r.status == 403


async def test_admin_token_narrowed_to_users_cannot_grant_admin(aiohttp_client, data_dir):
    c, tok = await hub_with_tokens(aiohttp_client, data_dir, {"boss": True, "amy": False})
    r = await c.post(
        "/hub/api/users/boss/tokens", headers=auth(tok["boss"]), json={"scopes": ["users"]}
    )
    narrow = (await r.json())["token"]
    r = await c.patch("/hub/api/users/amy", headers=auth(narrow), json={"admin": True})
    assert r.status == 403
    r = await c.patch("/hub/api/users/amy", headers=auth(tok["boss"]), json={"admin": True})
    assert r.status == 200


@pytest.mark.parametrize(
    "path",
    [
        "/hub/api/users?offset=\u00b2",
        "/hub/api/users?limit=" + "9" * 40,
        "/hub/api/users/boss/tokens/\u00b2",
    ],
)
async def test_odd_numbers_are_4xx(aiohttp_client, data_dir, path):
    c, tok = await hub_with_tokens(aiohttp_client, data_dir, {"boss": True})
    r = await c.get(path, headers=auth(tok["boss"]))
    assert 400 <= r.status < 500


async def test_activity_shape_and_future_times(aiohttp_client, data_dir):
    c, tok = await hub_with_tokens(aiohttp_client, data_dir, {"amy": False})
    r = await c.post(
        "/hub/api/users/amy/activity",
        headers=auth(tok["amy"]),
        json={"last_activity": "2024-01-01T00:00:00Z", "servers": [1]},
    )
    assert r.status == 400
    r = await c.post(
        "/hub/api/users/amy/activity",
        headers=auth(tok["amy"]),
        json={"last_activity": "2999-01-01T00:00:00Z"},
    )
    assert r.status == 204
    m = await (await c.get("/hub/api/users/amy", headers=auth(tok["amy"]))).json()
    assert parse_iso(m["last_activity"]) <= time.time() + 1


async def test_page_form_numbers(aiohttp_client, data_dir):
    c = await native_hub(aiohttp_client, data_dir, {"amy": "amy-password"})
    await login(c, "amy", "amy-password")
    r = await c.post("/hub/token", data={"_xsrf": xsrf_of(c), "expires_days": "9" * 400})
    assert r.status == 200 and "number of days" in await r.text()
    r = await c.post("/hub/token/\u00b2/revoke", data={"_xsrf": xsrf_of(c)})
    assert r.status == 404


async def test_cookie_websocket_from_another_origin_and_form_xsrf_on_proxy(
    aiohttp_client, data_dir
):
    c = await native_hub(aiohttp_client, data_dir, {"amy": "amy-password"})
    await login(c, "amy", "amy-password")
    with pytest.raises(aiohttp.WSServerHandshakeError) as e:
        await c.ws_connect(
            "/user/amy/api/kernels/k/channels", headers={"Origin": "http://evil.example"}
        )
    assert e.value.status == 403
    # on proxied paths only the header counts: the body streams on untouched
    r = await c.post("/user/amy/api/contents", data={"_xsrf": xsrf_of(c)})
    assert r.status == 403
