"""FakeSpawner: the spawner seam driven by a test through asyncio.Events, never by sleeps.

Each server key (Launch.key: "alice", "alice/work") has a Plan (`fake.plan(key)`) that a
test changes before or during a start:
- `go` set: start runs through; cleared: start waits (`entered` is set) until it is set
  again or the hub cancels the start.
- `fail` non-empty: once released, start raises SpawnError(fail, log, fail_status).
- `say(message)`: a progress message, yielded by progress() while a start runs.
- `stop_go` set: stop returns at once; cleared: stop waits for it (`stopping` is set) up
  to its timeout, then forces the server. `clean_go` cleared: stop of a server that has
  already exited (the hub clearing up after it) waits for it (`cleaning` is set).
  `log`: the lines log_tail returns.
A started server is a real aiohttp app on 127.0.0.1 that answers as minihub's own does
(minihub.singleuser): 403 without X-Minihub-Secret, the proof on every answer to the
secret, `{prefix}api/status` with last_activity; any other path echoes {"user",
"server_name", "path", "method"}. `fake.running(key)` is its FakeServer (a test may change
its proof or last_activity); `await fake.die(key, status)` makes it exit: poll returns the
status and on_exit fires. The state is {"id": ...}: a second hub app given the same fake
re-adopts its servers. close() leaves servers running, as the seam says; `await
fake.shutdown()` ends them (a test's teardown). Only the "minihub" protocol is served.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..errors import SpawnError
from ..isotime import isoformat
from ..singleuser import PROOF_HEADER, SECRET_HEADER
from .base import UNKNOWN_EXIT, Endpoint, Launch, Spawner, Started, State


def _set() -> asyncio.Event:
    e = asyncio.Event()
    e.set()
    return e


@dataclass
class Plan:
    go: asyncio.Event = field(default_factory=_set)
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    fail: str = ""
    fail_status: int = 502
    fail_once: bool = False  # the next start fails with `fail`, the one after succeeds
    log: list[str] = field(default_factory=list)
    stop_go: asyncio.Event = field(default_factory=_set)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    clean_go: asyncio.Event = field(default_factory=_set)
    cleaning: asyncio.Event = field(default_factory=asyncio.Event)
    messages: asyncio.Queue[str] = field(default_factory=asyncio.Queue)

    def say(self, message: str) -> None:
        self.messages.put_nowait(message)


@dataclass
class FakeServer:
    launch: Launch
    runner: web.AppRunner
    proof: str
    last_activity: float = field(default_factory=time.time)
    exit: int | None = None
    oom: bool = False


_SERVER = web.AppKey("fake_server", FakeServer)


class FakeSpawner(Spawner):
    name = "fake"

    def __init__(self, cfg: object = None) -> None:
        self.plans: dict[str, Plan] = {}
        self.servers: dict[str, FakeServer] = {}  # by state id, exited ones too
        self._ids = itertools.count(1)

    def plan(self, key: str) -> Plan:
        return self.plans.setdefault(key, Plan())

    def running(self, key: str) -> FakeServer | None:
        return next(
            (s for s in self.servers.values() if s.launch.key == key and s.exit is None), None
        )

    async def start(self, launch: Launch) -> Started:
        plan = self.plan(launch.key)
        plan.entered.set()
        await plan.go.wait()
        if plan.fail or launch.protocol != "minihub":
            message = plan.fail or "FakeSpawner serves only the minihub protocol."
            if plan.fail_once:
                plan.fail, plan.fail_once = "", False
            raise SpawnError(message, "\n".join(plan.log), plan.fail_status)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        launch.listen_on("127.0.0.1", sock.getsockname()[1])
        runner = web.AppRunner(_app(launch), shutdown_timeout=1)
        runner.app[_SERVER] = FakeServer(launch, runner, str(launch.config["proof"]))
        await runner.setup()
        await web.SockSite(runner, sock).start()
        sid = f"fake-{next(self._ids)}"
        self.servers[sid] = runner.app[_SERVER]
        return Started(Endpoint("127.0.0.1", sock.getsockname()[1]), {"id": sid})

    async def progress(self, launch: Launch) -> AsyncIterator[str]:
        while True:  # the hub stops following when start returns
            yield await self.plan(launch.key).messages.get()

    async def poll(self, state: State) -> int | None:
        srv = self.servers.get(str(state.get("id")))
        return UNKNOWN_EXIT if srv is None else srv.exit

    async def stop(self, state: State, timeout: float) -> None:
        srv = self.servers.get(str(state.get("id")))
        if srv is None:
            return
        plan = self.plan(srv.launch.key)
        if srv.exit is not None:
            plan.cleaning.set()
            try:
                await plan.clean_go.wait()
            finally:
                plan.cleaning.clear()
            return
        plan.stopping.set()
        try:
            await asyncio.wait_for(plan.stop_go.wait(), timeout)
        except TimeoutError:
            pass  # forced, as a SIGKILL after the grace time
        finally:
            plan.stopping.clear()
        await self._end(state["id"], 0)

    async def die(self, key: str, status: int, oom: bool = False, tell: bool = True) -> None:
        """The server exits; tell=False: on_exit stays silent (the hub has not heard yet)."""
        sid = next(
            (i for i, s in self.servers.items() if s.launch.key == key and s.exit is None), None
        )
        if sid is None:
            raise KeyError(f"no running fake server {key!r}")
        self.servers[sid].oom = oom
        await self._end(sid, status, tell)

    async def _end(self, sid: str, status: int, tell: bool = True) -> None:
        self.servers[sid].exit = status
        await self.servers[sid].runner.cleanup()
        if self.on_exit is not None and tell:
            self.on_exit({"id": sid})

    async def log_tail(self, state: State, lines: int = 20) -> str:
        srv = self.servers.get(str(state.get("id")))
        return "\n".join(self.plan(srv.launch.key).log[-lines:]) if srv else ""

    def oom_killed(self, state: State) -> bool:
        srv = self.servers.get(str(state.get("id")))
        return bool(srv and srv.oom)

    async def shutdown(self) -> None:
        for srv in self.servers.values():
            if srv.exit is None:
                srv.exit = 0
                await srv.runner.cleanup()


def _app(launch: Launch) -> web.Application:
    secret = str(launch.config["secret"]).encode()

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        given = request.headers.get(SECRET_HEADER, "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, secret):
            return web.json_response({"message": "Forbidden"}, status=403)
        resp: web.StreamResponse = await handler(request)
        resp.headers[PROOF_HEADER] = request.app[_SERVER].proof
        return resp

    async def status(request: web.Request) -> web.Response:
        last = isoformat(request.app[_SERVER].last_activity)
        return web.json_response({"last_activity": last, "kernels": 0})

    async def echo(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "user": launch.user,
                "server_name": launch.server_name,
                "path": request.path,
                "method": request.method,
            }
        )

    app = web.Application(middlewares=[guard])
    app.router.add_get(launch.prefix + "api/status", status)
    app.router.add_route("*", launch.prefix + "{tail:.*}", echo)
    return app
