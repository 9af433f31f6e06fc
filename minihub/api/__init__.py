"""The JupyterHub-compatible REST API under /hub/api, one module per resource.

Errors are JSON `{"status": N, "message": "..."}` (rendered by minihub.web.errors).
"""

from __future__ import annotations

from aiohttp import web

from ..spawner.slurm import report as slurm_report
from . import groups, hub, services, shares, users
from .users import JUPYTERHUB_API_VERSION

TABLES = (
    users.routes,
    groups.routes,
    shares.routes,
    services.routes,
    hub.routes,
    slurm_report.routes,
)


def setup(app: web.Application, base_url: str) -> None:
    prefix = base_url + "hub/api"
    for table in TABLES:
        for r in table:
            assert isinstance(r, web.RouteDef)
            app.router.add_route(r.method, prefix + r.path, r.handler)

    async def version_header(request: web.Request, resp: web.StreamResponse) -> None:
        if request.path == prefix or request.path.startswith(prefix + "/"):
            resp.headers["X-JupyterHub-Version"] = JUPYTERHUB_API_VERSION

    app.on_response_prepare.append(version_header)
