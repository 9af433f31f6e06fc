"""GET /hub/api/services and /hub/api/services/{name}, as JupyterHub's apihandlers/services.py.

A model's fields depend on the caller's scopes on that service: read:services gives the
whole model, read:services:name (implied by list:services) kind, name and admin,
read:roles:services adds roles. Services come from [[services]] only (no POST/DELETE).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..access import Access, Principal
from ..access.http import access, caller
from ..context import parts
from ..errors import Forbidden, NotFound
from ..service_spec import Service
from ..services import Registry, registry

routes = web.RouteTableDef()
# Which fields each scope shows (JupyterHub's service_model access_map).
FIELDS = {
    "read:services": (
        "kind",
        "name",
        "admin",
        "url",
        "prefix",
        "command",
        "pid",
        "info",
        "display",
    ),
    "read:services:name": ("kind", "name", "admin"),
    "read:roles:services": ("kind", "name", "roles", "admin"),
}


@routes.get("/services")
async def list_services(request: web.Request) -> web.Response:
    """{name: model} of the services the caller holds list:services on."""
    who, acc, reg = caller(request), access(request), registry(request)
    if not _holds_any(acc, who, "list:services", reg):
        raise Forbidden("Listing services needs the scope list:services (admins have it).")
    out = {
        name: service_model(request, acc, who, reg, svc)
        for name, svc in sorted(reg.services.items())
        if acc.allows(who, "list:services", service=name)
    }
    return web.json_response(out)


@routes.get("/services/{name}")
async def get_service(request: web.Request) -> web.Response:
    who, acc, reg = caller(request), access(request), registry(request)
    name = request.match_info["name"]
    if not any(acc.allows(who, scope, service=name) for scope in FIELDS):
        raise Forbidden(
            f"{who.name} may not read the service {name[:64]!r} "
            "(needs the scope read:services, read:services:name or read:roles:services)."
        )
    svc = reg.get(name)
    if svc is None:
        raise NotFound(f"No such service: {name[:64]!r}.")
    return web.json_response(service_model(request, acc, who, reg, svc))


def _holds_any(acc: Access, who: Principal, scope: str, reg: Registry) -> bool:
    return acc.allows(who, scope) or any(acc.allows(who, scope, service=n) for n in reg.services)


def service_model(
    request: web.Request, acc: Access, who: Principal, reg: Registry, svc: Service
) -> dict[str, Any]:
    base = parts(request).cfg.base_url
    roles = sorted(acc.roles_of(Principal("service", svc.name)))
    full: dict[str, Any] = {
        "kind": "service",
        "name": svc.name,
        "roles": roles,
        "admin": "admin" in roles,  # JupyterHub keeps the flag in step with the admin role
        "url": svc.url,
        "prefix": svc.prefix(base) if svc.url else "",
        "command": svc.command,
        "pid": reg.pid(svc.name),
        "info": svc.info,
        "display": svc.display,
    }
    keys: set[str] = set()
    for scope, fields in FIELDS.items():
        if acc.allows(who, scope, service=svc.name):
            keys.update(fields)
    return {k: v for k, v in full.items() if k in keys}
