"""Spawning through the hub with real users: privilege drop, proxying, isolation, re-adoption."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import gone, hub_config, login, needs_root
from helpers import execute
from helpers import offline_user as hub_login

from minihub.app import make_app
from minihub.config import Config
from minihub.kernels.transport import DIR_PREFIX, PID_FILE
from minihub.spawner.cgroups import UserCgroup, detect
from minihub.store import Store
from minihub.users import new_token

pytestmark = needs_root


async def make_tokens(cfg: Config, names: list[str], admin: str | None = None) -> dict[str, str]:
    store = await Store.open(cfg.data_dir / "minihub.sqlite")
    out = {}
    for n in names:
        user = await hub_login(store, n, n == admin)
        out[n] = (await new_token(store, user, "test"))[0]
    await store.close()
    return out


def h(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


async def start(c: TestClient, name: str, token: str) -> dict[str, Any]:
    r = await c.post(f"/hub/api/users/{name}/server", headers=h(token))
    assert r.status in (201, 202), await r.text()
    for _ in range(200):
        model = await (await c.get(f"/hub/api/users/{name}", headers=h(token))).json()
        if model["server"]:
            return model
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name}'s server never became ready: {model}")


async def run_code(c: TestClient, name: str, token: str, kernel_id: str, code: str) -> str:
    """Execute `code` over the kernel websocket through the hub; return stdout."""
    url = f"/user/{name}/api/kernels/{kernel_id}/channels"
    return await execute(c, url, code, username=name, lab=True, timeout=30, headers=h(token))


async def test_spawn_privilege_drop_isolation_and_readoption(
    aiohttp_client, data_dir, make_system_user
):
    a = make_system_user("mhhs_alice")
    b = make_system_user("mhhs_bob")
    cfg = hub_config(data_dir, hub__admin_access=False)
    tok = await make_tokens(cfg, [a.name, b.name, "mhhs_admin"], admin="mhhs_admin")
    c = await aiohttp_client(make_app(cfg))
    model = await start(c, a.name, tok[a.name])
    assert model["servers"][""]["ready"] is True
    r = await c.get(f"/user/{a.name}/api/status", headers=h(tok[a.name]))
    assert r.status == 200

    r = await c.post(f"/user/{a.name}/api/kernels", headers=h(tok[a.name]), json={})
    kernel = await r.json()
    code = (
        "import os, json; print(json.dumps([os.getuid(), os.getgid(), os.getgroups(), "
        "os.environ.get('HOME'), os.environ.get('USER'), dict(os.environ)]))"
    )
    uid, gid, groups, home, user, env = json.loads(
        await run_code(c, a.name, tok[a.name], kernel["id"], code)
    )
    assert (uid, gid, home, user) == (a.uid, a.gid, a.home, a.name)
    assert 0 not in groups
    blob = json.dumps(env)
    assert tok[a.name] not in blob and "MINIHUB_SECRET" not in blob
    assert not any("secret" in k.lower() for k in env)

    # bob cannot reach alice's server, over HTTP or websocket, nor her API entry
    r = await c.get(f"/user/{a.name}/api/contents", headers=h(tok[b.name]))
    assert r.status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError) as e:
        await c.ws_connect(
            f"/user/{a.name}/api/kernels/{kernel['id']}/channels", headers=h(tok[b.name])
        )
    assert e.value.status == 403
    r = await c.get(f"/user/{b.name}/../{a.name}/api/contents", headers=h(tok[b.name]))
    assert r.status in (403, 404, 503)
    # admins do not get in either, unless admin_access is on
    r = await c.get(f"/user/{a.name}/api/status", headers=h(tok["mhhs_admin"]))
    assert r.status == 403

    # the hub restarts; the server and its kernel are re-adopted, not restarted
    pid = model["servers"][""]["state"]["pid"]
    await c.close()
    # ... and removes what killed hubs and servers left: the groups of its users without a
    # server, another hub's empty user group (not one with a server's group below it), the
    # kernel dirs of its idle users' dead servers and of accounts that are gone
    planted = plant_leftovers(b.name, b.uid)
    c2 = TestClient(TestServer(make_app(cfg)))
    await c2.start_server()
    try:
        m2 = await (await c2.get(f"/hub/api/users/{a.name}", headers=h(tok[a.name]))).json()
        assert m2["servers"][""]["state"]["pid"] == pid
        r = await c2.get(f"/user/{a.name}/api/kernels/{kernel['id']}", headers=h(tok[a.name]))
        assert r.status == 200
        assert "2" in await run_code(c2, a.name, tok[a.name], kernel["id"], "print(1+1)")
        assert any(d.exists() for d in UserCgroup.for_user(a.name).dirs) or not detect().version
        dead_a = kernel_dir(a.uid, dead=True)
        r = await c2.delete(f"/hub/api/users/{a.name}/server", headers=h(tok[a.name]))
        assert r.status in (202, 204)
        for _ in range(100):
            m3 = await (await c2.get(f"/hub/api/users/{a.name}", headers=h(tok[a.name]))).json()
            if m3["server"] is None and m3["pending"] is None:
                break
            await asyncio.sleep(0.1)
        assert m3["server"] is None
        r = await c2.get(f"/user/{a.name}/api/status", headers=h(tok[a.name]))
        assert r.status == 503 and "not running" in (await r.json())["message"]
        assert await gone(pid)
        check_tidied(planted)
        # a stopped server's user group goes with its last server, and its dead kernel dirs
        assert not any(d.exists() for d in UserCgroup.for_user(a.name).dirs)
        assert not dead_a.exists()
    finally:
        await c2.close()
        remove_planted(planted)


def kernel_dir(uid: int, dead: bool) -> Path:
    """A kernel dir as a server makes it (0700, the user's), its server long gone."""
    d = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
    (d / PID_FILE).write_text(str(2**22 + 1 if dead else os.getpid()))  # above pid_max
    os.chown(d, uid, uid)
    os.utime(d, (time.time() - 3600, time.time() - 3600))
    return d


def unused_uid() -> int:
    uid = 64000
    while True:
        try:
            pwd.getpwuid(uid)
            uid += 1
        except KeyError:
            return uid


def plant_leftovers(idle_user: str, idle_uid: int) -> dict[str, list[Path]]:
    idle = UserCgroup.for_user(idle_user)
    other_empty = UserCgroup.for_user(f"mhhs_gone{os.getpid()}")
    other_busy = UserCgroup.for_user(f"mhhs_busy{os.getpid()}")
    for d in [*idle.dirs, *other_empty.dirs, *other_busy.dirs]:
        d.mkdir(exist_ok=True)
    for d in [*idle.dirs, *other_busy.dirs]:
        (d / "_default").mkdir(exist_ok=True)
    return {
        "removed": [
            *idle.dirs,
            *other_empty.dirs,
            kernel_dir(idle_uid, dead=True),
            kernel_dir(unused_uid(), dead=True),
        ],
        "kept": [*(d / "_default" for d in other_busy.dirs), kernel_dir(0, dead=True)],
    }


def check_tidied(planted: dict[str, list[Path]]) -> None:
    assert [d for d in planted["removed"] if d.exists()] == []
    assert [d for d in planted["kept"] if not d.exists()] == []


def remove_planted(planted: dict[str, list[Path]]) -> None:
    for d in planted["kept"] + planted["removed"]:
        if d.name == "_default":
            with contextlib.suppress(OSError):
                d.rmdir()
                d.parent.rmdir()
        else:
            shutil.rmtree(d, ignore_errors=True)


async def test_browser_login_spawns_and_lands_on_server(aiohttp_client, data_dir, make_system_user):
    u = make_system_user("mhhs_carol")
    c = await aiohttp_client(make_app(hub_config(data_dir)))
    r = await login(c, u.name, u.password)
    assert r.status == 302 and "/hub/spawn-pending/" in r.headers["Location"]
    for _ in range(200):
        r = await c.get(
            r.headers["Location"] if r.status == 302 else f"/hub/spawn-pending/{u.name}",
            allow_redirects=False,
        )
        if r.status == 302 and r.headers["Location"].startswith(f"/user/{u.name}/"):
            break
        await asyncio.sleep(0.1)
    r = await c.get(f"/user/{u.name}/tree/")
    assert r.status == 200 and "text/html" in r.headers["Content-Type"]
    # the hub's cookies never reach the user server: it would show them in a kernel
    r = await c.post(f"/user/{u.name}/api/contents", json={"type": "notebook"})
    assert r.status == 403  # cookie-authenticated POST without the XSRF header
    from conftest import xsrf_of

    r = await c.post(
        f"/user/{u.name}/api/contents",
        json={"type": "notebook"},
        headers={"X-XSRFToken": xsrf_of(c)},
    )
    assert r.status == 201


async def test_spawn_failure_shows_log_tail(aiohttp_client, data_dir, make_system_user):
    u = make_system_user("mhhs_dave")
    cfg = hub_config(data_dir, spawner__cmd=["/bin/sh", "-c", "echo boom-from-server >&2; exit 3"])
    tok = await make_tokens(cfg, [u.name])
    c = await aiohttp_client(make_app(cfg))
    r = await c.post(f"/hub/api/users/{u.name}/server", headers=h(tok[u.name]))
    body = await r.json()
    assert r.status == 502 and "3" in body["message"]
    assert "boom-from-server" in body["log_tail"]


async def test_concurrent_spawn_limit_gives_429(aiohttp_client, data_dir, make_system_user):
    a = make_system_user("mhhs_erin")
    b = make_system_user("mhhs_fred")
    cfg = hub_config(
        data_dir,
        spawner__concurrent_spawn_limit=1,
        spawner__cmd=["/bin/sh", "-c", "sleep 30"],
        spawner__start_timeout=20,
    )
    tok = await make_tokens(cfg, [a.name, b.name])
    c = await aiohttp_client(make_app(cfg))
    first = asyncio.create_task(c.post(f"/hub/api/users/{a.name}/server", headers=h(tok[a.name])))
    for _ in range(100):
        m = await (await c.get(f"/hub/api/users/{a.name}", headers=h(tok[a.name]))).json()
        if m["pending"] == "spawn":
            break
        await asyncio.sleep(0.05)
    r = await c.post(f"/hub/api/users/{b.name}/server", headers=h(tok[b.name]))
    assert r.status == 429 and int(r.headers["Retry-After"]) > 0
    assert "concurrent_spawn_limit" in (await r.json())["message"]
    r = await c.get(f"/hub/user/{b.name}/", headers=h(tok[b.name]) | {"Accept": "text/html"})
    await c.delete(f"/hub/api/users/{a.name}/server", headers=h(tok[a.name]))
    first.cancel()


async def test_users_cannot_reach_each_others_files(aiohttp_client, data_dir, make_system_user):
    a = make_system_user("mhhs_gail")
    b = make_system_user("mhhs_hugo")
    secret = os.path.join(b.home, "secret.txt")
    with open(secret, "w") as f:
        f.write("hugo's answers\n")
    os.chown(secret, b.uid, b.gid)
    os.chmod(secret, 0o600)
    os.chmod(b.home, 0o700)
    cfg = hub_config(data_dir)
    tok = await make_tokens(cfg, [a.name])
    c = await aiohttp_client(make_app(cfg))
    await start(c, a.name, tok[a.name])
    # through the contents API of her own server: no way out of her notebook dir
    for path in (
        f"../{b.name}/secret.txt",
        f"..%2F{b.name}%2Fsecret.txt",
        f"/home/{b.name}/secret.txt",
    ):
        r = await c.get(f"/user/{a.name}/api/contents/{path}", headers=h(tok[a.name]))
        assert r.status in (400, 403, 404), path
        assert "answers" not in await r.text()
    os.symlink(secret, os.path.join(a.home, "peek.txt"))
    r = await c.get(f"/user/{a.name}/api/contents/peek.txt", headers=h(tok[a.name]))
    assert r.status in (403, 404) and "answers" not in await r.text()
    r = await c.get(f"/user/{a.name}/files/peek.txt", headers=h(tok[a.name]))
    assert r.status in (403, 404) and "answers" not in await r.text()
    # and her code runs as her: Unix permissions stop it
    kernel = await (
        await c.post(f"/user/{a.name}/api/kernels", headers=h(tok[a.name]), json={})
    ).json()
    out = await run_code(c, a.name, tok[a.name], kernel["id"], f"open({secret!r}).read()")
    assert "ERROR PermissionError" in out
    await c.delete(f"/hub/api/users/{a.name}/server", headers=h(tok[a.name]))
