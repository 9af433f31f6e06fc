"""Issue 12.8: nothing a server started outlives it, and a restarted hub reconciles.

A user's server that dies (OOM, killed by its user) takes its kernels with it at once; a hub
killed with -9 while it was starting a server stops that server when it comes back, so each
user has at most one server.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import aiohttp
from conftest import needs_root
from helpers import add_users, execute
from test_config_cli import MINIHUB, free_port, start_hub
from test_hub_spawn import h

from minihub import procfs


def _rows(data: Path) -> list[tuple[str, int]]:
    db = sqlite3.connect(f"file:{data / 'minihub.sqlite'}?mode=ro", uri=True)
    try:
        return [
            (str(r[0]), int(json.loads(r[1])["pid"]))
            for r in db.execute("SELECT status, state FROM servers")
        ]
    finally:
        db.close()


def _alive(pid: int) -> bool:
    return procfs.alive(pid)


async def _until(check, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    for _ in range(int(seconds / 0.1)):
        if check():
            return True
        await asyncio.sleep(0.1)
    return bool(check())


async def _kernel_pid(s: aiohttp.ClientSession, base: str, user: str) -> int:
    kernel = await (await s.post(f"{base}/user/{user}/api/kernels", json={})).json()
    url = f"{base}/user/{user}/api/kernels/{kernel['id']}/channels"
    return int((await execute(s, url, "import os; print(os.getpid())")).strip())


def _hub(tmp_path: Path, name: str, *extra: str) -> tuple[list[str], int, Path, str]:
    data, port = tmp_path / "data", free_port()
    cmd = [*MINIHUB, "--data-dir", str(data), "--port", str(port), *extra]
    token = add_users(data, [name])[name]
    return cmd, port, data, token


async def _wait_running(s: aiohttp.ClientSession, base: str, name: str) -> None:
    for _ in range(300):
        if (await (await s.get(f"{base}/hub/api/users/{name}")).json())["server"]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("server never became ready")


@needs_root
async def test_a_dead_servers_kernels_go_with_it(tmp_path, make_system_user):
    u = make_system_user("mhor_kern")
    cmd, port, data, token = _hub(tmp_path, u.name)
    log = tmp_path / "hub.log"
    hub = start_hub(cmd, port, log)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(headers=h(token)) as s:
            assert (await s.post(f"{base}/hub/api/users/{u.name}/server")).status in (201, 202)
            await _wait_running(s, base, u.name)
            kernel = await _kernel_pid(s, base, u.name)
            [(state, server)] = _rows(data)
            assert state == "running" and _alive(kernel) and _alive(server)
            # The user kills her own server (the OOM killer would do the same).
            subprocess.run(["runuser", "-u", u.name, "--", "kill", "-9", str(server)], check=True)
            assert await _until(lambda: not _alive(kernel), 15), "the kernel outlived its server"
            model = await (await s.get(f"{base}/hub/api/users/{u.name}")).json()
            assert model["server"] is None and _rows(data) == []
            # and the user simply starts a new one
            assert (await s.post(f"{base}/hub/api/users/{u.name}/server")).status in (201, 202)
            await _wait_running(s, base, u.name)
            assert (await s.get(f"{base}/user/{u.name}/api/status")).status == 200
    finally:
        hub.terminate()
        hub.wait(20)
    assert "Traceback" not in log.read_text()


SLOW_SERVER = "import time; time.sleep(60)"  # a server that takes its time to become ready


@needs_root
async def test_a_hub_killed_mid_spawn_stops_that_server_when_it_returns(tmp_path, make_system_user):
    u = make_system_user("mhor_dup")
    cmd, port, data, token = _hub(tmp_path, u.name)
    python = cmd[0]
    cfg = tmp_path / "minihub.toml"
    cfg.write_text(
        f"[spawner]\ncmd = {json.dumps([python, '-c', SLOW_SERVER])}\nstart_timeout = 120\n"
        "slow_spawn_timeout = 1\n"  # the 202 after 1 s, not 10: the server is still starting
    )
    cmd = [*MINIHUB, "-f", str(cfg), *cmd[len(MINIHUB) :]]
    log = tmp_path / "hub.log"
    hub = start_hub(cmd, port, log)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(headers=h(token)) as s:
            assert (await s.post(f"{base}/hub/api/users/{u.name}/server")).status == 202
            assert await _until(lambda: bool(_rows(data)), 20)
        [(state, pid)] = _rows(data)
        assert state == "starting" and _alive(pid)
    finally:
        hub.send_signal(signal.SIGKILL)
        hub.wait(20)
    assert _alive(pid)  # servers outlive the hub by design ...
    hub = start_hub(cmd, port, log)
    try:
        # ... but one the dead hub never finished starting is stopped, not left beside a new one
        assert await _until(lambda: not _alive(pid), 20), "the half-started server survived"
        assert _rows(data) == []
        async with aiohttp.ClientSession(headers=h(token)) as s:
            model = await (await s.get(f"{base}/hub/api/users/{u.name}")).json()
            assert model["server"] is None and not model["pending"]
    finally:
        hub.terminate()
        hub.wait(20)
    assert os.path.exists(log) and "Traceback" not in log.read_text()
