"""HTTP handlers for api/terminals and the terminal websocket, as jupyter_server's.

The websocket speaks terminado's JSON arrays: the client sends ["stdin", text] and
["set_size", rows, cols, height_px, width_px]; the server sends ["setup", {}] first, then
["stdout", text] (the recent output first) and ["disconnect", 1] when the shell has ended.
The work is in terminals.py, imported on the first use of a terminal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from .http import CONFIG, api_url, json_body, reply, text_field

if TYPE_CHECKING:
    from .terminals import Client, Terminal, TerminalManager

log = logging.getLogger("minihub.terminals")
NAME = r"{name:\w+}"
MAX_MESSAGE = 1 << 20  # a paste bigger than this closes the websocket (1009)


class Terminals:
    """The app's handle on its terminals: the manager exists once a terminal is asked for."""

    def __init__(self, root_dir: str, idle_timeout: int) -> None:
        self.root_dir, self.idle_timeout = root_dir, idle_timeout
        self.manager: TerminalManager | None = None

    def get(self) -> TerminalManager:
        if self.manager is None:
            from .terminals import TerminalManager

            self.manager = TerminalManager(self.root_dir, self.idle_timeout)
        return self.manager

    def last_activity(self) -> float | None:
        return self.manager.last_activity() if self.manager is not None else None

    async def close(self) -> None:
        if self.manager is not None:
            await self.manager.close()


TERMINALS = web.AppKey("terminals", Terminals)


async def list_terminals(request: web.Request) -> web.Response:
    return reply(request.app[TERMINALS].get().models())


async def new_terminal(request: web.Request) -> web.Response:
    body = await json_body(request) or {}
    name = text_field(body, "name") or None
    cwd = text_field(body, "cwd") or None
    term = await request.app[TERMINALS].get().create(name, cwd)
    return reply(term.model(), location=api_url(request, "api/terminals", term.name))


async def get_terminal(request: web.Request) -> web.Response:
    return reply(request.app[TERMINALS].get().get(request.match_info["name"]).model())


async def delete_terminal(request: web.Request) -> web.Response:
    await request.app[TERMINALS].get().terminate(request.match_info["name"])
    return web.Response(status=204)


async def terminal_websocket(request: web.Request) -> web.StreamResponse:
    term = request.app[TERMINALS].get().get(request.match_info["name"])  # 404 before upgrading
    ws = web.WebSocketResponse(heartbeat=30, max_msg_size=MAX_MESSAGE)
    await ws.prepare(request)
    client = term.attach()
    pump = asyncio.create_task(_pump(ws, term, client))
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                _handle(term, client, msg.data)
    finally:
        pump.cancel()
        term.detach(client)
        _stop_heartbeat(ws)
    return ws


async def _pump(ws: web.WebSocketResponse, term: Terminal, client: Client) -> None:
    """Send setup, then the output as it comes (coalesced); disconnect when the shell ends."""
    try:
        await ws.send_str(json.dumps(["setup", {}]))
        while True:
            if client.queue:
                await ws.send_str(json.dumps(["stdout", client.take()]))
                term.sent()
                continue
            if client.ended:
                await ws.send_str(json.dumps(["disconnect", 1]))
                await ws.close()
                return
            client.wakeup.clear()
            await client.wakeup.wait()
    except (ConnectionError, RuntimeError):
        return  # the client went away


def _handle(term: Terminal, client: Client, data: str) -> None:
    """One message from the browser; a malformed one is ignored, as terminado would not."""
    try:
        msg = json.loads(data)
    except (ValueError, RecursionError):
        return
    if not isinstance(msg, list) or not msg:
        return
    kind = msg[0]
    if kind == "stdin" and len(msg) > 1 and isinstance(msg[1], str):
        term.write(msg[1])
    elif kind == "set_size":
        size = _size(msg[1:5])
        if size is not None:
            term.resize(client, size)


def _size(values: list[Any]) -> tuple[int, int, int, int] | None:
    """rows, cols (required, 1..9999) and the pixel sizes (optional) of a set_size."""
    nums = [_whole(v) for v in values]
    if len(nums) < 2 or not all(1 <= n <= 9999 for n in nums[:2]):
        return None
    px = [n if 0 <= n <= 65535 else 0 for n in nums[2:4]] + [0, 0]
    return nums[0], nums[1], px[0], px[1]


def _whole(value: Any) -> int:
    if type(value) is int:
        return value
    if type(value) is float and math.isfinite(value):
        return int(value)
    return -1


def _stop_heartbeat(ws: web.WebSocketResponse) -> None:
    """As the kernels' bridge: aiohttp re-arms a closed response's heartbeat (see channels)."""
    cancel = getattr(ws, "_cancel_heartbeat", None)
    if callable(cancel):
        cancel()


async def close(app: web.Application) -> None:
    await app[TERMINALS].close()


def setup(app: web.Application, base_url: str) -> None:
    cfg = app[CONFIG]
    app[TERMINALS] = Terminals(cfg.notebook_dir, cfg.terminal_idle_timeout)
    api = base_url + "api/terminals"
    app.router.add_get(api, list_terminals)
    app.router.add_post(api, new_terminal)
    app.router.add_get(f"{api}/{NAME}", get_terminal)
    app.router.add_delete(f"{api}/{NAME}", delete_terminal)
    app.router.add_get(f"{base_url}terminals/websocket/{NAME}", terminal_websocket)
    app.on_shutdown.append(close)
