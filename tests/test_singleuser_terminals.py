"""Terminals in minihub's own server, through the hub, with real users and real shells.

The REST API and terminado's websocket messages, output arriving whole, resizing, a
reattaching websocket getting the recent output again, two websockets on one terminal,
DELETE and a stopped server killing the shells (and their jobs), another user refused,
terminal output reaching the hub as activity, and terminal_idle_timeout.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from conftest import gone, hub_config, needs_root
from test_hub_spawn import h, make_tokens, start

from minihub.app import make_app
from minihub.context import PARTS
from minihub.culler import Culler
from minihub.isotime import parse_iso

pytestmark = [needs_root, pytest.mark.timeout(90)]


class Term:
    """A websocket to a terminal and everything it has printed so far."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.out = ""
        self.messages: list[Any] = []

    async def send(self, *msg: Any) -> None:
        await self.ws.send_str(json.dumps(list(msg)))

    async def run(self, line: str) -> None:
        await self.send("stdin", line + "\r")

    async def until(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        """Read until `pattern` shows up in the output (ANSI sequences left in)."""
        deadline = time.monotonic() + timeout
        while (found := re.search(pattern, self.out)) is None:
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} in {self.out[-500:]!r}"
            msg = await self.ws.receive(timeout=left)
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            data = json.loads(msg.data)
            self.messages.append(data[0])
            if data[0] == "stdout":
                self.out += data[1]
        return found

    async def value(self, command: str) -> str:
        """Run `command` and return what it printed, between two markers."""
        tag = f"M{time.monotonic_ns()}"
        await self.run(f"echo {tag}-A$((1)); {command}; echo {tag}-Z$((1))")
        m = await self.until(rf"(?s){tag}-A1\r\n(.*?){tag}-Z1")
        return m.group(1).replace("\r", "").strip("\n")


async def open_term(c: TestClient, user: str, tok: str, name: str) -> Term:
    ws = await c.ws_connect(f"/user/{user}/terminals/websocket/{name}", headers=h(tok))
    term = Term(ws)
    msg = json.loads((await ws.receive(timeout=10)).data)
    assert msg == ["setup", {}]
    return term


async def new_terminal(c: TestClient, user: str, tok: str, **body: str) -> str:
    r = await c.post(f"/user/{user}/api/terminals", headers=h(tok), json=body)
    assert r.status == 200, await r.text()
    model = await r.json()
    assert set(model) == {"name", "last_activity"}
    return str(model["name"])


async def hub(aiohttp_client: Any, data_dir: str, names: list[str], **settings: Any) -> Any:
    cfg = hub_config(data_dir, hub__admin_access=False, **settings)
    tok = await make_tokens(cfg, names)
    return await aiohttp_client(make_app(cfg)), tok


async def test_terminal_api_websocket_and_isolation(aiohttp_client, data_dir, make_system_user):
    a, b = make_system_user("mhtm_alice"), make_system_user("mhtm_bob")
    c, tok = await hub(aiohttp_client, data_dir, [a.name, b.name])
    await start(c, a.name, tok[a.name])
    base, ha = f"/user/{a.name}/", h(tok[a.name])

    assert await (await c.get(base + "api/terminals", headers=ha)).json() == []
    name = await new_terminal(c, a.name, tok[a.name])
    assert name == "1"
    listed = await (await c.get(base + "api/terminals", headers=ha)).json()
    assert [t["name"] for t in listed] == ["1"]
    r = await c.get(base + "api/terminals/1", headers=ha)
    assert (await r.json())["name"] == "1"
    r = await c.get(base + "api/terminals/nope", headers=ha)
    assert r.status == 404 and set(await r.json()) == {"message", "reason"}
    with pytest.raises(aiohttp.WSServerHandshakeError) as e:
        await c.ws_connect(base + "terminals/websocket/nope", headers=ha)
    assert e.value.status == 404

    t = await open_term(c, a.name, tok[a.name], name)
    assert await t.value("id -un") == a.name
    assert await t.value("pwd") == a.home
    assert await t.value("echo $TERM") == "xterm-256color"
    assert await t.value("env | grep -c MINIHUB_LAUNCH || true") == "0"

    # 10,000 lines arrive whole and in order
    await t.run("seq 10000; echo seq-$((40+2))")
    await t.until("seq-42", timeout=30)
    first = t.out.index("\r\n", t.out.index("seq 10000")) + 2
    lines = [
        line.rsplit("\r", 1)[-1] for line in t.out[first : t.out.index("seq-42")].split("\r\n")
    ]
    assert [x for x in lines if x] == [str(i) for i in range(1, 10001)]

    await t.send("set_size", 40, 120, 800, 1000)
    assert await t.value("stty size") == "40 120"

    # a second websocket sees the same output; a reattaching one gets the scrollback
    t2 = await open_term(c, a.name, tok[a.name], name)
    await t2.until("seq-42")  # replayed
    await t.run("echo both-$((1+1))")
    await t.until("both-2")
    await t2.until("both-2")
    await t.ws.close()
    await t2.ws.close()
    t3 = await open_term(c, a.name, tok[a.name], name)
    await t3.until(r"10000\r\n")
    await t3.until("both-2")
    shell = int(await t3.value("echo $$"))
    job = int((await t3.value("sleep 600 & echo $!")).split()[-1])

    # bob gets neither the API nor the websocket of alice's terminal
    hb = h(tok[b.name])
    for method in ("GET", "DELETE"):
        r = await c.request(method, base + "api/terminals/1", headers=hb)
        assert r.status == 403
    r = await c.post(base + "api/terminals", headers=hb, json={})
    assert r.status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError) as e:
        await c.ws_connect(base + "terminals/websocket/1", headers=hb)
    assert e.value.status == 403

    # DELETE kills the shell and its job, and tells the websocket
    r = await c.delete(base + "api/terminals/1", headers=ha)
    assert r.status == 204
    assert await gone(shell) and await gone(job)
    msg = await t3.ws.receive(timeout=10)
    while msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data)[0] == "stdout":
        msg = await t3.ws.receive(timeout=10)
    assert msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data) == ["disconnect", 1]
    assert (await c.get(base + "api/terminals/1", headers=ha)).status == 404
    assert await (await c.get(base + "api/terminals", headers=ha)).json() == []


async def test_activity_and_stopping_the_server(aiohttp_client, data_dir, make_system_user):
    a = make_system_user("mhtm_carol")
    c, tok = await hub(aiohttp_client, data_dir, [a.name])
    await start(c, a.name, tok[a.name])
    base, ha = f"/user/{a.name}/", h(tok[a.name])
    named = await new_terminal(c, a.name, tok[a.name], name="work", cwd="/tmp")
    assert named == "work"
    r = await c.post(base + "api/terminals", headers=ha, json={"name": "work"})
    assert r.status == 409
    r = await c.post(base + "api/terminals", headers=ha, json={"name": "no/slash"})
    assert r.status == 400
    other = await new_terminal(c, a.name, tok[a.name])
    pids = []
    for name in (other, named):
        t = await open_term(c, a.name, tok[a.name], name)
        pids.append(int(await t.value("echo $$")))
        if name == named:
            assert await t.value("pwd") == "/tmp"
            # Output printed while no websocket (and no request) is there is activity.
            await t.run("sleep 3; echo late")
            await t.until("sleep 3")
        await t.ws.close()
    quiet_since = time.time()

    parts = c.server.app[PARTS]
    srv = next(s for s in parts.servers.all() if s.user == a.name)
    deadline = time.monotonic() + 15
    while srv.last_activity < quiet_since + 1:
        assert time.monotonic() < deadline, "the terminal's output never reached the hub"
        await asyncio.sleep(0.2)
        await parts.servers.refresh_activity(srv)
    await parts.servers.flush_activity()
    model = await (await c.get(f"/hub/api/users/{a.name}", headers=ha)).json()
    assert parse_iso(model["last_activity"]) >= quiet_since + 1
    # The built-in culler sees it: with a timeout that any activity from before the quiet
    # time exceeds, and only the server's own report to go on, it leaves the server alone.
    culler = Culler(parts.cfg, parts.servers, parts.store, parts.metrics, parts.access)
    culler.timeout = time.time() - quiet_since - 0.5  # seconds, as a float
    srv.last_activity = 0.0
    assert await culler.cull_once() == []
    assert srv.status == "running" and srv.last_activity >= quiet_since + 1

    r = await c.delete(f"/hub/api/users/{a.name}/server", headers=ha)
    assert r.status in (202, 204)
    for pid in pids:
        assert await gone(pid)


async def test_idle_terminal_is_killed(aiohttp_client, data_dir, make_system_user):
    a = make_system_user("mhtm_dave")
    c, tok = await hub(aiohttp_client, data_dir, [a.name], spawner__terminal_idle_timeout=1)
    await start(c, a.name, tok[a.name])
    base, ha = f"/user/{a.name}/", h(tok[a.name])
    name = await new_terminal(c, a.name, tok[a.name])
    t = await open_term(c, a.name, tok[a.name], name)
    pid = int(await t.value("echo $$"))
    await t.ws.close()
    deadline = time.monotonic() + 20
    while await (await c.get(base + "api/terminals", headers=ha)).json():
        assert time.monotonic() < deadline, "the idle terminal was never killed"
        await asyncio.sleep(0.2)
    assert await gone(pid)
