"""Named servers end to end (issue 13): a real hub process with the ForkSpawner, real PAM
users, real kernels, driven through JupyterHub's REST API and the proxy as clients do."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import helpers
import pytest
from aiohttp.test_utils import TestClient
from conftest import SystemUser, hub_config, hub_log_faults, needs_root
from helpers import offline_user as hub_login
from test_config_cli import MINIHUB, free_port, start_hub
from test_hub_spawn import h

from minihub.app import make_app
from minihub.store import Store
from minihub.users import new_token

pytestmark = needs_root

NAMED = "[hub]\nallow_named_servers = true\nnamed_server_limit_per_user = 2\n"
MEM_LIMIT = 1024 * 1024 * 1024  # the user's limit, shared by all their servers


@dataclass
class Hub:
    cmd: list[str]
    port: int
    data: Path
    log: Path
    tokens: dict[str, str]
    proc: subprocess.Popen[bytes]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return f"{self.base}/hub/api"

    def session(self, user: str) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(headers=h(self.tokens[user]))

    def restart(self) -> None:
        self.proc = start_hub(self.cmd, self.port, self.log)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)


def make_hub(tmp: Path, users: list[str], toml: str) -> Hub:
    data, port, log = tmp / "data", free_port(), tmp / "hub.log"
    cfg = tmp / "minihub.toml"
    cfg.write_text(toml)
    cli = [*MINIHUB, "-f", str(cfg), "--data-dir", str(data)]
    tokens = helpers.add_users(data, users, cfg)
    cmd = [*cli, "--port", str(port)]
    return Hub(cmd, port, data, log, tokens, start_hub(cmd, port, log))


def rows(hub: Hub) -> dict[tuple[str, str], dict[str, Any]]:
    """The servers table, by (user name, server name): status, the spawner's state, ..."""
    db = sqlite3.connect(f"file:{hub.data / 'minihub.sqlite'}?mode=ro", uri=True)
    try:
        q = (
            "SELECT u.name, s.name, s.status, s.state, s.secret_hash, s.port FROM servers s "
            "JOIN users u ON u.id = s.user_id"
        )
        return {
            (r[0], r[1]): {
                "status": r[2],
                "state": json.loads(r[3]),
                "secret_hash": r[4],
                "port": r[5],
            }
            for r in db.execute(q)
        }
    finally:
        db.close()


async def user_model(
    s: aiohttp.ClientSession, hub: Hub, name: str, query: str = ""
) -> dict[str, Any]:
    r = await s.get(f"{hub.api}/users/{name}{query}")
    assert r.status == 200, await r.text()
    model: dict[str, Any] = await r.json()
    return model


async def start(s: aiohttp.ClientSession, hub: Hub, user: str, server: str) -> dict[str, Any]:
    """POST the server and wait (bounded) until the model says it is ready."""
    url = f"{hub.api}/users/{user}/servers/{server}" if server else f"{hub.api}/users/{user}/server"
    r = await s.post(url)
    assert r.status in (201, 202), await r.text()
    for _ in range(600):
        model = await user_model(s, hub, user)
        srv = model["servers"].get(server)
        if srv and srv["ready"]:
            return dict(srv)
        await asyncio.sleep(0.05)
    raise AssertionError(f"{user}/{server} never became ready: {hub.log.read_text()[-2000:]}")


async def stop(
    s: aiohttp.ClientSession, hub: Hub, user: str, server: str, remove: bool = False
) -> int:
    url = f"{hub.api}/users/{user}/servers/{server}" if server else f"{hub.api}/users/{user}/server"
    r = await s.delete(url, json={"remove": True} if remove else None)
    return r.status


async def new_kernel(s: aiohttp.ClientSession, prefix: str) -> str:
    r = await s.post(f"{prefix}api/kernels", json={})
    assert r.status == 201, await r.text()
    return str((await r.json())["id"])


async def execute(s: aiohttp.ClientSession, prefix: str, kernel: str, code: str) -> str:
    """Run `code` in the kernel over its websocket; what it printed."""
    return (await helpers.execute(s, f"{prefix}api/kernels/{kernel}/channels", code)).strip()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def until(check: Any, seconds: float) -> bool:
    for _ in range(int(seconds / 0.1)):
        if await check():
            return True
        await asyncio.sleep(0.1)
    return bool(await check())


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(pid)


def cgroup_procs(path: str) -> set[int]:
    return {int(p) for p in Path(path, "cgroup.procs").read_text().split()}


# --- the shared hub: named servers on, a limit of 2, a memory limit per user ----------------


@pytest.fixture(scope="module")
def users(make_system_user: Any) -> dict[str, SystemUser]:
    return {k: make_system_user(f"mhns_{k}") for k in ("ann", "bob")}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, users: dict[str, SystemUser]) -> Iterator[Hub]:
    tmp = tmp_path_factory.mktemp("named")
    hub = make_hub(
        tmp,
        [u.name for u in users.values()],
        NAMED + f'[spawner]\nmem_limit = "{MEM_LIMIT // 2**20}M"\n',
    )
    try:
        yield hub
    finally:
        hub.stop()
    assert not hub_log_faults(hub.log)


@pytest.fixture(autouse=True)
async def tidy(request: pytest.FixtureRequest) -> Any:
    """After each test on the shared hub: every server of its users stopped and removed, so
    a failing test does not fail the next ones through the limit."""
    yield
    if "hub" not in request.fixturenames:
        return
    hub, users = request.getfixturevalue("hub"), request.getfixturevalue("users")
    for u in users.values():
        async with hub.session(u.name) as s:
            model = await user_model(s, hub, u.name, "?include_stopped_servers=1")
            for name in model["servers"]:
                await stop(s, hub, u.name, name, remove=bool(name))


async def test_rest_model_progress_log_and_cgroup(hub: Hub, users: dict[str, SystemUser]) -> None:
    ann = users["ann"].name
    async with hub.session(ann) as s:
        r = await s.post(f"{hub.api}/users/{ann}/servers/one")
        assert r.status in (201, 202), await r.text()
        # The progress stream: events in order, the last one ready with the server's url.
        progress = f"/hub/api/users/{ann}/servers/one/progress"
        events = []
        async with s.get(hub.base + progress) as stream:
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            async with asyncio.timeout(60):
                async for line in stream.content:
                    if line.startswith(b"data:"):
                        events.append(json.loads(line[5:]))
        assert events and events[-1]["ready"] is True and events[-1]["progress"] == 100
        assert events[-1]["url"] == f"/user/{ann}/one/"
        assert [e["progress"] for e in events] == sorted(e["progress"] for e in events)

        model = await user_model(s, hub, ann)
        one = model["servers"]["one"]
        assert one["name"] == "one" and one["url"] == f"/user/{ann}/one/"
        assert one["full_name"] == f"{ann}/one"
        assert one["ready"] is True and one["pending"] is None and one["stopped"] is False
        assert one["progress_url"] == progress
        assert one["started"] and one["last_activity"]
        assert model["server"] is None  # the default server is not running
        assert "" not in model["servers"]
        # JupyterHub: POST to a running named server is a 400
        r = await s.post(f"{hub.api}/users/{ann}/servers/one")
        assert r.status == 400 and "already running" in (await r.json())["message"]
        # listed in GET /users (ann sees herself)
        r = await s.get(f"{hub.api}/users")
        if r.status == 200:
            listed = {u["name"]: u for u in await r.json()}
            assert listed[ann]["servers"]["one"]["url"] == f"/user/{ann}/one/"
        assert (await s.get(f"{hub.base}/user/{ann}/one/api/status")).status == 200

    # its own log file, and its own cgroup below the user's (which holds the memory limit)
    log = hub.data / "logs" / ann / "one.log"
    assert log.is_file() and log.stat().st_size > 0
    state = rows(hub)[(ann, "one")]["state"]
    pid = int(state["pid"])
    assert uid_of(pid) == users["ann"].uid
    for own, parent in zip(state["cgroup"], state["user_cgroup"], strict=True):
        assert Path(own).parent == Path(parent) and Path(own).name == "one"
        assert pid in cgroup_procs(own)
    memory = [p for p in state["user_cgroup"] if "/memory/" in p]
    if memory:
        assert int(Path(memory[0], "memory.limit_in_bytes").read_text()) == MEM_LIMIT
    async with hub.session(ann) as s:
        assert await stop(s, hub, ann, "one", remove=True) == 204


async def test_two_named_servers_and_the_default_are_independent(
    hub: Hub, users: dict[str, SystemUser]
) -> None:
    ann = users["ann"].name
    async with hub.session(ann) as s:
        await asyncio.gather(
            start(s, hub, ann, "one"), start(s, hub, ann, "two"), start(s, hub, ann, "")
        )
        model = await user_model(s, hub, ann)
        assert set(model["servers"]) == {"", "one", "two"}
        assert model["server"] == f"/user/{ann}/"
        assert model["servers"][""]["url"] == f"/user/{ann}/"
        prefixes = {
            n: f"{hub.base}/user/{ann}/{n}/" if n else f"{hub.base}/user/{ann}/"
            for n in ("", "one", "two")
        }
        kernels = {n: await new_kernel(s, p) for n, p in prefixes.items()}
        assert await execute(s, prefixes["one"], kernels["one"], "x = 41; print(x + 1)") == "42"
        assert (
            await execute(s, prefixes["two"], kernels["two"], "print('x' in globals())") == "False"
        )
        assert await execute(s, prefixes[""], kernels[""], "print('x' in globals())") == "False"
        # each kernel answers only at its own server's URL
        for n, p in prefixes.items():
            got = await (await s.get(f"{p}api/kernels")).json()
            assert [k["id"] for k in got] == [kernels[n]]
            for other in set(prefixes) - {n}:
                assert (await s.get(f"{p}api/kernels/{kernels[other]}")).status == 404
        # different processes with different secrets, each refusing a request without one
        stored = rows(hub)
        mine = [stored[(ann, n)] for n in ("", "one", "two")]
        assert len({r["state"]["pid"] for r in mine}) == 3
        assert len({r["secret_hash"] for r in mine}) == 3 and all(r["secret_hash"] for r in mine)
        for r in mine:
            assert alive(int(r["state"]["pid"]))
            async with aiohttp.ClientSession() as bare:
                direct = await bare.get(f"http://127.0.0.1:{r['port']}/")
                assert direct.status in (401, 403)
        for n in ("", "one", "two"):
            assert await stop(s, hub, ann, n, remove=bool(n)) == 204


async def test_limit_and_invalid_names(hub: Hub, users: dict[str, SystemUser]) -> None:
    ann = users["ann"].name
    async with hub.session(ann) as s:
        for bad in (
            "x" * 31,
            "Work",
            "api",
            "tree",
            "a_b",
            "a.b",
            "%C3%A9",
            "-x",
            "x-",
            "a--b",
            "1x",
        ):
            r = await s.post(f"{hub.api}/users/{ann}/servers/{bad}")
            assert r.status == 400, (bad, r.status)
            body = await r.json()
            assert body["status"] == 400 and body["message"]
        await start(s, hub, ann, "one")
        await start(s, hub, ann, "two")
        r = await s.post(f"{hub.api}/users/{ann}/servers/three")
        assert r.status == 400
        message = (await r.json())["message"]
        assert "2" in message and "named servers" in message
        # a stopped named server still counts (JupyterHub: delete one first) ...
        assert await stop(s, hub, ann, "two") == 204
        assert (await s.post(f"{hub.api}/users/{ann}/servers/three")).status == 400
        # ... a removed one does not
        assert await stop(s, hub, ann, "two", remove=True) == 204
        await start(s, hub, ann, "three")
        # the default server is not a named one and does not count
        await start(s, hub, ann, "")
        for n in ("one", "three", ""):
            assert await stop(s, hub, ann, n, remove=bool(n)) == 204


async def test_stop_one_leaves_the_others_and_remove_forgets(
    hub: Hub, users: dict[str, SystemUser]
) -> None:
    ann = users["ann"].name
    async with hub.session(ann) as s:
        await asyncio.gather(start(s, hub, ann, "one"), start(s, hub, ann, "two"))
        two = f"{hub.base}/user/{ann}/two/"
        kernel = await new_kernel(s, two)
        assert await execute(s, two, kernel, "y = 'kept'") == ""
        one_pid = int(rows(hub)[(ann, "one")]["state"]["pid"])
        assert await stop(s, hub, ann, "one") == 204
        assert not alive(one_pid)
        # two and its kernel run on
        assert await execute(s, two, kernel, "print(y)") == "kept"
        model = await user_model(s, hub, ann)
        assert model["servers"]["two"]["ready"]
        # JupyterHub lists a stopped server only when asked (include_stopped_servers)
        assert "one" not in model["servers"]
        stopped = (await user_model(s, hub, ann, "?include_stopped_servers=1"))["servers"]
        assert stopped["one"]["stopped"] is True and stopped["one"]["ready"] is False
        assert stopped["one"]["url"] == f"/user/{ann}/one/"
        assert rows(hub)[(ann, "one")]["status"] == "stopped"
        # JupyterHub: no progress to follow for a stopped server (400) or an unknown one (404)
        assert (await s.get(f"{hub.api}/users/{ann}/servers/one/progress")).status == 400
        assert (await s.get(f"{hub.api}/users/{ann}/servers/nope/progress")).status == 404
        # the proxy no longer reaches it
        r = await s.get(f"{hub.base}/user/{ann}/one/api/status")
        assert r.status == 503
        # a stopped server can start again, as the same name
        await start(s, hub, ann, "one")
        # remove: stopped and forgotten
        assert await stop(s, hub, ann, "one", remove=True) == 204
        everything = await user_model(s, hub, ann, "?include_stopped_servers=1")
        assert "one" not in everything["servers"] and "two" in everything["servers"]
        assert (ann, "one") not in rows(hub)
        # JupyterHub: an unknown server is a 404, removing the default server a 400
        r = await s.delete(f"{hub.api}/users/{ann}/servers/nope")
        assert r.status == 404 and "nope" in (await r.json())["message"]
        r = await s.delete(f"{hub.api}/users/{ann}/server", json={"remove": True})
        assert r.status == 400
        assert await stop(s, hub, ann, "two", remove=True) == 204
        assert (ann, "two") not in rows(hub)


async def test_another_user_is_refused(hub: Hub, users: dict[str, SystemUser]) -> None:
    ann, bob = users["ann"].name, users["bob"].name
    async with hub.session(ann) as s:
        await start(s, hub, ann, "one")
        prefix = f"{hub.base}/user/{ann}/one/"
        kernel = await new_kernel(s, prefix)
    async with hub.session(bob) as b:
        api = f"{hub.api}/users/{ann}/servers/one"
        for method, url in [
            ("POST", api),
            ("DELETE", api),
            ("GET", api + "/progress"),
            ("POST", f"{hub.api}/users/{ann}/servers/other"),
            ("DELETE", f"{hub.api}/users/{ann}/servers/other"),
            ("GET", f"{hub.api}/users/{ann}"),
        ]:
            r = await b.request(method, url)
            assert r.status == 403, (method, url, r.status)
        r = await b.delete(api, json={"remove": True})
        assert r.status == 403
        for path in ("api/status", "api/kernels", f"api/kernels/{kernel}", "tree/"):
            r = await b.get(prefix + path, allow_redirects=False)
            assert r.status == 403, (path, r.status)
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await b.ws_connect(f"{prefix}api/kernels/{kernel}/channels?session_id=x")
        assert e.value.status == 403
        # bob's own token sees nothing of ann's servers in the list
        r = await b.get(f"{hub.api}/users")
        assert r.status == 403 or ann not in {u["name"] for u in await r.json()}
    async with hub.session(ann) as s:
        assert (await s.get(f"{prefix}api/kernels/{kernel}")).status == 200
        assert await stop(s, hub, ann, "one", remove=True) == 204


async def test_named_servers_off_is_400(aiohttp_client: Any, data_dir: str) -> None:
    cfg = hub_config(data_dir, auth__authenticator="native")
    store = await Store.open(cfg.data_dir / "minihub.sqlite")
    token = (await new_token(store, await hub_login(store, "mhns_off", False), "t"))[0]
    await store.close()
    c: TestClient = await aiohttp_client(make_app(cfg))
    for method in ("POST", "DELETE"):
        r = await c.request(method, "/hub/api/users/mhns_off/servers/one", headers=h(token))
        assert r.status == 400, method
        assert "allow_named_servers" in (await r.json())["message"]


# --- restart: the new hub re-adopts named servers like the default one ---------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
async def test_restart_readopts_named_servers(
    tmp_path: Path, make_system_user: Any, sig: signal.Signals
) -> None:
    u = make_system_user(f"mhns_r{sig.name[3:].lower()}").name
    hub = make_hub(tmp_path, [u], NAMED)
    try:
        async with hub.session(u) as s:
            await asyncio.gather(
                start(s, hub, u, "one"), start(s, hub, u, ""), start(s, hub, u, "kept")
            )
            assert await stop(s, hub, u, "kept") == 204  # stopped, not removed
            prefix = f"{hub.base}/user/{u}/one/"
            kernel = await new_kernel(s, prefix)
            assert await execute(s, prefix, kernel, "z = 7 * 6") == ""
        before = {k: r for k, r in rows(hub).items() if r["status"] == "running"}
        assert set(before) == {(u, "one"), (u, "")}
        hub.proc.send_signal(sig)
        assert await asyncio.to_thread(hub.proc.wait, 30) == (0 if sig == signal.SIGTERM else -9)
        assert all(alive(int(r["state"]["pid"])) for r in before.values())
        hub.restart()
        async with hub.session(u) as s:
            model = await user_model(s, hub, u)
            assert model["servers"]["one"]["ready"] and model["servers"][""]["ready"]
            after = rows(hub)
            assert {k: r for k, r in after.items() if k in before} == before  # same processes
            assert after[(u, "kept")]["status"] == "stopped"
            everything = await user_model(s, hub, u, "?include_stopped_servers=1")
            assert everything["servers"]["kept"]["stopped"] is True
            assert await execute(s, prefix, kernel, "print(z)") == "42"
            assert (await s.get(f"{hub.base}/user/{u}/api/status")).status == 200
            assert await stop(s, hub, u, "one", remove=True) == 204
            assert await stop(s, hub, u, "") == 204
            assert await stop(s, hub, u, "kept", remove=True) == 204
        assert not any(alive(int(r["state"]["pid"])) for r in before.values())
    finally:
        hub.stop()
    assert not hub_log_faults(hub.log)


# --- culling ------------------------------------------------------------------------------


async def _keep_busy(s: aiohttp.ClientSession, url: str, done: asyncio.Event) -> None:
    while not done.is_set():
        assert (await s.get(url)).status == 200
        await asyncio.sleep(0.2)


async def test_builtin_culler_stops_an_idle_named_server(
    tmp_path: Path, make_system_user: Any
) -> None:
    u = make_system_user("mhns_cull").name
    hub = make_hub(tmp_path, [u], NAMED + "[culler]\ntimeout = 3\nevery = 1\n")
    try:
        async with hub.session(u) as s:
            await asyncio.gather(start(s, hub, u, "idle"), start(s, hub, u, "busy"))
            done = asyncio.Event()
            busy = asyncio.create_task(_keep_busy(s, f"{hub.base}/user/{u}/busy/api/status", done))

            async def idle_gone() -> bool:
                return "idle" not in (await user_model(s, hub, u))["servers"]

            try:
                assert await until(idle_gone, 30), "the culler never stopped the idle server"
            finally:
                done.set()
                await busy
            model = await user_model(s, hub, u, "?include_stopped_servers=1")
            assert model["servers"]["busy"]["ready"]
            assert model["servers"]["idle"]["stopped"]  # stopped, not removed
            assert rows(hub)[(u, "idle")]["status"] == "stopped"
            assert await stop(s, hub, u, "busy", remove=True) == 204
    finally:
        hub.stop()
    text = hub.log.read_text()
    assert f"culling server {u}/idle" in text and f"culling server {u}/busy" not in text
    assert not hub_log_faults(text)


async def test_idle_culler_service_removes_an_idle_named_server(
    tmp_path: Path, make_system_user: Any
) -> None:
    u = make_system_user("mhns_jcull").name
    command = [
        sys.executable,
        "-m",
        "jupyterhub_idle_culler",
        "--timeout=4",
        "--cull-every=1",
        "--remove-named-servers=true",
    ]
    service = (
        '[[services]]\nname = "idle-culler"\n'
        'scopes = ["list:users", "read:users:activity", "read:servers", '
        '"delete:servers"]\n'
        f"command = {json.dumps(command)}\n"
    )
    hub = make_hub(tmp_path, [u], NAMED + service)
    try:
        async with hub.session(u) as s:
            await asyncio.gather(start(s, hub, u, "idle"), start(s, hub, u, "busy"))
            done = asyncio.Event()
            busy = asyncio.create_task(_keep_busy(s, f"{hub.base}/user/{u}/busy/api/status", done))

            async def idle_removed() -> bool:
                everything = await user_model(s, hub, u, "?include_stopped_servers=1")
                return "idle" not in everything["servers"]

            try:
                assert await until(idle_removed, 40), "the idle culler never removed it"
            finally:
                done.set()
                await busy
            assert (await user_model(s, hub, u))["servers"]["busy"]["ready"]
            assert (u, "idle") not in rows(hub)
            assert await stop(s, hub, u, "busy", remove=True) == 204
    finally:
        hub.stop()
    culler_log = (hub.data / "logs" / "service-idle-culler.log").read_text()
    assert f"Culling server {u}/idle" in culler_log
    assert f"Culling server {u}/busy" not in culler_log
    assert not hub_log_faults(hub.log)


# --- jupyterhub-singleuser as a named server ------------------------------------------------


async def test_jupyterhub_singleuser_named_server(tmp_path: Path, make_system_user: Any) -> None:
    """JupyterHub's own server runs as a named server: it is told its name
    (JUPYTERHUB_SERVER_NAME) and prefix, accepts its owner's token, and posts its activity
    for that server."""
    u = make_system_user("mhns_jh").name
    toml = NAMED + (
        '[spawner]\nserver = "jupyterhub-singleuser"\nstart_timeout = 60\n'
        'environment = {JUPYTERHUB_ACTIVITY_INTERVAL = "1"}\n'
    )
    hub = make_hub(tmp_path, [u], toml)
    try:
        async with hub.session(u) as s:
            await start(s, hub, u, "work")
            prefix = f"{hub.base}/user/{u}/work/"
            assert (await s.get(f"{prefix}api/status")).status == 200
            kernel = await new_kernel(s, prefix)
            code = "import os; print(os.environ['JUPYTERHUB_SERVER_NAME'], os.environ['JUPYTERHUB_SERVICE_PREFIX'])"
            assert await execute(s, prefix, kernel, code) == f"work /user/{u}/work/"
            assert await stop(s, hub, u, "work", remove=True) == 204
    finally:
        hub.stop()
    text = hub.log.read_text()
    assert f"POST /hub/api/users/{u}/activity" in text  # it reported, and the hub took it
    assert not [line for line in text.splitlines() if "/activity" in line and " 40" in line]
    assert not hub_log_faults(text)
