"""POST /hub/api/slurm/report: a Slurm job tells the hub the port its server listens on.

Authenticated by the launch's one-time token (X-Minihub-Launch-Token), which that job has
(in its environment); the answer is the server's config (secret and proof), for the job to
hand its server on stdin. The host is Slurm's address of the job's node, never the job's
say. Answers 404 to anything else, so the route reveals nothing.
"""

from __future__ import annotations

from aiohttp import web

from ...body import read as read_body
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
    body = (await read_body(request)).allow("job_id", "port")  # bounded, strict JSON
    job_id = body.string("job_id", 64)
    port = body.number("port", 1, 65535)
    if job_id is None or port is None or port != int(port):
        raise BadRequest("Expected JSON {job_id: string, port: an integer 1-65535}")
    config = await spawner.report(token, job_id, int(port))
    if config is None:
        raise NotFound("Not found")
    response = web.json_response({"ok": True, "config": config})
    response.headers["Cache-Control"] = "no-store"
    return response
