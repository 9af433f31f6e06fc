"""Running it for real: culling, shutdown with and without cleanup_servers, real users."""

from __future__ import annotations

import asyncio
import os
import signal

from aiohttp.test_utils import TestClient, TestServer
from conftest import gone, hub_config, needs_root
from test_hub_spawn import h, make_tokens, start

from minihub.app import make_app

pytestmark = needs_root


async def test_culler_stops_idle_and_keeps_active(data_dir, make_system_user):
    busy = make_system_user("mhop_busy")
    idle = make_system_user("mhop_idle")
    cfg = hub_config(data_dir, culler__timeout=2, culler__every=1)
    tok = await make_tokens(cfg, [busy.name, idle.name, "mhop_admin"], admin="mhop_admin")
    c = TestClient(TestServer(make_app(cfg)))
    await c.start_server()
    try:
        await start(c, busy.name, tok[busy.name])
        m_idle = await start(c, idle.name, tok[idle.name])
        idle_pid = m_idle["servers"][""]["state"]["pid"]
        culled = False
        for _ in range(100):  # bounded: 100 × 0.3 s
            r = await c.get(f"/user/{busy.name}/api/contents", headers=h(tok[busy.name]))
            assert r.status == 200
            m = await (await c.get(f"/hub/api/users/{idle.name}", headers=h(tok[idle.name]))).json()
            if m["server"] is None:
                culled = True
                break
            await asyncio.sleep(0.3)
        assert culled, "the idle server was never culled"
        m = await (await c.get(f"/hub/api/users/{busy.name}", headers=h(tok[busy.name]))).json()
        assert m["server"] is not None
        assert await gone(idle_pid)
        metrics = await (await c.get("/hub/metrics", headers=h(tok["mhop_admin"]))).text()
        assert "minihub_culled_servers_total 1" in metrics
        await c.delete(f"/hub/api/users/{busy.name}/server", headers=h(tok[busy.name]))
    finally:
        await c.close()


async def test_shutdown_leaves_servers_unless_cleanup(data_dir, make_system_user):
    u = make_system_user("mhop_keep")
    for cleanup in (False, True):
        cfg = hub_config(data_dir, hub__cleanup_servers=cleanup)
        tok = await make_tokens(cfg, [u.name])
        c = TestClient(TestServer(make_app(cfg)))
        await c.start_server()
        m = await start(c, u.name, tok[u.name])
        pid = m["servers"][""]["state"]["pid"]
        await c.close()
        alive = os.path.exists(f"/proc/{pid}")
        if cleanup:
            assert await gone(pid)
        else:
            assert alive
            # the next hub re-adopts it; then clean up for the next round
            c = TestClient(TestServer(make_app(cfg)))
            await c.start_server()
            m = await (await c.get(f"/hub/api/users/{u.name}", headers=h(tok[u.name]))).json()
            assert m["servers"][""]["state"]["pid"] == pid
            await c.delete(f"/hub/api/users/{u.name}/server", headers=h(tok[u.name]))
            await c.close()


async def test_dead_server_is_noticed_and_user_told(data_dir, make_system_user):
    u = make_system_user("mhop_dies")
    cfg = hub_config(data_dir)
    tok = await make_tokens(cfg, [u.name])
    c = TestClient(TestServer(make_app(cfg)))
    await c.start_server()
    try:
        m = await start(c, u.name, tok[u.name])
        os.kill(m["servers"][""]["state"]["pid"], signal.SIGKILL)
        r = None
        for _ in range(50):
            r = await c.get(f"/user/{u.name}/api/status", headers=h(tok[u.name]))
            if r.status >= 500:
                break
            await asyncio.sleep(0.1)
        assert r is not None and r.status in (502, 503)
        for _ in range(30):  # the exit status may still be on its way from the fork server
            m = await (await c.get(f"/hub/api/users/{u.name}", headers=h(tok[u.name]))).json()
            if m["server"] is None:
                break
            await asyncio.sleep(0.1)
        assert m["server"] is None
        r = await c.get(f"/hub/user/{u.name}/", headers=h(tok[u.name]))
        text = await r.text()
        assert "signal 9" in text or "stopped" in text
    finally:
        await c.close()
