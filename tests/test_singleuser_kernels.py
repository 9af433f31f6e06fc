"""The user server's kernels, for real: a real user, real ipykernel processes, websockets.

Both websocket protocols, stdin, interrupt, restart, a SIGKILLed kernel coming back, replay
of output produced while no client was connected, culling, and a clean SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_singleuser_harness import KernelClient, Server, start_server

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def server(make_system_user: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    user = make_system_user("mhsu_k")
    srv = start_server(user, tmp_path_factory.mktemp("sulog") / "server.log")
    yield srv
    srv.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as s:
        yield s


async def new_kernel(http: aiohttp.ClientSession, server: Server) -> str:
    async with http.post(
        server.url + "api/kernels", json={"name": "python3"}, headers=server.headers
    ) as r:
        assert r.status == 201, await r.text()
        model = await r.json()
        assert r.headers["Location"].endswith(model["id"])
    return str(model["id"])


async def kernel_model(http: aiohttp.ClientSession, server: Server, kid: str) -> Any:
    async with http.get(f"{server.url}api/kernels/{kid}", headers=server.headers) as r:
        return await r.json() if r.status == 200 else None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


async def test_secret_required_everywhere(http: aiohttp.ClientSession, server: Server) -> None:
    for headers in ({}, {"X-Minihub-Secret": "wrong"}):
        for path in ("api/status", "api/kernels", "api/contents", "files/x", "nope"):
            async with http.get(server.url + path, headers=headers) as r:
                assert r.status == 403
                body = await r.json()
                assert set(body) == {"message", "reason"}
    with pytest.raises(aiohttp.WSServerHandshakeError) as e:
        await http.ws_connect(server.url + "api/kernels/x/channels")
    assert e.value.status == 403


async def test_status_me_and_kernelspecs(http: aiohttp.ClientSession, server: Server) -> None:
    h = server.headers
    async with http.get(server.url + "api/status", headers=h) as r:
        assert set(await r.json()) == {"started", "last_activity", "connections", "kernels"}
    async with http.get(server.url + "api/me", headers=h) as r:
        assert (await r.json())["identity"]["username"] == server.user.name
    async with http.get(server.url + "api/kernelspecs", headers=h) as r:
        specs = await r.json()
    assert specs["default"] == "python3"
    py = specs["kernelspecs"]["python3"]
    assert py["spec"]["language"] == "python"
    logo = py["resources"]["logo-64x64"]
    async with http.get(f"http://{server.url.split('/')[2]}{logo}", headers=h) as r:
        assert r.status == 200 and r.content_type == "image/png"
    # a kernelspec of the user's own, with a page in it: served sandboxed, never as a page
    # of the hub's origin (a visitor of a shared server would run its script)
    spec = Path(server.user.home) / ".local/share/jupyter/kernels/mine"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        '{"argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"], '
        '"display_name": "Mine", "language": "python"}'
    )
    (spec / "p.html").write_text("<script>alert(document.cookie)</script>")
    subprocess.run(["chown", "-R", f"{server.user.uid}:{server.user.gid}",
                    f"{server.user.home}/.local"], check=True)  # fmt: skip
    async with http.get(server.url + "kernelspecs/mine/p.html", headers=h) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Security-Policy"] == "sandbox"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    async with http.get(server.url + "api/kernels/nope", headers=h) as r:
        assert r.status == 404 and "message" in await r.json()


async def test_kernel_is_the_user_and_has_no_secret(
    http: aiohttp.ClientSession, server: Server
) -> None:
    kid = await new_kernel(http, server)
    kc = await KernelClient.connect(http, server, kid)
    code = (
        "import os\nprint(os.getuid(), os.getgid(), os.getcwd())\n"
        f"print(any({server.secret!r} in v for v in os.environ.values()))"
    )
    out = await kc.run(code)
    assert out.reply and out.reply["status"] == "ok"
    uid, gid, cwd, leaked = out.stdout.split()
    assert (int(uid), int(gid), cwd, leaked) == (
        server.user.uid,
        server.user.gid,
        server.user.home,
        "False",
    )
    await kc.ws.close()


@pytest.mark.parametrize("v1", [False, True], ids=["json", "v1"])
async def test_execute_outputs_errors_and_stdin(
    http: aiohttp.ClientSession, server: Server, v1: bool
) -> None:
    kid = await new_kernel(http, server)
    kc = await KernelClient.connect(http, server, kid, v1=v1)
    out = await kc.run("print('hello'); 6 * 7")
    assert out.stdout == "hello\n" and out.result == "42"
    out = await kc.run("1 / 0")
    assert out.error and out.error["ename"] == "ZeroDivisionError"
    assert out.reply and out.reply["status"] == "error"
    msg_id = await kc.execute("name = input('who? ')\nprint('hi', name)", stdin=True)
    req = await kc.wait_for(lambda m: m["header"]["msg_type"] == "input_request")
    assert req["channel"] == "stdin" and req["content"]["prompt"] == "who? "
    await kc.request("input_reply", {"value": "ada"}, channel="stdin")
    out = await kc.collect(msg_id)
    assert "hi ada" in out.stdout
    async with http.get(f"{server.url}api/kernels/{kid}", headers=server.headers) as r:
        model = await r.json()
    assert model["connections"] == 1 and model["execution_state"] == "idle"
    await kc.ws.close()


async def test_interrupt_and_restart(http: aiohttp.ClientSession, server: Server) -> None:
    kid = await new_kernel(http, server)
    kc = await KernelClient.connect(http, server, kid, v1=True)
    await kc.run("x = 1")
    msg_id = await kc.execute("import time; print('sleeping', flush=True); time.sleep(60)")
    # A SIGINT that lands before the code runs is not a KeyboardInterrupt in the code.
    await kc.wait_for(lambda m: m["header"]["msg_type"] == "stream")
    async with http.post(f"{server.url}api/kernels/{kid}/interrupt", headers=server.headers) as r:
        assert r.status == 204
    out = await kc.collect(msg_id, timeout=30)
    assert out.error and out.error["ename"] == "KeyboardInterrupt"
    async with http.post(f"{server.url}api/kernels/{kid}/restart", headers=server.headers) as r:
        assert r.status == 200 and (await r.json())["id"] == kid
    out = await kc.run("print('x' in globals())")
    assert out.stdout == "False\n"
    await kc.ws.close()


async def test_sigkilled_kernel_comes_back(http: aiohttp.ClientSession, server: Server) -> None:
    kid = await new_kernel(http, server)
    kc = await KernelClient.connect(http, server, kid)
    out = await kc.run("import os; print(os.getpid())")
    pid = int(out.stdout)
    os.kill(pid, signal.SIGKILL)
    status = await kc.wait_for(
        lambda m: (
            m["header"]["msg_type"] == "status" and m["content"]["execution_state"] == "restarting"
        )
    )
    assert "SIGKILL" in status["content"]["reason"]
    out = await kc.run("import os; print(os.getpid())")
    assert int(out.stdout) != pid
    model = await kernel_model(http, server, kid)
    assert model["execution_state"] == "idle"
    await kc.ws.close()


async def test_output_is_replayed_on_reconnect(http: aiohttp.ClientSession, server: Server) -> None:
    kid = await new_kernel(http, server)
    kc = await KernelClient.connect(http, server, kid, session_id="replay-session")
    await kc.run("import time")
    msg_id = await kc.execute("time.sleep(1.5); print('while you were away')")
    await kc.wait_for(lambda m: m["header"]["msg_type"] == "execute_input")
    await kc.ws.close()
    deadline = time.monotonic() + 30
    while (await kernel_model(http, server, kid))["execution_state"] != "idle":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    kc2 = await KernelClient.connect(http, server, kid, session_id="replay-session")
    out = await kc2.collect(msg_id, timeout=10)
    assert out.stdout == "while you were away\n"
    assert out.reply and out.reply["status"] == "ok"
    await kc2.ws.close()


async def test_sessions_tie_kernels_to_paths(http: aiohttp.ClientSession, server: Server) -> None:
    h = server.headers
    body = {"path": "s.ipynb", "name": "s.ipynb", "type": "notebook", "kernel": {"name": "python3"}}
    async with http.post(server.url + "api/sessions", json=body, headers=h) as r:
        assert r.status == 201
        s = await r.json()
    assert s["kernel"]["name"] == "python3" and s["notebook"]["path"] == "s.ipynb"
    async with http.post(server.url + "api/sessions", json=body, headers=h) as r:
        assert (await r.json())["id"] == s["id"]
    url = f"{server.url}api/sessions/{s['id']}"
    async with http.patch(url, json={"path": "t.ipynb"}, headers=h) as r:
        assert (await r.json())["path"] == "t.ipynb"
    # a refused PATCH (no such kernel) changes nothing, not even the fields before it
    refused = {"path": "u.ipynb", "name": "u", "kernel": {"id": "no-such-kernel"}}
    async with http.patch(url, json=refused, headers=h) as r:
        assert r.status in (400, 404), await r.text()
    async with http.get(url, headers=h) as r:
        kept = await r.json()
    assert (kept["path"], kept["name"], kept["kernel"]["id"]) == (
        "t.ipynb",
        "s.ipynb",
        s["kernel"]["id"],
    )
    async with http.patch(url, json={"kernel": {"name": "python3"}}, headers=h) as r:
        s2 = await r.json()
    assert s2["kernel"]["id"] != s["kernel"]["id"]
    assert await kernel_model(http, server, s["kernel"]["id"]) is None
    async with http.get(server.url + "api/sessions", headers=h) as r:
        assert s["id"] in [x["id"] for x in await r.json()]
    async with http.delete(url, headers=h) as r:
        assert r.status == 204
    assert await kernel_model(http, server, s2["kernel"]["id"]) is None
    async with http.get(url, headers=h) as r:
        assert r.status == 404


async def test_idle_kernels_are_culled(
    make_system_user: Any, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    srv = start_server(make_system_user("mhsu_cull"), tmp_path / "cull.log", idle_timeout=2)
    try:
        kid = await new_kernel(http, srv)
        deadline = time.monotonic() + 30
        while await kernel_model(http, srv, kid) is not None:
            assert time.monotonic() < deadline, "kernel was never culled"
            await asyncio.sleep(0.1)
        assert "culling kernel" in srv.log.read_text()
    finally:
        srv.stop()


async def test_sigterm_stops_every_kernel(
    make_system_user: Any, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    srv = start_server(make_system_user("mhsu_term"), tmp_path / "term.log")
    pids = []
    try:
        for _ in range(2):
            kc = await KernelClient.connect(http, srv, await new_kernel(http, srv))
            out = await kc.run(
                "import os, subprocess\n"
                "p = subprocess.Popen(['sleep', '300'])\n"
                "print(os.getpid(), p.pid)"
            )
            pids += [int(x) for x in out.stdout.split()]
        assert all(_alive(p) for p in pids)
    finally:
        code = await asyncio.to_thread(srv.stop)
    assert code == 0, srv.log.read_text()[-2000:]
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in pids):
        assert time.monotonic() < deadline, f"left behind: {[p for p in pids if _alive(p)]}"
        await asyncio.sleep(0.2)


def _memory_cgroups() -> bool:
    from minihub.spawner.cgroups import detect

    mode = detect()
    return mode.version == 2 or mode.memory is not None


@pytest.mark.skipif(not _memory_cgroups(), reason="no usable memory cgroup here")
async def test_oom_killed_kernel_is_reported(
    make_system_user: Any, data_dir: str, http: aiohttp.ClientSession
) -> None:
    """Spawned as the hub does, in a 250 MiB cgroup: a hog kernel dies and comes back."""
    from minihub.spawner.accounts import lookup_account
    from minihub.spawner.cgroups import UserCgroup
    from minihub.spawner.local import LocalSpawner
    from minihub.spawner.process import LaunchSpec

    user = make_system_user("mhsu_oom")
    account = lookup_account(user.name, uid_min=1000)
    secret, base = "oom-" + os.urandom(8).hex(), f"/user/{user.name}/"
    config = {
        "secret": secret,
        "base_url": base,
        "notebook_dir": account.home,
        "user": user.name,
        "kernel_idle_timeout": 0,
        "mem_limit": 250 << 20,
    }
    env = {"HOME": account.home, "USER": user.name, "PATH": "/usr/bin:/bin"}
    spec = LaunchSpec(
        username=user.name,
        account=account,
        cmd=[sys.executable, "-m", "minihub.singleuser"],
        env=env,
        cwd=account.home,
        stdin_config=config,
        log_path=Path(data_dir) / "logs" / "oom.log",
        mem_limit=250 << 20,
    )
    spawner = LocalSpawner()
    proc = await spawner.start_process(spec)
    srv = Server(
        f"http://{proc.host}:{proc.port}{base}",
        secret,
        None,
        user,  # type: ignore[arg-type]
        spec.log_path,
        {"X-Minihub-Secret": secret},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                async with http.get(srv.url + "api/status", headers=srv.headers) as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, spec.log_path.read_text()[-2000:]
            await asyncio.sleep(0.2)
        kc = await KernelClient.connect(http, srv, await new_kernel(http, srv))
        await kc.execute("hog = b'x' * (600 << 20)")
        status = await kc.wait_for(
            lambda m: (
                m["header"]["msg_type"] == "status"
                and m["content"]["execution_state"] == "restarting"
            )
        )
        assert status["content"]["reason"] == "killed: out of memory"
        out = await kc.run("print('back')")
        assert out.stdout == "back\n"
        await kc.ws.close()
        for _ in range(50):  # the server's log pump writes the file a moment later
            if "killed: out of memory" in spec.log_path.read_text():
                break
            await asyncio.sleep(0.1)
        assert "killed: out of memory" in spec.log_path.read_text()
    finally:
        await spawner.stop_process(proc, timeout=5)
        await spawner.close()
        UserCgroup.from_paths(proc.extra["cgroup"]).remove()


def test_an_oom_kill_counted_while_the_victim_was_still_exiting_is_its_death(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The count goes up as the OOM killer picks the kernel; a watch that saw the kernel still
    alive a moment later (exiting, its memory being freed) must not hide the kill (seen in CI
    under Slurm: 'killed by SIGKILL' for an OOM kill)."""
    from minihub.kernels import kernel

    clock = [1000.0]
    monkeypatch.setattr(kernel.time, "monotonic", lambda: clock[0])
    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    monkeypatch.setattr(kernel, "_memory_events_path", lambda: events)
    counter = kernel.OomCounter()
    for _ in range(20):  # alive, watched every second: the baseline stays 1 kill
        clock[0] += 1
        counter.refresh()
    events.write_text("low 0\nhigh 0\nmax 9\noom 2\noom_kill 2\n")
    clock[0] += 1
    counter.refresh()  # the victim still exiting, seen alive
    clock[0] += 1
    assert kernel.describe_exit(-signal.SIGKILL, counter.increased()) == "killed: out of memory"
    # That kill is now the baseline: a later SIGKILL without one is not called out of memory,
    # and an exit with a status of its own never is.
    for _ in range(20):
        clock[0] += 1
        counter.refresh()
    assert kernel.describe_exit(-signal.SIGKILL, counter.increased()) == "killed by SIGKILL"
    events.write_text("low 0\nhigh 0\nmax 12\noom 3\noom_kill 3\n")
    assert kernel.describe_exit(1, counter.increased()) == "exited with status 1"
