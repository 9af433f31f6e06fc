"""The admin page: add, remove and promote users; start and stop anyone's servers.

The page is made of sections, each a template and a function giving its values
(`section`): this module's users table, minihub.web.admin_groups (groups),
minihub.web.admin_hub (announcement, sign-up requests), minihub.web.course (course links,
class folders). A section's forms post to its own module's routes, which answer with
`admin_page` (a message or an error on top).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .. import users
from ..access.http import allows, require
from ..body import read_form
from ..context import parts
from ..errors import BadRequest, Forbidden, HubError, NotFound
from ..store import User
from .pages import STATUS_WORDS, current
from .render import render

routes = web.RouteTableDef()
SectionValues = Callable[[web.Request], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Section:
    template: str
    order: int  # where on the page, top first
    values: SectionValues


SECTIONS: list[Section] = []


def section(template: str, order: int) -> Callable[[SectionValues], SectionValues]:
    """Registers a section of the admin page; its values join the page's (names must not clash)."""

    def register(fn: SectionValues) -> SectionValues:
        SECTIONS.append(Section(template, order, fn))
        SECTIONS.sort(key=lambda s: s.order)
        return fn

    return register


def require_admin(request: web.Request) -> User:
    """The caller, if they may open the admin page (admin-ui; each action needs its own)."""
    user = current(request)
    if not allows(request, "admin-ui"):
        raise Forbidden("Only admins may open the admin page (needs the scope admin-ui).")
    return user


ACTION_SCOPES = {
    "start": "start:servers",
    "stop": "delete:servers",
    "make-admin": "admin:users",
    "remove-admin": "admin:users",
    "delete": "delete:users",
    "edit": "admin:users",  # rename, admin role
}


@routes.get("/hub/admin")
async def admin_get(request: web.Request) -> web.Response:
    return await admin_page(request)


async def admin_page(
    request: web.Request, message: str = "", error: str = "", status: int = 200
) -> web.Response:
    require_admin(request)
    ctx: dict[str, Any] = {"message": message, "error": error, "words": STATUS_WORDS}
    for s in SECTIONS:
        ctx.update(await s.values(request))
    ctx["sections"] = [s.template for s in SECTIONS]
    return render(request, "admin.html", ctx, status=status)


@routes.post("/hub/admin/users")
async def add_users(request: web.Request) -> web.Response:
    require_admin(request)
    p = parts(request)
    form = await request.post()
    admin = form.get("admin") == "on"
    require(request, "admin:users")
    password = str(form.get("password", "")) or None
    lines = [ln.strip() for ln in str(form.get("usernames", "")).splitlines() if ln.strip()]
    if not lines:
        return await admin_page(request, error="Give at least one username.", status=400)
    added, errors = [], []
    for name in lines[:1000]:
        try:
            made = await users.create(p.store, p.authenticator, name, admin, password, p.access)
            added.append(made.name)
        except HubError as e:
            errors.append(f"{name[:64]}: {e.message}")
    msg = f"Added {len(added)} user(s): {', '.join(added)}" if added else ""
    return await admin_page(request, msg, "; ".join(errors), 200 if added else 400)


@routes.post("/hub/admin/users/{name}/{action}")
async def user_action(request: web.Request) -> web.Response:
    me = require_admin(request)
    p = parts(request)
    form = await read_form(request)
    user = await users.get(p.store, request.match_info["name"])
    action = request.match_info["action"]
    if action not in ACTION_SCOPES or action == "edit":
        raise BadRequest(f"Unknown action {action[:32]!r}", 404)
    # only start and stop act on the server: a share filtered to it reaches those alone
    on = {"server": ""} if action in ("start", "stop") else {}
    require(request, ACTION_SCOPES[action], f"user {user.name}", user=user.name, **on)
    if action == "start":
        await p.servers.spawn(user, wait=0)
    elif action == "stop":
        await p.servers.stop(user.id)
    elif action in ("make-admin", "remove-admin"):
        if user.id == me.id and action == "remove-admin":
            raise BadRequest("You cannot remove your own admin rights.")
        admin_users.require_unfiltered(request, user.name)
        await p.access.set_admin(user.name, action == "make-admin")
    else:
        admin_users.not_stronger(request, user.name, "delete:users")
        said = await admin_users.delete_one(p, me, user, form.get("remove_account") == "on")
        p.identities.invalidate()
        if form.get("remove_account") == "on":
            return await admin_page(request, said)
    p.identities.invalidate()
    raise admin_users.back(request, form)


@routes.post("/hub/admin/users/{name}/servers/{server_name}/{action}")
async def server_action(request: web.Request) -> web.Response:
    """Start or stop one of a user's named servers."""
    require_admin(request)
    p = parts(request)
    form = await read_form(request)
    user = await users.get(p.store, request.match_info["name"])
    server_name, action = request.match_info["server_name"], request.match_info["action"]
    if p.servers.peek(user.id, server_name) is None:
        raise NotFound(f"{user.name} has no server named {server_name[:40]!r}.")
    if action in ("start", "stop"):
        require(
            request,
            ACTION_SCOPES[action],
            f"{user.name}'s server",
            user=user.name,
            server=server_name,
        )
    if action == "start":
        await p.servers.spawn(user, server_name, wait=0)
    elif action == "stop":
        await p.servers.stop(user.id, server_name)
    else:
        raise BadRequest(f"Unknown action {action[:32]!r}", 404)
    raise admin_users.back(request, form)


def setup(app: web.Application, base_url: str) -> None:
    # their forms answer with this module's admin_page; admin_users' routes go first, so
    # /hub/admin/users/{name}/edit is not read as an {action}
    from . import admin_groups

    add_routes(app, base_url, [*admin_users.routes, *routes, *admin_groups.routes])


def add_routes(app: web.Application, base_url: str, table: list[web.AbstractRouteDef]) -> None:
    prefix = base_url.rstrip("/")
    for r in table:
        assert isinstance(r, web.RouteDef)
        app.router.add_route(r.method, prefix + r.path, r.handler)


from . import admin_users  # last: it registers the users section with this module
