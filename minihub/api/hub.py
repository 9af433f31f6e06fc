"""The hub itself over REST: `POST /hub/api/shutdown` as JupyterHub's (scope `shutdown`)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from ..access.http import require
from ..body import read as read_body
from ..context import SHUTDOWN, parts
from ..errors import Conflict

routes = web.RouteTableDef()
log = logging.getLogger("minihub")
_TASKS: set[asyncio.Task[None]] = set()  # the shutdowns under way (owned until they end)


@routes.post("/shutdown")
async def shutdown(request: web.Request) -> web.Response:
    """202, then the hub stops as on SIGTERM. `{"servers": true}` stops every user's server
    first (as [hub] cleanup_servers); `proxy` is accepted and means nothing: the proxy is
    the hub."""
    require(request, "shutdown")
    body = (await read_body(request)).allow("servers", "proxy")
    stop_servers = body.boolean("servers", False)
    body.boolean("proxy")
    stop = request.config_dict.get(SHUTDOWN)
    if stop is None:
        raise Conflict("This hub was not started by `minihub`, so it cannot stop itself.")
    servers = parts(request).servers
    log.warning("shutdown requested over the REST API (servers too: %s)", stop_servers)

    async def down() -> None:
        if stop_servers:
            running = [s for s in servers.all() if s.status == "running"]
            await asyncio.gather(
                *(servers.stop(s.user_id, s.name) for s in running), return_exceptions=True
            )
        stop.set()

    task = asyncio.get_running_loop().create_task(down())
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)
    return web.json_response({"status": 202, "message": "Shutting down."}, status=202)
