"""Kernels forked from the user server's pre-imported zygote ("kernel_zygote": true).

A forked kernel runs as the user, is the zygote's child, listens on no TCP port, answers
interrupt, restart and SIGKILL like an exec'd kernel, and shares pages with the zygote.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_singleuser_harness import KernelClient, Server, start_server
from test_singleuser_transport import delete_kernel, new_kernel, tcp_listeners

pytestmark = pytest.mark.timeout(180)

WHO = (
    "import os, sys, json\n"
    "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'pid': os.getpid(),\n"
    "    'ppid': os.getppid(), 'sid': os.getsid(0), 'cwd': os.getcwd(),\n"
    "    'session': os.environ.get('JPY_SESSION_NAME'), 'path': sys.path}))"
)


@pytest.fixture(scope="module")
def server(make_system_user: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("kz") / "z.log"
    srv = start_server(make_system_user("mhkz_a"), log, kernel_zygote=True)
    yield srv
    srv.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
        yield s


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def zygote_pid(server: Server) -> int:
    """The server's only child (forked at its start); kernels are the zygote's children."""
    zygotes = children(server.proc.pid)
    assert len(zygotes) == 1, [cmdline(p) for p in zygotes]
    return zygotes[0]


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise AssertionError("no Pss in smaps_rollup")


async def who(kc: KernelClient) -> dict[str, Any]:
    out = await kc.run(WHO)
    assert out.reply and out.reply["status"] == "ok", out.all
    info: dict[str, Any] = json.loads(out.stdout)
    return info


async def new_kernel_at(http: aiohttp.ClientSession, server: Server, path: str) -> str:
    body = {"kernel": {"name": "python3"}, "path": path, "type": "notebook", "name": ""}
    async with http.post(server.url + "api/sessions", json=body, headers=server.headers) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["kernel"]["id"])


async def test_forked_kernel_runs_as_the_user_without_tcp(
    http: aiohttp.ClientSession, server: Server
) -> None:
    os.makedirs(os.path.join(server.user.home, "sub"), exist_ok=True)
    os.chown(os.path.join(server.user.home, "sub"), server.user.uid, server.user.gid)
    kid = await new_kernel_at(http, server, "sub/nb.ipynb")
    kc = await KernelClient.connect(http, server, kid)
    info = await who(kc)
    zygote = zygote_pid(server)
    assert info["ppid"] == zygote  # forked, not exec'd by the server
    assert (info["uid"], info["gid"]) == (server.user.uid, server.user.gid)
    assert info["sid"] == info["pid"]  # its own session: interrupts reach its whole group
    assert os.path.realpath(info["cwd"]) == os.path.realpath(os.path.join(server.user.home, "sub"))
    assert info["session"] == os.path.join(server.user.home, "sub/nb.ipynb")
    assert tcp_listeners(server.user.uid) == []
    # sys.path as an exec'd kernel has it: the user's python's, plus '' (ipykernel adds it).
    plain = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", "import sys, json; print(json.dumps(sys.path[1:]))"],
        user=server.user.uid,
        group=server.user.gid,
        env={"HOME": server.user.home, "PATH": "/usr/bin:/bin"},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert [p for p in info["path"] if p] == json.loads(plain.stdout)
    assert "" in info["path"]
    out = await kc.run("print(1 + 1)")
    assert out.stdout == "2\n"
    await kc.ws.close()
    await delete_kernel(http, server, kid)


async def test_interrupt_restart_and_sigkill(http: aiohttp.ClientSession, server: Server) -> None:
    kid = await new_kernel(http, server)
    kc = await KernelClient.connect(http, server, kid, v1=True)
    zygote = zygote_pid(server)
    first = await who(kc)
    assert first["ppid"] == zygote
    await kc.run("x = 1")
    msg_id = await kc.execute("import time; print('sleeping', flush=True); time.sleep(60)")
    await kc.wait_for(lambda m: m["header"]["msg_type"] == "stream")
    async with http.post(f"{server.url}api/kernels/{kid}/interrupt", headers=server.headers) as r:
        assert r.status == 204
    out = await kc.collect(msg_id, timeout=30)
    assert out.error and out.error["ename"] == "KeyboardInterrupt"
    async with http.post(f"{server.url}api/kernels/{kid}/restart", headers=server.headers) as r:
        assert r.status == 200 and (await r.json())["id"] == kid
    out = await kc.run("print('x' in globals())")
    assert out.stdout == "False\n"
    second = await who(kc)
    assert second["ppid"] == zygote and second["pid"] != first["pid"]
    assert not os.path.exists(f"/proc/{first['pid']}")  # the old one is gone, not a zombie
    # Killed behind the server's back: the zygote reports the status, the kernel comes back.
    os.kill(second["pid"], signal.SIGKILL)
    status = await kc.wait_for(
        lambda m: (
            m["header"]["msg_type"] == "status" and m["content"]["execution_state"] == "restarting"
        )
    )
    assert "SIGKILL" in status["content"]["reason"]
    third = await who(kc)
    assert third["ppid"] == zygote and third["pid"] != second["pid"]
    await kc.ws.close()
    await delete_kernel(http, server, kid)
    assert not os.path.exists(f"/proc/{third['pid']}")


async def test_forked_kernels_share_memory(http: aiohttp.ClientSession, server: Server) -> None:
    kids = [await new_kernel(http, server) for _ in range(2)]
    pids = []
    for kid in kids:
        kc = await KernelClient.connect(http, server, kid)
        pids.append((await who(kc))["pid"])
        await kc.ws.close()
    zygote = zygote_pid(server)
    per_kernel = [pss_kib(p) for p in pids]
    rss = [
        int(line.split()[1])
        for p in pids
        for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines()
        if line.startswith("Rss:")
    ]
    print("PSS KiB: zygote", pss_kib(zygote), "kernels", per_kernel, "RSS KiB", rss)
    # Pages inherited from the zygote are shared: each kernel's PSS is well below its RSS.
    for p, r in zip(per_kernel, rss, strict=True):
        assert p < r * 0.8, (per_kernel, rss)
    for kid in kids:
        await delete_kernel(http, server, kid)


async def test_sigterm_stops_kernels_and_zygote(
    make_system_user: Any, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    srv = start_server(make_system_user("mhkz_b"), tmp_path / "b.log", kernel_zygote=True)
    try:
        kid = await new_kernel(http, srv)
        kc = await KernelClient.connect(http, srv, kid)
        pid = (await who(kc))["pid"]
        await kc.ws.close()
        zygote = zygote_pid(srv)
    finally:
        assert srv.stop() == 0
    # The zygote, once the server is gone, may be a zombie for a moment until init reaps it.
    for _ in range(100):
        if not any(os.path.exists(f"/proc/{p}") for p in (pid, zygote)):
            break
        await asyncio.sleep(0.1)
    assert not os.path.exists(f"/proc/{pid}")
    assert not os.path.exists(f"/proc/{zygote}")
