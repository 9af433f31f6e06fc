"""The kernel template (minihub/kernels/template.py): a root hub with a user environment
forks each server's kernel zygote from one process that has imported ipykernel.

Through the hub, with real users: both users' zygotes are the template's children, run as
their user with only that user's groups, in their server's cgroup, with an environment of
their own (nothing of the hub's in it); kernels work; stopping a server ends its zygote and
kernels; a dead template is replaced; `kernel_template = false` goes back to a zygote exec'd
by the server. A template starts in the background: the servers started meanwhile exec
their own zygote.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from conftest import gone, hub_config, needs_root
from test_hub_spawn import h, make_tokens, run_code, start

from minihub.app import make_app
from minihub.context import PARTS
from minihub.procfs import proc_stat
from minihub.spawner.kernel_template import TEMPLATE_ENV

pytestmark = needs_root

WHO = (
    "import os, sys, json\n"
    "print(json.dumps({'pid': os.getpid(), 'ppid': os.getppid(), 'uid': os.getuid(),\n"
    "    'python': sys.executable}))"
)


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")


def status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [p.split(b"=", 1) for p in f.read().split(b"\0") if b"=" in p]
    return {k.decode(): v.decode() for k, v in pairs}


def template_pids() -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:  # the zygotes keep its command line too, as their users
                root = status(int(entry))["Uid"].split()[0] == "0"
                ours = status(int(entry))["PPid"] == str(os.getpid())  # not another hub's
                if root and ours and "minihub.kernels import template" in cmdline(int(entry)):
                    found.add(int(entry))
            except (OSError, KeyError, IndexError):
                continue
    return found


async def template_started(c: TestClient, name: str, token: str, old: set[int]) -> int:
    """A spawn starts the template in the background (that server execs its own zygote);
    wait for it, then stop that server."""
    await start(c, name, token)
    try:
        for _ in range(300):  # bounded: 300 x 0.1 s for its imports
            new = template_pids() - old
            if new:
                return new.pop()
            await asyncio.sleep(0.1)
        raise AssertionError("no kernel template started")
    finally:
        await c.delete(f"/hub/api/users/{name}/server", headers=h(token))
        for _ in range(300):  # bounded: 30 s until it is stopped, not only asked to stop
            model = await (await c.get(f"/hub/api/users/{name}", headers=h(token))).json()
            if model["server"] is None and model["pending"] is None:
                break
            await asyncio.sleep(0.05)


async def template_ready(c: TestClient) -> None:
    """Until the hub's template has imported what it preloads and serves (it starts in the
    background; servers spawned before then exec their own zygote)."""
    templates = c.server.app[PARTS].servers.spawner._templates  # type: ignore[attr-defined]
    for _ in range(300):  # bounded: 30 s
        if templates and all(t._sock is not None for t in templates.values()):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the kernel template never became ready")


async def kernel_of(c: TestClient, name: str, token: str) -> dict[str, Any]:
    r = await c.post(f"/user/{name}/api/kernels", headers=h(token), json={"name": "python3"})
    assert r.status == 201, await r.text()
    kid = (await r.json())["id"]
    return json.loads(await run_code(c, name, token, kid, WHO))


async def test_zygotes_fork_from_one_template_as_each_user(data_dir, make_system_user):
    users = [make_system_user("mhkt_ann"), make_system_user("mhkt_bob")]
    cfg = hub_config(data_dir)
    tok = await make_tokens(cfg, [u.name for u in users])
    c = TestClient(TestServer(make_app(cfg)))
    await c.start_server()
    try:
        await template_started(c, users[0].name, tok["mhkt_ann"], template_pids())
        await template_ready(c)
        seen = {}
        for u in users:
            server_pid = (await start(c, u.name, tok[u.name]))["servers"][""]["state"]["pid"]
            who = await kernel_of(c, u.name, tok[u.name])
            zygote = who["ppid"]
            zstat = proc_stat(zygote)
            assert zstat is not None
            seen[u.name] = (server_pid, who, zygote, zstat.ppid)
            assert who["uid"] == u.uid and who["python"] == "/opt/minihub/user/bin/python"
            # the zygote: the user's, only the user's groups, the server's cgroup, no hub env
            st = status(zygote)
            assert st["Uid"].split() == [str(u.uid)] * 4
            assert st["Gid"].split() == [str(u.gid)] * 4
            assert st["Groups"].split() == [str(g) for g in os.getgrouplist(u.name, u.gid)]
            assert st["CapEff"] == "0000000000000000"
            with open(f"/proc/{zygote}/cgroup") as f:
                assert f"/minihub/{u.name}/_default" in f.read()
            # /proc shows the environment it was exec'd with: the template's, not the hub's
            assert set(environ(zygote)) <= set(TEMPLATE_ENV)
            assert "minihub.kernels import template" in cmdline(zygote)
        (a_srv, a_who, a_zyg, a_tpl), (b_srv, b_who, b_zyg, b_tpl) = seen.values()
        assert a_tpl == b_tpl and a_zyg != b_zyg  # one template, a zygote per server
        assert status(a_tpl)["Uid"].split()[0] == "0"
        assert a_tpl not in (a_srv, b_srv)
        # stopping ann's server ends her zygote and kernel, not bob's
        r = await c.delete(f"/hub/api/users/{users[0].name}/server", headers=h(tok["mhkt_ann"]))
        assert r.status in (202, 204)
        assert await gone(a_zyg) and await gone(a_who["pid"])
        assert proc_stat(b_zyg) is not None and proc_stat(b_who["pid"]) is not None
        # a template that died is replaced at the next spawn
        os.kill(a_tpl, signal.SIGKILL)
        assert await gone(a_tpl)
        await template_started(c, users[0].name, tok["mhkt_ann"], {a_tpl})
        await template_ready(c)
        await start(c, users[0].name, tok["mhkt_ann"])
        who = await kernel_of(c, users[0].name, tok["mhkt_ann"])
        new_tpl = proc_stat(who["ppid"])
        assert new_tpl is not None and new_tpl.ppid != a_tpl
        assert "minihub.kernels import template" in cmdline(new_tpl.ppid)
        for u in users:
            await c.delete(f"/hub/api/users/{u.name}/server", headers=h(tok[u.name]))
    finally:
        await c.close()


async def test_without_the_template_the_server_execs_its_zygote(data_dir, make_system_user):
    u = make_system_user("mhkt_cy")
    cfg = hub_config(data_dir, spawner__kernel_template=False)
    tok = await make_tokens(cfg, [u.name])
    c = TestClient(TestServer(make_app(cfg)))
    await c.start_server()
    try:
        server_pid = (await start(c, u.name, tok[u.name]))["servers"][""]["state"]["pid"]
        who = await kernel_of(c, u.name, tok[u.name])
        zstat = proc_stat(who["ppid"])
        assert zstat is not None and zstat.ppid == server_pid
        assert "template" not in cmdline(who["ppid"])
        await c.delete(f"/hub/api/users/{u.name}/server", headers=h(tok[u.name]))
        for _ in range(50):  # bounded: the server's end closes, the zygote follows
            if proc_stat(who["ppid"]) is None:
                break
            await asyncio.sleep(0.1)
    finally:
        await c.close()
