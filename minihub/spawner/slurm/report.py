"""POST /hub/api/slurm/report: a Slurm job tells the hub the port its server listens on.

Authenticated by the launch's one-time token (X-Minihub-Launch-Token), which only that job
has (in its environment); the host is Slurm's address of the job's node, never the job's
say. Answers 404 to anything else, so the route reveals nothing.
"""

from __future__ import annotations

from aiohttp import web

from ...context import parts
from ...errors import BadRequest, NotFound
from .job import TOKEN_HEADER

routes = web.RouteTableDef()


@routes.post("/slurm/report")
async def report(request: web.Request) -> web.Response:
    from .spawner import SlurmSpawner

    spawner = parts(request).servers.spawner
    token = request.headers.get(TOKEN_HEADER, "")
    if not isinstance(spawner, SlurmSpawner) or not token:
        raise NotFound("Not found")
    try:
        body = await request.json()
        job_id, port = str(body["job_id"]), int(body["port"])
    except (ValueError, KeyError, TypeError):
        raise BadRequest("Expected JSON {job_id, port}") from None
    if not 0 < port < 65536:
        raise BadRequest("port must be between 1 and 65535")
    if not await spawner.report(token, job_id, port):
        raise NotFound("Not found")
    return web.json_response({"ok": True})
