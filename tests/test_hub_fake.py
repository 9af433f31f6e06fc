"""The hub's server logic through the real hub app, with the FakeSpawner: no root, seconds.

Limits, 202/pending, progress, failures, stop, death noticed through on_exit, re-adoption,
named servers, the culler and the proxy's secret and proof, all against minihub's own code;
only the spawner is the fake (minihub/spawner/fake.py). The real spawners keep their tests.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import hub_config, login

from minihub import servers as servers_mod
from minihub.app import make_app
from minihub.auth.native import NativeAuthenticator
from minihub.config import Config
from minihub.context import PARTS, Parts
from minihub.culler import Culler
from minihub.singleuser import SECRET_HEADER
from minihub.spawner.fake import FakeSpawner
from minihub.store import Store
from minihub.users import create, new_token

NAMES = ("amy", "bo")
PASSWORD = "fake-hub-password"


@pytest.fixture(autouse=True)
def quick_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    # POST answers 202 after 0.3 s of a held start, not 10; the periodic poll never runs,
    # so whatever the hub notices of a dead server, it noticed through on_exit.
    monkeypatch.setattr(servers_mod, "SLOW_SPAWN", 0.1)
    monkeypatch.setattr(servers_mod, "POLL_EVERY", 3600.0)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSpawner]:
    f = FakeSpawner()
    yield f
    await f.shutdown()


Hub = Callable[..., Awaitable[tuple[TestClient, dict[str, str]]]]


@pytest.fixture
async def hub(data_dir: str, fake: FakeSpawner) -> AsyncIterator[Hub]:
    """hub(**settings) -> (client, {name: token}); amy can also log in with PASSWORD.
    Each call is a new hub app on the same data dir and FakeSpawner: a restart."""
    clients: list[TestClient] = []

    async def make(**settings: Any) -> tuple[TestClient, dict[str, str]]:
        cfg = hub_config(data_dir, auth__authenticator="native", **settings)
        tokens = await _users(cfg)
        c = TestClient(TestServer(make_app(cfg, spawner=fake)))
        await c.start_server()
        clients.append(c)
        return c, tokens

    yield make
    for c in clients:
        await c.close()


async def _users(cfg: Config) -> dict[str, str]:
    store = await Store.open(cfg.data_dir / "minihub.sqlite")
    try:
        out = {}
        for n in NAMES:
            user = await store.get_user(n) or await create(
                store, NativeAuthenticator(cfg, store), n, password=PASSWORD if n == "amy" else None
            )
            out[n] = (await new_token(store, user, "test"))[0]
        return out
    finally:
        await store.close()


def h(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


def parts_of(c: TestClient) -> Parts:
    return c.server.app[PARTS]


async def model(c: TestClient, name: str, tok: str, stopped: bool = False) -> dict[str, Any]:
    q = "?include_stopped_servers=1" if stopped else ""
    r = await c.get(f"/hub/api/users/{name}{q}", headers=h(tok))
    assert r.status == 200, await r.text()
    return dict(await r.json())


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Bounded: a few hundred short looks, far below the hub's 3600 s poll."""
    for _ in range(300):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def ready(c: TestClient, name: str, tok: str, server: str = "") -> None:
    async def up() -> bool:
        return bool((await model(c, name, tok))["servers"].get(server, {}).get("ready"))

    await until(up, f"{name}/{server} ready")


async def up(c: TestClient, name: str, tok: str, server: str = "") -> None:
    """Start a server nobody holds and wait until it is ready (201, or 202 on a slow day)."""
    url = f"/hub/api/users/{name}/" + (f"servers/{server}" if server else "server")
    r = await c.post(url, headers=h(tok))
    assert r.status in (201, 202), await r.text()
    await ready(c, name, tok, server)


async def _until_cleaning(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """A start's progress events up to the one that says it waits for a clean-up."""
    async for e in events(resp):
        yield e
        if e.get("message", "").startswith("Cleaning up"):
            resp.close()
            return


async def events(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    async with asyncio.timeout(10):
        async for line in resp.content:
            if line.startswith(b"data: "):
                yield json.loads(line[6:])


async def test_held_start_is_pending_with_progress_then_ready(
    hub: Hub, fake: FakeSpawner, monkeypatch: pytest.MonkeyPatch
):
    c, tok = await hub()
    plan = fake.plan("amy")
    plan.go.clear()
    r = await c.post("/hub/api/users/amy/server", headers=h(tok["amy"]))
    assert r.status == 202, await r.text()
    body = await r.json()
    assert (body["pending"], body["ready"]) == ("spawn", False)
    m = await model(c, "amy", tok["amy"])
    assert m["pending"] == "spawn" and m["server"] is None
    assert m["servers"][""]["progress_url"] == "/hub/api/users/amy/server/progress"

    resp = await c.get(m["servers"][""]["progress_url"], headers=h(tok["amy"]))
    stream = events(resp)
    assert (await anext(stream))["message"] == "Server requested"
    plan.say("Pulling image fake:1")
    assert (await anext(stream))["message"] == "Pulling image fake:1"
    plan.go.set()
    rest = [e async for e in stream]
    assert rest[-1] == {
        "progress": 100,
        "ready": True,
        "message": "Server ready",
        "url": "/user/amy/",
    }
    assert "Waiting for the server to answer" in [e["message"] for e in rest]

    m = await model(c, "amy", tok["amy"])
    assert m["server"] == "/user/amy/" and m["pending"] is None
    assert m["servers"][""]["state"] == {"id": "fake-1"}
    r = await c.post("/hub/api/users/amy/server", headers=h(tok["amy"]))
    assert r.status == 400 and "already running" in (await r.json())["message"]
    # a start nobody holds is ready within POST's wait (JupyterHub's 10 s): 201
    monkeypatch.setattr(servers_mod, "SLOW_SPAWN", 10.0)
    r = await c.post("/hub/api/users/bo/server", headers=h(tok["bo"]))
    assert r.status == 201, await r.text()
    assert (await r.json())["ready"] is True


async def test_a_message_said_as_start_returns_is_shown(
    hub: Hub, fake: FakeSpawner, monkeypatch: pytest.MonkeyPatch
):
    # A spawner's last word ("Job 7 is running on n2") comes right before start returns;
    # the hub lets its progress follower copy it before cancelling the follower.
    c, tok = await hub()
    start = fake.start

    async def start_then_say(launch: Any) -> Any:
        started = await start(launch)
        fake.plan(launch.key).say("Job 7 is running on n2")
        return started

    monkeypatch.setattr(fake, "start", start_then_say)
    await up(c, "amy", tok["amy"])
    resp = await c.get("/hub/api/users/amy/server/progress", headers=h(tok["amy"]))
    said = [e["message"] async for e in events(resp)]
    assert said[:3] == ["Server requested", "Job 7 is running on n2",
                        "Waiting for the server to answer"], said  # fmt: skip


async def test_failed_start_shows_message_and_log(hub: Hub, fake: FakeSpawner):
    c, tok = await hub()
    plan = fake.plan("amy")
    plan.fail, plan.log = "No such image: fake:404", ["pulling fake:404", "manifest unknown"]
    r = await c.post("/hub/api/users/amy/server", headers=h(tok["amy"]))
    assert r.status == 502
    assert await r.json() == {
        "status": 502,
        "message": "No such image: fake:404",
        "log_tail": "pulling fake:404\nmanifest unknown",
    }
    m = await model(c, "amy", tok["amy"])
    assert m["server"] is None and m["pending"] is None
    resp = await c.get("/hub/api/users/amy/server/progress", headers=h(tok["amy"]))
    last = [e async for e in events(resp)][-1]
    assert last == {"progress": 100, "failed": True, "message": "No such image: fake:404"}
    assert (await login(c, "amy", PASSWORD, next="/hub/home")).status == 302
    page = await (await c.get("/hub/home")).text()
    assert "No such image: fake:404" in page and "manifest unknown" in page

    plan.fail_status = 403  # a refusal that is the request's fault keeps its own 4xx
    r = await c.post("/hub/api/users/amy/server", headers=h(tok["amy"]))
    assert r.status == 403 and (await r.json())["message"] == "No such image: fake:404"
    plan.fail = ""
    await up(c, "amy", tok["amy"])
    assert "No such image" not in await (await c.get("/hub/home")).text()


async def test_a_server_that_exits_at_once_on_a_taken_port_is_started_again(
    hub: Hub, fake: FakeSpawner
):
    """A server that binds its own port may find it taken so fast that it is gone before
    the spawner's start returns ('exited at once', seen in CI): that is a taken port too."""
    c, tok = await hub()
    plan = fake.plan("amy")
    plan.fail, plan.fail_once = "The server for amy exited at once (status 1).", True
    plan.log = ["Traceback (most recent call last):", "OSError: [Errno 98] Address already in use"]
    await up(c, "amy", tok["amy"])
    resp = await c.get("/hub/api/users/amy/server/progress", headers=h(tok["amy"]))
    said = [e["message"] async for e in events(resp)]
    assert "Its port was taken meanwhile: starting it on another" in said, said
    # any other failure at once is not tried again
    await c.delete("/hub/api/users/amy/server", headers=h(tok["amy"]))
    plan.fail, plan.fail_once = "The server for amy exited at once (status 1).", True
    plan.log = ["this server is broken"]
    r = await c.post("/hub/api/users/amy/server", headers=h(tok["amy"]))
    assert r.status == 502 and "exited at once" in (await r.json())["message"]


async def test_spawn_and_active_limits_are_429_with_retry_after(hub: Hub, fake: FakeSpawner):
    c, tok = await hub(spawner__concurrent_spawn_limit=1, spawner__active_server_limit=1)
    fake.plan("amy").go.clear()
    assert (await c.post("/hub/api/users/amy/server", headers=h(tok["amy"]))).status == 202
    r = await c.post("/hub/api/users/bo/server", headers=h(tok["bo"]))
    assert r.status == 429 and r.headers["Retry-After"] == "5"
    assert "concurrent_spawn_limit" in (await r.json())["message"]
    fake.plan("amy").go.set()
    await ready(c, "amy", tok["amy"])
    r = await c.post("/hub/api/users/bo/server", headers=h(tok["bo"]))
    assert r.status == 429 and r.headers["Retry-After"] == "30"
    assert "active_server_limit" in (await r.json())["message"]
    assert fake.running("bo") is None
    assert (await c.delete("/hub/api/users/amy/server", headers=h(tok["amy"]))).status == 204
    await up(c, "bo", tok["bo"])
    # named servers are off on this hub: a clear 400, nothing started
    r = await c.post("/hub/api/users/bo/servers/work", headers=h(tok["bo"]))
    assert r.status == 400 and "allow_named_servers" in (await r.json())["message"]


async def test_stop_while_starting_and_a_slow_stop(hub: Hub, fake: FakeSpawner):
    c, tok = await hub()
    plan = fake.plan("amy")
    plan.go.clear()
    assert (await c.post("/hub/api/users/amy/server", headers=h(tok["amy"]))).status == 202
    await asyncio.wait_for(plan.entered.wait(), 5)
    assert (await c.delete("/hub/api/users/amy/server", headers=h(tok["amy"]))).status == 204
    m = await model(c, "amy", tok["amy"])
    assert m["server"] is None and m["pending"] is None and m["servers"] == {}
    assert fake.servers == {}  # the start was cancelled before any server existed
    plan.go.set()

    await up(c, "amy", tok["amy"])
    running = fake.running("amy")
    assert running is not None
    plan.stop_go.clear()
    stopping = asyncio.create_task(c.delete("/hub/api/users/amy/server", headers=h(tok["amy"])))
    await asyncio.wait_for(plan.stopping.wait(), 5)
    assert (await model(c, "amy", tok["amy"]))["pending"] == "stop"
    r = await c.get("/user/amy/api/contents", headers=h(tok["amy"]))
    assert r.status == 503  # no longer routed while it stops
    plan.stop_go.set()
    assert (await stopping).status == 204
    assert running.exit == 0 and fake.running("amy") is None
    assert (await model(c, "amy", tok["amy"]))["pending"] is None


async def test_a_dying_server_is_noticed_through_on_exit(hub: Hub, fake: FakeSpawner):
    c, tok = await hub(hub__allow_named_servers=True)
    fake.plan("amy").log = ["Traceback ...", "MemoryError"]
    await up(c, "amy", tok["amy"])
    await up(c, "amy", tok["amy"], "work")
    await fake.die("amy", 3, oom=True)

    async def noticed() -> bool:
        return (await model(c, "amy", tok["amy"]))["server"] is None

    await until(noticed, "the hub saw amy's server exit")  # the poll loop sleeps 3600 s
    why = "Your server stopped (exit code 3; it ran out of memory"
    resp = await c.get("/hub/api/users/amy/server/progress", headers=h(tok["amy"]))
    last = [e async for e in events(resp)][-1]
    assert last["failed"] is True and last["message"].startswith(why)
    r = await c.get("/user/amy/api/contents", headers=h(tok["amy"]))
    assert r.status == 503
    assert (await login(c, "amy", PASSWORD, next="/hub/home")).status == 302
    page = await (await c.get("/hub/home")).text()
    assert why in page and "MemoryError" in page
    # the named server runs on, and dies on its own
    assert (await model(c, "amy", tok["amy"]))["servers"]["work"]["ready"] is True
    await fake.die("amy/work", -9)

    async def work_stopped() -> bool:
        m = await model(c, "amy", tok["amy"], stopped=True)
        return bool(m["servers"]["work"]["stopped"])

    await until(work_stopped, "the hub saw amy/work exit")
    assert (await c.get("/user/amy/work/api/x", headers=h(tok["amy"]))).status == 503
    assert "killed by signal 9" in await (await c.get("/hub/home")).text()
    await up(c, "amy", tok["amy"])


async def test_a_start_after_a_death_waits_until_the_hub_has_cleared_up(
    hub: Hub, fake: FakeSpawner
) -> None:
    """The dead server's clean-up and the user's next start of it never overlap: on a real
    hub both use the server's cgroup, which the clean-up removes (the new server then failed
    to join it: "no such file")."""
    c, tok = await hub()
    await up(c, "amy", tok["amy"])
    plan = fake.plan("amy")
    plan.clean_go.clear()
    plan.entered.clear()
    try:
        await fake.die("amy", -9)
        await asyncio.wait_for(plan.cleaning.wait(), 10)
        assert (await model(c, "amy", tok["amy"]))["server"] is None
        r = await c.post("/hub/api/users/amy/server", headers=h(tok["amy"]))
        assert not plan.entered.is_set(), "the new server started while the old was cleared up"
        assert r.status == 202, await r.text()
        resp = await c.get("/hub/api/users/amy/server/progress", headers=h(tok["amy"]))
        said = [e.get("message") async for e in _until_cleaning(resp)]
        assert said[-1] == "Cleaning up after the server that stopped", said
    finally:
        plan.clean_go.set()
    await ready(c, "amy", tok["amy"])
    assert plan.entered.is_set()


async def test_restart_readopts_running_servers_and_stops_unfinished_ones(
    hub: Hub, fake: FakeSpawner, data_dir: str
):
    named = {"hub__allow_named_servers": True}
    c, tok = await hub(**named)
    for who, server in (("amy", ""), ("amy", "work"), ("bo", "")):
        await up(c, who, tok[who], server)
    states = {n: s["state"] for n, s in (await model(c, "amy", tok["amy"]))["servers"].items()}
    bo_state = (await model(c, "bo", tok["bo"]))["servers"][""]["state"]
    await c.close()
    # What a hub killed during bo's start leaves: the row says "starting".
    store = await Store.open(Path(data_dir) / "minihub.sqlite")
    row = next(r for r in await store.list_servers() if r.state == bo_state)
    await store.save_server(replace(row, status="starting"))
    await store.close()
    assert all(s.exit is None for s in fake.servers.values())  # the hub left them running

    c2, tok = await hub(**named)
    m = await model(c2, "amy", tok["amy"])
    assert {n: s["state"] for n, s in m["servers"].items()} == states
    assert all(s["ready"] for s in m["servers"].values())
    r = await c2.get("/user/amy/work/api/contents", headers=h(tok["amy"]))
    assert (r.status, (await r.json())["server_name"]) == (200, "work")
    assert len(fake.servers) == 3  # re-adopted, not started again
    assert (await model(c2, "bo", tok["bo"]))["server"] is None
    assert fake.servers[bo_state["id"]].exit == 0  # stopped by the new hub
    await up(c2, "bo", tok["bo"])


async def test_named_servers_limit_remove_and_independence(hub: Hub, fake: FakeSpawner):
    c, tok = await hub(hub__allow_named_servers=True, hub__named_server_limit_per_user=2)
    amy = h(tok["amy"])
    for name in ("a", "b"):
        await up(c, "amy", tok["amy"], name)
    r = await c.post("/hub/api/users/amy/servers/c", headers=amy)
    assert r.status == 400 and "named_server_limit_per_user" in (await r.json())["message"]
    for bad in ("Work", "x" * 31, "api", "a_b"):
        r = await c.post(f"/hub/api/users/amy/servers/{bad}", headers=amy)
        assert r.status == 400, bad
    m = await model(c, "amy", tok["amy"])
    assert set(m["servers"]) == {"a", "b"} and m["server"] is None
    assert m["servers"]["a"]["url"] == "/user/amy/a/"
    assert m["servers"]["a"]["progress_url"] == "/hub/api/users/amy/servers/a/progress"
    assert m["servers"]["a"]["state"] != m["servers"]["b"]["state"]
    for name in ("a", "b"):
        r = await c.get(f"/user/amy/{name}/api/x", headers=amy)
        assert await r.json() == {
            "user": "amy",
            "server_name": name,
            "path": f"/user/amy/{name}/api/x",
            "method": "GET",
        }
    assert (await c.get("/user/amy/api/x", headers=amy)).status == 503  # no default server
    assert (await c.get("/user/amy/a/api/x", headers=h(tok["bo"]))).status == 403

    assert (await c.delete("/hub/api/users/amy/servers/a", headers=amy)).status == 204
    assert set((await model(c, "amy", tok["amy"]))["servers"]) == {"b"}
    m = await model(c, "amy", tok["amy"], stopped=True)
    assert m["servers"]["a"]["stopped"] is True and m["servers"]["b"]["ready"] is True
    assert (await c.get("/user/amy/b/api/x", headers=amy)).status == 200
    r = await c.post("/hub/api/users/amy/servers/c", headers=amy)
    assert r.status == 400  # a stopped named server still counts until it is removed
    r = await c.delete("/hub/api/users/amy/servers/a", headers=amy, json={"remove": True})
    assert r.status == 204
    assert set((await model(c, "amy", tok["amy"], stopped=True))["servers"]) == {"b"}
    await up(c, "amy", tok["amy"], "c")
    r = await c.delete("/hub/api/users/amy/servers/nope", headers=amy)
    assert r.status == 404


async def test_culler_stops_idle_servers_named_ones_too(hub: Hub, fake: FakeSpawner):
    c, tok = await hub(hub__allow_named_servers=True, culler__timeout=1, culler__every=3600)
    for server in ("", "idle", "busy"):
        await up(c, "amy", tok["amy"], server)
    p = parts_of(c)
    culler = Culler(p.cfg, p.servers, p.store, p.metrics, p.access)
    await asyncio.sleep(1.1)  # past the 1 s timeout: the one wait that cannot be an event
    busy = fake.running("amy/busy")
    assert busy is not None
    busy.last_activity = time.time()  # what the server itself reports (a kernel ran)
    assert sorted(await culler.cull_once()) == ["amy", "amy/idle"]
    m = await model(c, "amy", tok["amy"], stopped=True)
    assert m["server"] is None
    assert m["servers"]["idle"]["stopped"] is True and m["servers"]["busy"]["ready"] is True
    assert fake.running("amy") is None and fake.running("amy/idle") is None


async def test_proxy_sends_the_secret_and_refuses_answers_without_the_proof(
    hub: Hub, fake: FakeSpawner
):
    c, tok = await hub()
    await up(c, "amy", tok["amy"])
    r = await c.get("/user/amy/some/path?q=1", headers=h(tok["amy"]))
    assert r.status == 200
    assert await r.json() == {
        "user": "amy",
        "server_name": "",
        "path": "/user/amy/some/path",
        "method": "GET",
    }
    srv = parts_of(c).servers.peek(parts_of(c).servers.all()[0].user_id)
    assert srv is not None and srv.endpoint is not None
    async with aiohttp.ClientSession() as direct:  # the server itself, not through the hub
        url = f"{srv.endpoint.origin}/user/amy/api/status"
        async with direct.get(url) as r:
            assert r.status == 403
        async with direct.get(url, headers={SECRET_HEADER: "guess"}) as r:
            assert r.status == 403
    # The server dies and, before the hub hears of it, another process takes its port.
    await fake.die("amy", 1, tell=False)

    async def squat(request: web.Request) -> web.Response:
        return web.json_response({"evil": 1})

    squatter = web.Application()
    squatter.router.add_route("*", "/{tail:.*}", squat)
    runner = web.AppRunner(squatter)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", srv.endpoint.port).start()
    try:
        r = await c.get("/user/amy/api/contents", headers=h(tok["amy"]))
        assert r.status == 503
        assert await r.json() == {
            "status": 503,
            "message": "The server stopped: reload to see why and restart it.",
        }
        assert (await model(c, "amy", tok["amy"]))["server"] is None
    finally:
        await runner.cleanup()
