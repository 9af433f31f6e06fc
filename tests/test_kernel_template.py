"""The kernel template (minihub/kernels/template.py): a root hub with a user environment
forks every server's kernels from one process that has imported ipykernel.

Through the hub, with real users: both users' kernels are the template's children, run as
their user with only that user's groups, in their server's cgroup, with an environment of
their own (nothing of the hub's in it); a server spawned while the template still imports
waits for it instead of exec'ing a zygote of its own; stopping a server ends its kernels and
no one else's; a dead template takes no kernel with it and is replaced at the next spawn;
`kernel_template = false` goes back to a zygote exec'd by the server.

On a channel, straight to the template: a kernel becomes the channel's user whatever the
request says, holds none of the template's sockets, has its exit reported; a channel that
sends what is not a request is closed and the others go on; the template outlives the hub
while a channel is open and ends with the last.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from conftest import gone, hub_config, needs_root
from test_hub_spawn import h, make_tokens, run_code, start

from minihub.app import make_app
from minihub.context import PARTS
from minihub.procfs import proc_stat
from minihub.spawner.kernel_template import TEMPLATE_ENV, KernelTemplate

pytestmark = needs_root
USER_PYTHON = "/opt/minihub/user/bin/python"

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


def sockets(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


def the_template(c: TestClient) -> KernelTemplate:
    templates = c.server.app[PARTS].servers.spawner._templates  # type: ignore[attr-defined]
    assert len(templates) == 1
    return next(iter(templates.values()))


async def kernel_of(c: TestClient, name: str, token: str) -> dict[str, Any]:
    r = await c.post(f"/user/{name}/api/kernels", headers=h(token), json={"name": "python3"})
    assert r.status == 201, await r.text()
    kid = (await r.json())["id"]
    return json.loads(await run_code(c, name, token, kid, WHO))


async def stop(c: TestClient, name: str, token: str) -> None:
    r = await c.delete(f"/hub/api/users/{name}/server", headers=h(token))
    assert r.status in (202, 204)
    for _ in range(300):  # bounded: 30 s until it is stopped, not only asked to stop
        model = await (await c.get(f"/hub/api/users/{name}", headers=h(token))).json()
        if model["server"] is None and model["pending"] is None:
            return
        await asyncio.sleep(0.1)


async def test_kernels_fork_from_one_template_as_each_user(data_dir, make_system_user):
    users = [make_system_user("mhkt_ann"), make_system_user("mhkt_bob")]
    cfg = hub_config(data_dir)
    tok = await make_tokens(cfg, [u.name for u in users])
    c = TestClient(TestServer(make_app(cfg)))
    await c.start_server()
    try:
        seen = {}
        for u in users:  # ann's spawn starts the template: her first kernel waits for it
            server_pid = (await start(c, u.name, tok[u.name]))["servers"][""]["state"]["pid"]
            who = await kernel_of(c, u.name, tok[u.name])
            seen[u.name] = (server_pid, who)
            assert who["uid"] == u.uid and who["python"] == USER_PYTHON
            # the kernel: the user's, only the user's groups, the server's cgroup, no hub env
            st = status(who["pid"])
            assert st["Uid"].split() == [str(u.uid)] * 4
            assert st["Gid"].split() == [str(u.gid)] * 4
            assert st["Groups"].split() == [str(g) for g in os.getgrouplist(u.name, u.gid)]
            assert st["CapEff"] == "0000000000000000"
            with open(f"/proc/{who['pid']}/cgroup") as f:
                assert f"/minihub/{u.name}/_default" in f.read()
            # /proc shows the environment it was exec'd with: the template's, not the hub's
            assert set(environ(who["pid"])) <= set(TEMPLATE_ENV)
        tpl = the_template(c).pid
        (a_srv, a_who), (b_srv, b_who) = seen.values()
        assert a_who["ppid"] == b_who["ppid"] == tpl  # one template, no zygote between
        assert "minihub.kernels import template" in cmdline(tpl)
        assert status(tpl)["Uid"].split()[0] == "0" and tpl not in (a_srv, b_srv)
        # stopping ann's server ends her kernel, not bob's
        await stop(c, users[0].name, tok["mhkt_ann"])
        assert await gone(a_who["pid"])
        assert proc_stat(b_who["pid"]) is not None
        # a template that died takes no kernel with it and is replaced at the next spawn
        os.kill(tpl, signal.SIGKILL)
        assert await gone(tpl)
        await asyncio.sleep(0.5)  # would a parent poller end bob's kernel?
        assert proc_stat(b_who["pid"]) is not None
        await start(c, users[0].name, tok["mhkt_ann"])
        who = await kernel_of(c, users[0].name, tok["mhkt_ann"])
        assert who["ppid"] == the_template(c).pid != tpl
        # bob's server lost its channel: its next kernel is exec'd, and works
        who = await kernel_of(c, users[1].name, tok["mhkt_bob"])
        assert who["uid"] == users[1].uid and who["ppid"] != tpl
        for u in users:
            await stop(c, u.name, tok[u.name])
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


# --- straight to the template, as a server would speak on its channel ----------------------


class Channel:
    """The server's end of a channel; the kernels' stdout is a pipe the test reads."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.sock.settimeout(30)
        self.out_r, out_w = os.pipe()
        socket.send_fds(self.sock, [b"F"], [out_w, out_w])
        os.close(out_w)
        self.buf = b""
        self.exits: dict[int, int] = {}

    def read(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            data = self.sock.recv(1 << 16)
            if not data:
                raise EOFError
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return dict(json.loads(line))

    def fork(self, rid: int, code: str, cwd: str, **extra: Any) -> int:
        req = {"id": rid, "argv": [USER_PYTHON, "-c", code], "env": {"X": "1"}, "cwd": cwd}
        self.sock.sendall(json.dumps({**req, **extra}).encode() + b"\n")
        while "exit" in (reply := self.read()):
            self.exits[reply["exit"]] = reply["status"]
        assert reply["id"] == rid, reply
        return int(reply["pid"])

    def exit_of(self, pid: int) -> int:
        while pid not in self.exits:
            msg = self.read()
            self.exits[msg["exit"]] = msg["status"]
        return self.exits[pid]

    def printed(self) -> dict[str, Any]:
        line = b""
        while not line.endswith(b"\n"):
            chunk = os.read(self.out_r, 1)
            assert chunk, "the kernel printed nothing"
            line += chunk
        return dict(json.loads(line))

    def close(self) -> None:
        self.sock.close()
        os.close(self.out_r)


def account(u: Any) -> dict[str, Any]:
    return {
        "uid": u.uid,
        "gid": u.gid,
        "groups": os.getgrouplist(u.name, u.gid),
        "cgroup": [],
        "nproc": 0,
        "umask": 0o077,
        "oom_score_adj": 500,
        "cwd": u.home,
        "env": {"HOME": u.home, "USER": u.name, "PATH": "/usr/bin:/bin"},
    }


async def channel(tpl: KernelTemplate, u: Any) -> Channel:
    fd = await asyncio.to_thread(tpl.channel_for, account(u))
    assert fd is not None
    ch = Channel(fd)
    assert "ready" in await asyncio.to_thread(ch.read)  # once the template has imported
    return ch


# a kernel's stdout is the server's log (here a pipe): flushed, or it waits for the exit
SLEEPER = WHO.replace("}))", "}), flush=True)") + "\nimport time\ntime.sleep(60)"


async def test_a_channel_forks_only_as_its_user(make_system_user):
    ann, bob = make_system_user("mhkt_dee"), make_system_user("mhkt_eve")
    tpl = KernelTemplate(USER_PYTHON)
    a = b = None
    try:
        a = await channel(tpl, ann)
        b = await channel(tpl, bob)
        assert proc_stat(tpl.pid) is not None and proc_stat(tpl.pid).ppid != os.getpid()
        # a request that names another user (root, bob) is still ann's kernel
        pid = await asyncio.to_thread(a.fork, 1, SLEEPER, ann.home, uid=0, gid=0)
        who = await asyncio.to_thread(a.printed)
        assert who["pid"] == pid and who["uid"] == ann.uid and who["ppid"] == tpl.pid
        assert status(pid)["Uid"].split() == [str(ann.uid)] * 4
        assert status(pid)["CapEff"] == "0000000000000000"
        # it holds none of the template's sockets: not the hub's, not bob's channel
        assert not sockets(pid) & sockets(tpl.pid)
        # an exit is reported on its own channel
        short = await asyncio.to_thread(a.fork, 2, "raise SystemExit(3)", ann.home)
        assert await asyncio.to_thread(a.exit_of, short) == 3
        # bob's channel: what is not a request closes it; ann's and the template go on
        b.sock.sendall(b'{"id": "x", "argv": 1}\n')
        try:
            got = await asyncio.to_thread(b.read)
        except EOFError:
            got = None
        assert got is None
        pid2 = await asyncio.to_thread(a.fork, 3, SLEEPER, ann.home)
        assert (await asyncio.to_thread(a.printed))["pid"] == pid2
        # the hub gone, the template serves ann's channel; it ends when that closes
        await asyncio.to_thread(tpl.close)
        pid4 = await asyncio.to_thread(a.fork, 4, "pass", "/nonexistent-cwd")
        assert await asyncio.to_thread(a.exit_of, pid4) == 1  # its chdir failed, as the user
        a.close()
        a = None
        assert await gone(pid) and await gone(pid2)  # her kernels went with her channel
        assert await gone(tpl.pid)
    finally:
        for ch in (a, b):
            if ch is not None:
                ch.close()
        tpl.close()
        if tpl.pid and proc_stat(tpl.pid) is not None:
            os.kill(tpl.pid, signal.SIGKILL)
