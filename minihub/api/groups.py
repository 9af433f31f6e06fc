"""/hub/api/groups: JupyterHub's group resource (list, create, delete, members, properties).

Paths, status codes and shapes are JupyterHub's (apihandlers/groups.py): unknown members
are a 400 naming them, an existing group a 409, and each model shows only the fields the
caller's read:groups / read:groups:name / read:roles:groups scopes reach. Group filters
(`groups!group=x`) are honoured through Access.allows(..., group=name).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web

from ..access import Principal
from ..access.db import GroupRow
from ..access.http import caller, require
from ..access.roles import GROUP_NAME
from ..auth import names
from ..body import Fields
from ..body import read as read_body
from ..context import Parts, parts
from ..errors import BadRequest, Forbidden
from .users import MAX_LIMIT, PAGINATION, _int

routes = web.RouteTableDef()
MAX_MEMBERS = 5000  # per request: a year's class lists, not a directory import
# Which fields each scope shows (JupyterHub's group_model access map).
FIELDS = {
    "read:groups": ("kind", "name", "properties", "users"),
    "read:groups:name": ("kind", "name"),
    "read:roles:groups": ("kind", "name", "roles"),
}


def group_name(raw: str) -> str:
    """A group name from a URL or a body: 1-255 characters, no '/', no control characters."""
    if not GROUP_NAME.match(raw):
        raise BadRequest(
            f"Invalid group name {raw[:64]!r}: use 1-255 characters without '/' or "
            "control characters."
        )
    return raw


def full_model(p: Parts, g: GroupRow) -> dict[str, Any]:
    return {
        "kind": "group",
        "name": g.name,
        "roles": sorted(r.name for r in p.access.roles.values() if g.name in r.groups),
        "users": sorted(g.members),
        "properties": g.properties,
    }


def model(p: Parts, who: Principal, g: GroupRow) -> dict[str, Any]:
    """The group model with the fields `who` may read of it."""
    keys: set[str] = set()
    for scope, fields in FIELDS.items():
        if p.access.allows(who, scope, group=g.name):
            keys.update(fields)
    return {k: v for k, v in full_model(p, g).items() if k in keys}


def _named(request: web.Request, scope: str) -> tuple[Parts, Principal, GroupRow]:
    """The {name} group of the URL, if the caller holds `scope` on it (403 before 404, so
    a refused caller learns nothing of which groups exist)."""
    name = group_name(request.match_info["name"])
    who = require(request, scope, f"group {name[:64]!r}", group=name)
    p = parts(request)
    return p, who, p.access.group(name)


async def members(p: Parts, given: Iterable[str]) -> list[str]:
    """Hub users' names, normalised; a 400 naming every one that is not a hub user."""
    wanted = list(dict.fromkeys(names.normalise(n) for n in given))
    missing = [n for n in wanted if await p.store.get_user(n) is None]
    if missing:
        shown = ", ".join(missing[:20]) + (
            f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        )
        raise BadRequest(f"No such user{'s' if len(missing) > 1 else ''}: {shown}")
    return wanted


def _users_field(f: Fields, required: str | None = None) -> list[str]:
    users = f.strings("users", max_items=MAX_MEMBERS, max_len=256)
    if users is None and required:
        raise BadRequest(required)
    return users or []


@routes.get("/groups")
async def list_groups(request: web.Request) -> web.Response:
    p = parts(request)
    who = caller(request)
    visible = p.access.groups_visible(who, "list:groups")
    if visible is not None and not visible:
        raise Forbidden(f"{who.name} may not list groups (needs the scope list:groups).")
    offset = _int(request, "offset", 0)
    limit = min(_int(request, "limit", MAX_LIMIT, low=1), MAX_LIMIT)
    every = sorted(
        (g for g in p.access.groups.values() if visible is None or g.name in visible),
        key=lambda g: g.id,
    )
    items = [model(p, who, g) for g in every[offset : offset + limit]]
    if PAGINATION not in request.headers.get("Accept", ""):
        return web.json_response(items)
    nxt = None
    if offset + limit < len(every):
        url = request.url.with_query(offset=offset + limit, limit=limit)
        nxt = {"offset": offset + limit, "limit": limit, "url": str(url)}
    page = {"offset": offset, "limit": limit, "total": len(every), "next": nxt}
    return web.json_response({"items": items, "_pagination": page})


@routes.post("/groups")
async def create_groups(request: web.Request) -> web.Response:
    """JupyterHub 3+: {"groups": ["a", "b"], "users": [...]} makes each, with those users."""
    who = require(request, "admin:groups")
    p = parts(request)
    f = (await read_body(request)).allow("groups", "users")
    wanted = [group_name(n) for n in f.strings("groups", max_items=1000, max_len=255) or []]
    if not wanted:
        raise BadRequest("Must specify at least one group to create")
    users = await members(p, _users_field(f))
    for name in wanted:  # every name checked before any is made: a 409 makes none
        if name in p.access.groups:
            raise BadRequest(f"Group {name[:64]} already exists", 409)
    made = [await p.access.create_group(n, users=users) for n in dict.fromkeys(wanted)]
    return web.json_response([model(p, who, g) for g in made], status=201)


@routes.get("/groups/{name}")
async def get_group(request: web.Request) -> web.Response:
    name = group_name(request.match_info["name"])
    p = parts(request)
    who = caller(request)
    if not any(p.access.allows(who, s, group=name) for s in FIELDS):
        raise Forbidden(f"{who.name} may not read group {name[:64]!r} (needs read:groups).")
    return web.json_response(model(p, who, p.access.group(name)))


@routes.post("/groups/{name}")
async def create_group(request: web.Request) -> web.Response:
    name = group_name(request.match_info["name"])
    who = require(request, "admin:groups")
    p = parts(request)
    f = (await read_body(request)).allow("users", "name", "kind", "properties")
    if name in p.access.groups:
        raise BadRequest(f"Group {name[:64]} already exists", 409)
    users = await members(p, _users_field(f))
    properties = f.object("properties")
    g = await p.access.create_group(name, properties.data if properties else None, users)
    return web.json_response(model(p, who, g), status=201)


@routes.delete("/groups/{name}")
async def delete_group(request: web.Request) -> web.Response:
    p, _, g = _named(request, "delete:groups")
    await p.access.delete_group(g.name)
    return web.Response(status=204)


@routes.post("/groups/{name}/users")
async def add_users(request: web.Request) -> web.Response:
    p, who, g = _named(request, "groups")
    f = (await read_body(request)).allow("users", "name", "kind")
    users = await members(p, _users_field(f, "Must specify users to add"))
    await p.access.add_members(g.name, users)
    return web.json_response(model(p, who, p.access.group(g.name)))


@routes.delete("/groups/{name}/users")
async def remove_users(request: web.Request) -> web.Response:
    p, who, g = _named(request, "groups")
    f = (await read_body(request)).allow("users", "name", "kind")
    users = await members(p, _users_field(f, "Must specify users to delete"))
    await p.access.remove_members(g.name, users)
    return web.json_response(model(p, who, p.access.group(g.name)))


@routes.put("/groups/{name}/properties")
async def set_properties(request: web.Request) -> web.Response:
    p, who, g = _named(request, "groups")
    await p.access.set_properties(g.name, (await read_body(request)).data)
    return web.json_response(model(p, who, p.access.group(g.name)))
