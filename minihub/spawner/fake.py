"""FakeSpawner: the spawner seam driven by a test through asyncio.Events, never by sleeps.

Each server key (Launch.key: "alice", "alice/work") has a Plan the test may change before
or during a start:
- `plan.go` (set): start runs through; cleared, start waits there (`plan.entered` is set
  once it does) until the test sets it again, or the hub cancels the start.
- `plan.fail` (non-empty): once released, start raises SpawnError(fail, log, fail_status).
- `plan.say(message)`: a progress message, yielded by progress() while the start runs.
- `plan.stop_go` (set): stop returns at once; cleared, stop waits for it (`plan.stopping`
  is set meanwhile) up to its timeout, then "forces" the server.
- `plan.log`: the lines log_tail returns.
A started server is a real aiohttp app on 127.0.0.1 that answers as minihub's own server
does (see minihub.singleuser): 403 without `X-Minihub-Secret`, the proof on every answer
to the secret, 200 at `{prefix}api/status` with `last_activity`; any other path echoes
{"user", "server_name", "path", "method"}. `await fake.die(key, status, oom=False)` makes a
running server exit: poll returns the status and on_exit fires. The state is
{"id": ...}, so a second hub app given the same FakeSpawner re-adopts its servers; close()
leaves them running (as the seam requires) and `await fake.shutdown()` ends them all.
Only the "minihub" protocol is served.
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

from ..config import Config
from ..errors import SpawnError
from ..models import iso
from ..singleuser import PROOF_HEADER, SECRET_HEADER
from .base import UNKNOWN_EXIT, Endpoint, Launch, Spawner, Started, State


def _event(is_set: bool) -> asyncio.Event:
    e = asyncio.Event()
    if is_set:
        e.set()
    return e


@dataclass
class Plan:
    go: asyncio.Event = field(default_factory=lambda: _event(True))
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    fail: str = ""
    fail_status: int = 500
    log: list[str] = field(default_factory=list)
    stop_go: asyncio.Event = field(default_factory=lambda: _event(True))
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    messages: asyncio.Queue[str] = field(default_factory=asyncio.Queue)

    def say(self, message: str) -> None:
        self.messages.put_nowait(message)


@dataclass
class FakeServer:
    launch: Launch
    runner: web.AppRunner
    proof: str  # a test may change it: the hub must then refuse the answers
    last_activity: float = field(default_factory=time.time)
    exit: int | None = None
    oom: bool = False


_SERVER = web.AppKey("fake_server", FakeServer)


class FakeSpawner(Spawner):
    name = "fake"

    def __init__(self, cfg: Config | None = None) -> None:
        self.plans: dict[str, Plan] = {}
        self.servers: dict[str, FakeServer] = {}  # by state id, exited ones included
        self._ids = itertools.count(1)

    def plan(self, key: str) -> Plan:
        return self.plans.setdefault(key, Plan())

    def running(self, key: str) -> FakeServer | None:
        return next((s for s in self.servers.values()
                     if s.launch.key == key and s.exit is None), None)

    async def start(self, launch: Launch) -> Started:
        plan = self.plan(launch.key)
        plan.entered.set()
        await plan.go.wait()
        if launch.protocol != "minihub":
            raise SpawnError('FakeSpawner serves only [spawner] server = "minihub".')
        if plan.fail:
            raise SpawnError(plan.fail, "\n".join(plan.log), plan.fail_status)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        launch.listen_on("127.0.0.1", port)
        runner = web.AppRunner(self._app(launch), shutdown_timeout=1)
        srv = runner.app[_SERVER] = FakeServer(launch, runner, str(launch.config["proof"]))
        await srv.runner.setup()
        await web.SockSite(srv.runner, sock).start()
        sid = f"fake-{next(self._ids)}"
        self.servers[sid] = srv
        return Started(Endpoint("127.0.0.1", port), {"id": sid})

    async def progress(self, launch: Launch) -> AsyncIterator[str]:
        queue = self.plan(launch.key).messages
        while True:
            yield await queue.get()

    async def poll(self, state: State) -> int | None:
        srv = self.servers.get(str(state.get("id")))
        return UNKNOWN_EXIT if srv is None else srv.exit

    async def stop(self, state: State, timeout: float) -> None:
        srv = self.servers.get(str(state.get("id")))
        if srv is None or srv.exit is not None:
            return
        plan = self.plan(srv.launch.key)
        plan.stopping.set()
        try:
            await asyncio.wait_for(plan.stop_go.wait(), timeout)
        except TimeoutError:
            pass  # forced, as a real spawner's SIGKILL
        finally:
            plan.stopping.clear()
        await self._end(state, 0)

    async def die(self, key: str, status: int, oom: bool = False) -> None:
        sid = next((i for i, s in self.servers.items()
                    if s.launch.key == key and s.exit is None), None)
        if sid is None:
            raise KeyError(f"no running fake server {key!r}")
        self.servers[sid].oom = oom
        await self._end({"id": sid}, status)

    async def _end(self, state: State, status: int) -> None:
        srv = self.servers[state["id"]]
        srv.exit = status
        await srv.runner.cleanup()
        if self.on_exit is not None:
            self.on_exit(state)

    async def log_tail(self, state: State, lines: int = 20) -> str:
        srv = self.servers.get(str(state.get("id")))
        return "\n".join(self.plan(srv.launch.key).log[-lines:]) if srv else ""

    def oom_killed(self, state: State) -> bool:
        srv = self.servers.get(str(state.get("id")))
        return bool(srv and srv.oom)

    async def shutdown(self) -> None:
        """End every server (the test's teardown; the hub never calls this)."""
        for srv in self.servers.values():
            if srv.exit is None:
                srv.exit = 0
                await srv.runner.cleanup()

    def _app(self, launch: Launch) -> web.Application:
        secret = str(launch.config["secret"]).encode()
        prefix = launch.prefix

        @web.middleware
        async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
            given = request.headers.get(SECRET_HEADER, "").encode("utf-8", "replace")
            if not hmac.compare_digest(given, secret):
                return web.json_response({"message": "Forbidden"}, status=403)
            resp: web.StreamResponse = await handler(request)
            resp.headers[PROOF_HEADER] = request.app[_SERVER].proof
            return resp

        async def status(request: web.Request) -> web.Response:
            srv: FakeServer = request.app[_SERVER]
            return web.json_response({"last_activity": iso(srv.last_activity), "kernels": 0})

        async def echo(request: web.Request) -> web.Response:
            return web.json_response({"user": launch.user, "server_name": launch.server_name,
                                      "path": request.path, "method": request.method})

        app = web.Application(middlewares=[guard])
        app.router.add_get(prefix + "api/status", status)
        app.router.add_route("*", prefix + "{tail:.*}", echo)
        return app
