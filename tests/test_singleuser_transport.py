"""Kernels listen on unix sockets in the user's private dir, never on TCP, and lose nothing.

Another real user cannot reach a user's kernel sockets or connection file; kernels started
and used at once (repeatedly, several together, after SIGKILL) answer every request.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_singleuser_harness import KernelClient, Server, start_server

from minihub.kernels.transport import DIR_PREFIX, PID_FILE, RuntimeDir

pytestmark = pytest.mark.timeout(240)

WHERE = (
    "import json, os\n"
    "from ipykernel.kernelapp import IPKernelApp\n"
    "a = IPKernelApp.instance()\n"
    "print(json.dumps({'transport': a.transport, 'ip': a.ip, 'file': a.abs_connection_file,\n"
    "    'pid': os.getpid(), 'ports': [a.shell_port, a.iopub_port, a.stdin_port,\n"
    "    a.control_port, a.hb_port], 'fork_pipe': getattr(a.iopub_thread, '_pipe_port', None)}))"
)

# Run as another account: every way into the kernel's dir must be refused.
PROBE = r"""
import json, os, socket, sys, time
import zmq
where = json.loads(sys.argv[1])
paths = [f"{where['ip']}-{p}" for p in where['ports']]
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as e:
        out[name] = e.errno
attempt("listdir", lambda: os.listdir(os.path.dirname(where["file"])))
attempt("read_connection_file", lambda: open(where["file"]).read())
def raw_connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(paths[1])
    finally:
        s.close()
attempt("connect_iopub", raw_connect)
ctx = zmq.Context()
sub = ctx.socket(zmq.SUB)
sub.setsockopt(zmq.SUBSCRIBE, b"")
sub.connect(f"ipc://{paths[1]}")
got = sub.poll(int(float(sys.argv[2]) * 1000))
out["zmq_iopub_messages"] = bool(got)
sub.close(0)
ctx.term()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def server(make_system_user: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(make_system_user("mhkt_a"), tmp_path_factory.mktemp("kt") / "a.log")
    yield srv
    srv.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
        yield s


async def new_kernel(http: aiohttp.ClientSession, server: Server) -> str:
    async with http.post(server.url + "api/kernels", json={}, headers=server.headers) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["id"])


async def delete_kernel(http: aiohttp.ClientSession, server: Server, kid: str) -> None:
    async with http.delete(f"{server.url}api/kernels/{kid}", headers=server.headers) as r:
        assert r.status == 204


async def where(kc: KernelClient) -> dict[str, Any]:
    out = await kc.run(WHERE)
    assert out.reply and out.reply["status"] == "ok", out.all
    info: dict[str, Any] = json.loads(out.stdout)
    return info


def tcp_listeners(uid: int) -> list[tuple[str, int]]:
    """Listening TCP sockets (v4 and v6) owned by uid, from /proc/net: (address, port)."""
    found = []
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[7]) == uid:  # 0A: TCP_LISTEN
                addr, port = fields[1].rsplit(":", 1)
                found.append((addr, int(port, 16)))
    return found


def run_probe(user: Any, info: dict[str, Any], listen: float) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(info), str(listen)],
        user=user.uid,
        group=user.gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "HOME": user.home},
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


async def test_kernels_use_private_unix_sockets_not_tcp(
    http: aiohttp.ClientSession, server: Server
) -> None:
    kids = [await new_kernel(http, server) for _ in range(2)]
    fork_pipes = set()
    for kid in kids:
        kc = await KernelClient.connect(http, server, kid)
        info = await where(kc)
        # The debugger would listen on TCP (debugpy, no authentication): it is refused.
        req = {"seq": 1, "type": "request", "command": "initialize", "arguments": {}}
        msg_id = await kc.request("debug_request", req, channel="control")
        reply = await kc.wait_for(
            lambda m, i=msg_id: (
                m["parent_header"].get("msg_id") == i and m["header"]["msg_type"] == "debug_reply"
            )
        )
        assert reply["channel"] == "control"
        assert reply["content"]["success"] is False
        await kc.ws.close()
        assert info["transport"] == "ipc"
        fork_pipes.add(("0100007F", info["fork_pipe"]))
        runtime = os.path.dirname(info["file"])
        assert info["ip"].startswith(runtime + "/")
        st = os.stat(runtime)
        # jupyter_client adds the sticky bit to a connection file's dir.
        assert (st.st_uid, st.st_mode & 0o777) == (server.user.uid, 0o700)
        assert stat.S_IMODE(os.stat(info["file"]).st_mode) == 0o600
        for port in info["ports"]:
            assert stat.S_ISSOCK(os.stat(f"{info['ip']}-{port}").st_mode)
    # The test harness binds the server's own listening socket as root, so anything listening
    # as the user is the kernels' doing; ipykernel's fork pipe (its own default is TCP) too.
    assert fork_pipes == {("0100007F", None)}
    assert tcp_listeners(server.user.uid) == []
    async with http.get(server.url + "api/kernelspecs", headers=server.headers) as r:
        specs = (await r.json())["kernelspecs"]
    assert specs["python3"]["spec"]["metadata"].get("debugger") is False
    for kid in kids:
        await delete_kernel(http, server, kid)


async def test_output_of_forked_children_still_comes(
    http: aiohttp.ClientSession, server: Server
) -> None:
    kid = await new_kernel(http, server)
    kc = await KernelClient.connect(http, server, kid)
    code = (
        "import os, sys, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    print('from the child'); sys.stdout.flush(); time.sleep(1); os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "time.sleep(0.5)"
    )
    out = await kc.run(code)
    assert "from the child" in out.stdout, out.all
    await kc.ws.close()
    await delete_kernel(http, server, kid)


async def test_another_user_cannot_reach_the_kernel(
    http: aiohttp.ClientSession, server: Server, make_system_user: Any
) -> None:
    intruder = make_system_user("mhkt_b")
    kid = await new_kernel(http, server)
    kc = await KernelClient.connect(http, server, kid)
    info = await where(kc)
    # The kernel talks on iopub all the time the intruder listens.
    msg_id = await kc.execute("import time\nfor i in range(30):\n    print(i); time.sleep(0.1)")
    theirs = await asyncio.to_thread(run_probe, intruder, info, 2.0)
    out = await kc.collect(msg_id)
    assert out.stdout.split() == [str(i) for i in range(30)]
    assert theirs == {
        "listdir": 13,  # EACCES
        "read_connection_file": 13,
        "connect_iopub": 13,
        "zmq_iopub_messages": False,
    }, theirs
    # The same probe as the owner gets through, so the refusals above mean something.
    msg_id = await kc.execute("import time\nfor i in range(30):\n    print(i); time.sleep(0.1)")
    mine = await asyncio.to_thread(run_probe, server.user, info, 2.0)
    await kc.collect(msg_id)
    assert mine == {
        "listdir": "ok",
        "read_connection_file": "ok",
        "connect_iopub": "ok",
        "zmq_iopub_messages": True,
    }, mine
    await kc.ws.close()
    await delete_kernel(http, server, kid)


async def run_complete(kc: KernelClient, code: str, stdout: str) -> None:
    """Every message the request makes came, the very first ones too, and the reply."""
    msg_id = await kc.execute(code)
    out = await kc.collect(msg_id)
    kinds = [
        (m["channel"], m["header"]["msg_type"], m["content"].get("execution_state"))
        for m in out.all
        if m["parent_header"].get("msg_id") == msg_id
    ]
    assert ("iopub", "status", "busy") in kinds, kinds
    assert ("iopub", "execute_input", None) in kinds, kinds
    assert out.stdout == stdout, out.all
    assert out.reply and out.reply["status"] == "ok"


async def _start_and_use(http: aiohttp.ClientSession, server: Server, n: int) -> str:
    """Start a kernel and at once run code (printing at once, then reading stdin)."""
    kid = await new_kernel(http, server)
    kc = await KernelClient.connect(http, server, kid, v1=n % 2 == 1)
    try:
        await run_complete(kc, f"print('k{n}')", f"k{n}\n")
        msg_id = await kc.execute(f"print('k{n}', input('?'))", stdin=True)
        req = await kc.wait_for(lambda m: m["header"]["msg_type"] == "input_request", 60)
        assert req["parent_header"]["msg_id"] == msg_id
        await kc.request("input_reply", {"value": f"v{n}"}, channel="stdin")
        out = await kc.collect(msg_id)
        assert out.stdout == f"k{n} v{n}\n", out.all
        assert out.reply and out.reply["status"] == "ok"
        out = await kc.run(f"print({n} * 2)")
        assert out.stdout == f"{n * 2}\n", out.all
    finally:
        await kc.ws.close()
    return kid


async def test_kernels_used_at_once_lose_nothing(
    http: aiohttp.ClientSession, server: Server
) -> None:
    for round_ in range(3):
        kids = await asyncio.wait_for(
            asyncio.gather(*(_start_and_use(http, server, round_ * 10 + i) for i in range(4))),
            150,
        )
        await asyncio.gather(*(delete_kernel(http, server, k) for k in kids))


async def test_restarts_over_ipc_and_files_cleaned_up(
    http: aiohttp.ClientSession, server: Server
) -> None:
    kid = await new_kernel(http, server)
    kc = await KernelClient.connect(http, server, kid)
    info = await where(kc)
    files = [info["file"], *(f"{info['ip']}-{p}" for p in info["ports"])]
    for _ in range(2):
        os.kill(info["pid"], signal.SIGKILL)
        await kc.wait_for(
            lambda m: (
                m["header"]["msg_type"] == "status"
                and m["content"]["execution_state"] == "restarting"
            )
        )
        # Straight after the restart notice: requests wait for the new kernel, lose nothing.
        await run_complete(kc, "print('back')", "back\n")
        msg_id = await kc.execute("print(input('again? '))", stdin=True)
        await kc.wait_for(lambda m: m["header"]["msg_type"] == "input_request")
        await kc.request("input_reply", {"value": "yes"}, channel="stdin")
        assert (await kc.collect(msg_id)).stdout == "yes\n"
        new = await where(kc)
        assert new["pid"] != info["pid"] and new["file"] == info["file"]
        info = new
    async with http.post(f"{server.url}api/kernels/{kid}/restart", headers=server.headers) as r:
        assert r.status == 200
    assert (await kc.run("print('after restart')")).stdout == "after restart\n"
    assert all(os.path.exists(f) for f in files)
    await kc.ws.close()
    await delete_kernel(http, server, kid)
    assert [f for f in files if os.path.exists(f)] == []
    assert os.listdir(os.path.dirname(info["file"])) == [PID_FILE]


async def test_server_exit_removes_its_kernel_dir(
    http: aiohttp.ClientSession, make_system_user: Any, tmp_path: Path
) -> None:
    srv = start_server(make_system_user("mhkt_exit"), tmp_path / "exit.log")
    try:
        kc = await KernelClient.connect(http, srv, await new_kernel(http, srv))
        runtime = os.path.dirname((await where(kc))["file"])
        await kc.ws.close()
        assert os.path.isdir(runtime)
    finally:
        code = await asyncio.to_thread(srv.stop)
    assert code == 0, srv.log.read_text()[-2000:]
    assert not os.path.exists(runtime)


def test_dirs_of_dead_servers_are_swept(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o700)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"{DIR_PREFIX}stale"
    stale.mkdir(mode=0o700)
    (stale / PID_FILE).write_text(str(dead.pid))
    (stale / "kernel-x.json").write_text("{}")
    live = tmp_path / f"{DIR_PREFIX}live"
    live.mkdir(mode=0o700)
    (live / PID_FILE).write_text(str(os.getpid()))
    runtime = RuntimeDir(str(tmp_path))
    try:
        assert not stale.exists() and live.exists()
        assert stat.S_IMODE(os.stat(runtime.path).st_mode) == 0o700
        assert runtime.kernel_args("0123456789")["transport"] == "ipc"
    finally:
        runtime.close()
    assert not os.path.exists(runtime.path)


@pytest.mark.skipif(os.geteuid() != 0, reason="the hub's sweep runs as root")
def test_the_root_sweep_never_reads_a_planted_pid_file(
    tmp_path: Path, make_system_user: Any
) -> None:
    """The hub sweeps users' kernel dirs as root after every stop: a user's server.pid that
    is a link (to /dev/zero it would be read until memory ran out; here to a file naming
    pid 1) or a FIFO (a hub thread blocked for good) must be passed over at once, and a
    real dead server's dir still removed."""
    import concurrent.futures

    from minihub.kernels.transport import sweep_dead_dirs

    eve = make_system_user("mhst_eve")
    os.chmod(tmp_path, 0o755)
    made = {}
    for kind in ("zero", "fifo", "dead"):
        d = tmp_path / f"{DIR_PREFIX}{kind}"
        d.mkdir(mode=0o700)
        made[kind] = d
    (tmp_path / "elsewhere").write_text("1")
    os.symlink(tmp_path / "elsewhere", made["zero"] / PID_FILE)
    os.mkfifo(made["fifo"] / PID_FILE)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (made["dead"] / PID_FILE).write_text(str(dead.pid))
    for d in made.values():
        os.lchown(d / PID_FILE, eve.uid, eve.gid)
        os.chown(d, eve.uid, eve.gid)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        swept = pool.submit(sweep_dead_dirs, {eve.uid}, str(tmp_path))
        assert swept.result(timeout=10) == 1
    finally:
        try:  # a reader blocked on the FIFO (the bug) gets its end of file
            os.close(os.open(made["fifo"] / PID_FILE, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass  # no reader: nothing blocked
        pool.shutdown(wait=True)
    assert made["zero"].exists() and made["fifo"].exists() and not made["dead"].exists()


def test_an_open_base_dir_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    os.chmod(tmp_path, 0o755)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    runtime = RuntimeDir()
    try:
        assert not runtime.path.startswith(str(tmp_path))
    finally:
        runtime.close()
