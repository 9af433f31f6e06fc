"""Hub services: [[services]] configuration, service identities and scopes, supervised
commands, and the real jupyterhub-idle-culler driving minihub through its REST API."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from conftest import hub_config, needs_root
from helpers import offline_user as hub_login

from minihub import config as C
from minihub.app import make_app
from minihub.errors import StartupError
from minihub.services import SUPERVISORS
from minihub.store import Store
from minihub.users import new_token

CULLER_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]
SERVICE_TOKEN = "svc-token-" + "x" * 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def h(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


async def tokens_for(cfg: C.Config, names: list[str]) -> dict[str, str]:
    store = await Store.open(cfg.data_dir / "minihub.sqlite")
    out = {}
    for n in names:
        out[n] = (await new_token(store, await hub_login(store, n, False), "test"))[0]
    await store.close()
    return out


def test_services_config_is_validated(tmp_path: Path) -> None:
    def load(text: str) -> C.Config:
        path = tmp_path / "minihub.toml"
        path.write_text(text)
        return C.load(path, {"hub.data_dir": str(tmp_path)})

    cfg = load(
        '[[services]]\nname = "culler"\nscopes = ["list:users", "delete:servers"]\n'
        'command = ["python3", "-m", "jupyterhub_idle_culler"]\n'
    )
    assert cfg.services[0]["name"] == "culler"
    bad = {
        '[[services]]\nname = "x"\nport = 9\n': "unknown key 'port'",
        '[[services]]\nname = "x"\nurl = "ftp://127.0.0.1:9"\n': "url must be http",
        '[[services]]\nname = "x"\nurl = "http://127.0.0.1:9/x"\n': "only scheme, host and port",
        '[[services]]\nname = "x"\noauth_client_id = "x"\n': "must start with 'service-'",
        '[[services]]\nname = "x"\noauth_client_allowed_scopes = ["nope"]\n': "Unknown scope",
        '[[services]]\nname = "x"\ndisplay = "yes"\n': "display must be a bool",
        '[[services]]\nname = "x"\nscopes = ["read:everything"]\n': "Unknown scope",
        '[[services]]\nname = "x"\napi_token = "short"\n': "at least 16",
        '[[services]]\nname = "Bad Name"\n': "name must be",
        '[[services]]\nname = "x"\n[[services]]\nname = "x"\n': "used twice",
        '[[services]]\nname = "x"\ncommand = "not a list"\n': "command must be a list",
    }
    for text, msg in bad.items():
        with pytest.raises(StartupError, match=msg):
            load(text)


async def test_service_identity_scopes_and_restart(aiohttp_client, data_dir) -> None:
    cfg = hub_config(data_dir)
    cfg.services = [
        {"name": "reader", "api_token": SERVICE_TOKEN, "scopes": ["list:users", "read:users"]},
        {"name": "nobody", "api_token": "nobody-" + "y" * 20},
        # exits at once: the hub restarts it, with its generated token in the environment
        {
            "name": "flaky",
            "command": [
                sys.executable,
                "-c",
                "import os; assert os.environ['JUPYTERHUB_API_TOKEN']",
            ],
        },
    ]
    await tokens_for(cfg, ["mhjh_sam"])
    c: TestClient = await aiohttp_client(make_app(cfg))

    me = await (await c.get("/hub/api/user", headers=h(SERVICE_TOKEN))).json()
    assert me["kind"] == "service" and me["name"] == "reader"
    assert "list:users" in me["scopes"] and "read:users:activity" in me["scopes"]
    r = await c.get("/hub/api/users", headers=h(SERVICE_TOKEN))
    assert r.status == 200 and [u["name"] for u in await r.json()] == ["mhjh_sam"]
    assert (await c.get("/hub/api/users/mhjh_sam", headers=h(SERVICE_TOKEN))).status == 200
    # read-only: it may not stop servers, change users or reach a user's server
    r = await c.delete("/hub/api/users/mhjh_sam/server", headers=h(SERVICE_TOKEN))
    assert r.status == 403 and "delete:servers" in (await r.json())["message"]
    assert (await c.delete("/hub/api/users/mhjh_sam", headers=h(SERVICE_TOKEN))).status == 403
    assert (await c.get("/user/mhjh_sam/api/status", headers=h(SERVICE_TOKEN))).status == 403
    nobody = "nobody-" + "y" * 20
    assert (await c.get("/hub/api/users", headers=h(nobody))).status == 403
    assert (await c.get("/hub/api/user", headers=h(nobody))).status == 200

    flaky = next(s for s in c.app[SUPERVISORS] if s.svc.name == "flaky")
    for _ in range(100):
        if flaky.starts >= 2 and flaky.proc and flaky.proc.returncode == 0:
            break
        await asyncio.sleep(0.05)
    assert flaky.starts >= 2 and flaky.proc is not None and flaky.proc.returncode == 0


async def _start(c: TestClient, name: str, token: str) -> None:
    r = await c.post(f"/hub/api/users/{name}/server", headers=h(token))
    assert r.status in (201, 202), await r.text()
    for _ in range(300):
        if (await (await c.get(f"/hub/api/users/{name}", headers=h(token))).json())["server"]:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name}'s server did not start")


async def _running(c: TestClient, name: str, token: str) -> bool:
    model: dict[str, Any] = await (await c.get(f"/hub/api/users/{name}", headers=h(token))).json()
    return model["server"] is not None


@needs_root
async def test_idle_culler_culls_idle_server_and_keeps_active(
    aiohttp_client, data_dir, make_system_user
) -> None:
    idle = make_system_user("mhjh_idle")
    busy = make_system_user("mhjh_busy")
    port = free_port()
    cfg = hub_config(data_dir, hub__port=port)
    cfg.services = [
        {
            "name": "idle-culler",
            "scopes": CULLER_SCOPES,
            "command": [
                sys.executable,
                "-m",
                "jupyterhub_idle_culler",
                "--timeout=4",
                "--cull-every=1",
                "--api-page-size=1",
            ],
        }
    ]
    tok = await tokens_for(cfg, [idle.name, busy.name])
    c: TestClient = await aiohttp_client(make_app(cfg), server_kwargs={"port": port})
    await asyncio.gather(_start(c, idle.name, tok[idle.name]), _start(c, busy.name, tok[busy.name]))

    # busy keeps using its server through the proxy; idle does nothing
    for _ in range(300):
        r = await c.get(f"/user/{busy.name}/api/status", headers=h(tok[busy.name]))
        assert r.status == 200
        if not await _running(c, idle.name, tok[idle.name]):
            break
        await asyncio.sleep(0.1)
    assert not await _running(c, idle.name, tok[idle.name]), "the culler never culled"
    assert await _running(c, busy.name, tok[busy.name])
    log = (cfg.data_dir / "logs" / "service-idle-culler.log").read_text()
    assert f"Culling server {idle.name}" in log
    assert f"Culling server {busy.name}" not in log
    await c.delete(f"/hub/api/users/{busy.name}/server", headers=h(tok[busy.name]))
