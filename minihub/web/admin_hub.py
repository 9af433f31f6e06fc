"""The hub's own state on the admin page: the announcement, set and cleared without a
restart, and sign-up requests waiting for approval.

Both need `admin:users` unfiltered: the announcement reaches every user and a request is
nobody's yet, so a scope narrowed to a group (a teaching assistant's) covers neither.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..access.http import allows, require
from ..auth import names
from ..auth.signups import Signups
from ..body import read_form
from ..context import PARTS, parts
from ..errors import HubError, NotFound
from . import announcement
from .admin import add_routes, admin_page, require_admin, section

routes = web.RouteTableDef()
SCOPE = "admin:users"


def _signups(request: web.Request) -> Signups | None:
    signups = getattr(parts(request).authenticator, "signups", None)
    return signups if isinstance(signups, Signups) else None


@section("_admin_hub.html", 20)
async def hub_values(request: web.Request) -> dict[str, Any]:
    p = parts(request)
    may = allows(request, SCOPE)
    signups = _signups(request)
    if signups is not None and may:
        await signups.refresh()  # the CLI may have changed them
    return {
        "may_announce": may,
        "ann_texts": announcement.current(p.cfg, p.settings),
        "ann_overridden": announcement.overridden(p.settings),
        "ann_pages": announcement.PAGES,
        "signup_requests": await signups.list() if signups is not None and may else [],
        "signup_approval": bool(getattr(p.authenticator, "signup_approval", False)),
    }


@routes.post("/hub/admin/announcement")
async def set_announcement(request: web.Request) -> web.Response:
    """Save every field as typed ("" clears one), or go back to the configuration's."""
    require_admin(request)
    require(request, SCOPE)
    p = parts(request)
    form = await read_form(request)
    if form.get("action") == "reset":
        await p.settings.set("announcement", {})
        return await admin_page(request, "The announcements are the configuration's again.")
    texts = {f: announcement.clean(f, form.get(f, "")) for f in announcement.FIELDS}
    await p.settings.set("announcement", texts)
    said = "Announcement saved." if any(texts.values()) else "Announcements cleared."
    return await admin_page(request, said)


def _request_name(request: web.Request) -> tuple[Signups, str]:
    require_admin(request)
    require(request, SCOPE)
    signups = _signups(request)
    if signups is None:
        raise NotFound("Sign-up requests exist only with the native authenticator.")
    return signups, names.normalise(request.match_info["name"])


@routes.post("/hub/admin/signups/{name}/approve")
async def approve(request: web.Request) -> web.Response:
    signups, name = _request_name(request)
    auth = parts(request).authenticator
    if name in auth.admin_users or not await auth.pool.run(auth.is_allowed, name):  # as sign-up
        error = (
            f"{name[:64]} is in [auth] admin_users or not allowed to sign up (the configuration "
            "changed since the request): refuse it; an admin's account is made otherwise."
        )
        return await admin_page(request, error=error, status=403)
    try:
        user = await signups.approve(name)
    except HubError as e:  # gone, or the name was taken meanwhile: say so on the page
        return await admin_page(request, error=e.message, status=e.status)
    return await admin_page(request, f"Approved {user.name}: they can sign in now.")


@routes.post("/hub/admin/signups/{name}/refuse")
async def refuse(request: web.Request) -> web.Response:
    signups, name = _request_name(request)
    if not await signups.remove(name):
        error = f"No sign-up request from {name[:64]!r}."
        return await admin_page(request, error=error, status=404)
    return await admin_page(request, f"Refused the sign-up of {name}.")


async def _count(app: web.Application) -> None:
    signups = getattr(app[PARTS].authenticator, "signups", None)
    if isinstance(signups, Signups):
        await signups.refresh()


def setup(app: web.Application, base_url: str) -> None:
    add_routes(app, base_url, list(routes))
    app.router.add_get(base_url + "hub/api/announcement", announcement.api_announcement)
    app.on_startup.append(_count)  # after the parts (a cleanup context) exist
