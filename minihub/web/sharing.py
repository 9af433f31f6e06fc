"""Sharing in the browser: the page that accepts a share link (/hub/accept-share, as
JupyterHub's) and what the home page shows of shares (its Share dialog, "Shared with me").

The dialog itself calls the REST API (minihub.api.shares) from minihub/web/static/share.js.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp import web

from ..access import db
from ..access.db import ShareCodeRow
from ..access.http import principal
from ..api.shares import grant, running, server_url
from ..auth import secrets as S
from ..context import Parts, identity, parts
from ..errors import BadRequest, Forbidden, NotFound
from ..store import User
from . import pages
from .render import render

routes = web.RouteTableDef()
# What a share's scopes let the recipient do, in words (scopes.md's descriptions, shortened).
WORDS = {
    "access:servers": "open the server and use it: its files, notebooks and kernels",
    "read:servers": "see whether it runs",
    "start:servers": "start it",
    "delete:servers": "stop it",
    "servers": "start, stop and see it",
    "shares": "share it with others",
    "read:shares": "see who it is shared with",
}


def home_context(request: web.Request, user: User) -> dict[str, Any]:
    """For the home page: the servers `user` may share, and the servers shared with them."""
    p = parts(request)
    who = principal(request)
    names = [""]
    if p.cfg.get("hub.allow_named_servers"):
        names += [n for n, _ in pages.named_servers(p.servers, user.id)]
    ready = running(p)
    with_me = [
        {
            "owner": s.owner,
            "server": s.server,
            "url": server_url(p, s.owner, s.server),
            "ready": (s.owner, s.server) in ready,
            "group": s.group,
        }
        for s in sorted(p.access.shares_reaching(user.name), key=lambda s: (s.owner, s.server))
        if s.owner != user.name
    ]
    return {
        "sharable": [n for n in names if p.access.allows(who, "shares", user=user.name, server=n)],
        "shared_with_me": with_me,
        "may_list_users": p.access.visible(who, "list:users") != set(),
        "may_list_groups": p.access.groups_visible(who, "list:groups") != set(),
    }


async def _code(p: Parts, code: str) -> ShareCodeRow | None:
    if not code or len(code) > 200:
        return None
    return await db.find_share_code(p.store, S.hash_token(code))


def _describe(scopes: list[str]) -> list[str]:
    return [WORDS.get(s.partition("!")[0], s.partition("!")[0]) for s in scopes]


def _no_store(resp: web.Response) -> web.Response:
    resp.headers["Cache-Control"] = "no-store"  # the page's URL carries the code
    return resp


@routes.get("/hub/accept-share")
async def accept_page(request: web.Request) -> web.Response:
    """A link's page. The code is in the URL's fragment (minihub's links): the page's
    script posts it to see what it gives; in the query (JupyterHub's links): shown at once."""
    code = request.query.get("code", "")
    if not code:  # logged out, the script keeps the code in the tab while the user logs in
        here = f"{parts(request).cfg.base_url}hub/accept-share"
        ctx = {
            "next": request.query.get("next", ""),
            "logged_in": identity(request) is not None,
            "login_url": f"{parts(request).cfg.base_url}hub/login?next={quote(here, safe='')}",
        }
        return _no_store(render(request, "accept_share_open.html", ctx))
    return await _preview(request, pages.current(request), code)


async def _preview(request: web.Request, user: User, code: str) -> web.Response:
    """What the link gives, and a button to accept it."""
    p = parts(request)
    row = await _code(p, code)
    if row is None:
        raise NotFound("This share link is unknown, has expired or was revoked: ask for a new one.")
    if row.owner == user.name:
        raise Forbidden(
            "This link shares your own server: send it to the people you want to share it with."
        )
    ctx = {
        "code": code,
        "owner": row.owner,
        "server": row.server,
        "ready": (row.owner, row.server) in running(p),
        "url": server_url(p, row.owner, row.server),
        "what": _describe(row.scopes),
        "expires": row.expires,
        "next": request.query.get("next", ""),
    }
    return _no_store(render(request, "accept_share.html", ctx))


@routes.post("/hub/accept-share")
async def accept(request: web.Request) -> web.Response:
    """Exchange the code for a share with the logged-in user, then on to the server."""
    user = pages.current(request)
    p = parts(request)
    form = await request.post()
    if form.get("preview"):
        return await _preview(request, user, str(form.get("code", "")))
    row = await _code(p, str(form.get("code", "")))
    if row is None:
        raise BadRequest("This share link is unknown, has expired or was revoked.")
    if row.owner == user.name:
        raise BadRequest("This link shares your own server: you cannot accept it yourself.")
    await grant(p, row.owner, row.server, row.scopes, user.name, None)
    await db.mark_share_code_used(p.store, row.id)
    nxt = str(form.get("next", ""))
    raise web.HTTPFound(
        pages.safe_next(request, nxt) if nxt else server_url(p, row.owner, row.server)
    )


def setup(app: web.Application, base_url: str) -> None:
    prefix = base_url.rstrip("/")
    for r in routes:
        assert isinstance(r, web.RouteDef)
        app.router.add_route(r.method, prefix + r.path, r.handler)
