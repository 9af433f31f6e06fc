"""/hub/api/shares, /hub/api/share-codes and the shared-with listings: JupyterHub 5's sharing.

A share grants scopes filtered to one server (`!server=owner/name`) to a user or a group; a
share code is the same without a recipient, exchanged at /hub/accept-share (minihub.web.sharing).
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from .. import scopes as S
from .. import users
from ..access import Principal, db
from ..access.db import ShareCodeRow, ShareRow
from ..access.http import require
from ..auth import names
from ..auth import secrets as secrets_
from ..body import Fields
from ..body import read as read_body
from ..context import Parts, parts
from ..errors import BadRequest, Forbidden, NotFound
from ..models import iso
from ..store import User

routes = web.RouteTableDef()
PAGINATION = "application/jupyterhub-pagination+json"
DEFAULT_LIMIT, MAX_LIMIT = 50, 200  # JupyterHub's api_page_default_limit, api_page_max_limit
CODE_EXPIRES_IN = 86400  # JupyterHub's ShareCode.default_expires_in: a day
CODE_MIN_EXPIRES_IN, CODE_MAX_EXPIRES_IN = 60, 525600 * 60  # a minute .. a year
_CODE_ID = re.compile(r"^sc_(\d{1,18})$")


# --- models -----------------------------------------------------------------------------------
def running(p: Parts) -> set[tuple[str, str]]:
    """(owner, server) of every running server: what `ready` says in the models."""
    return {(s.user, s.name) for s in p.servers.all() if s.status == "running"}


def server_url(p: Parts, owner: str, server: str) -> str:
    return f"{p.cfg.base_url}user/{owner}/" + (f"{server}/" if server else "")


def _full(p: Parts, path: str) -> str | None:
    public = urlsplit(str(p.cfg.get("hub.public_url")))
    return f"{public.scheme}://{public.netloc}{path}" if public.netloc else None


def shared_server(p: Parts, owner: str, server: str, ready: set[tuple[str, str]]) -> dict[str, Any]:
    url = server_url(p, owner, server)
    return {
        "name": server,
        "user": {"name": owner},
        "url": url,
        "full_url": _full(p, url),
        "ready": (owner, server) in ready,
    }


def share_model(p: Parts, s: ShareRow, ready: set[tuple[str, str]]) -> dict[str, Any]:
    return {
        "server": shared_server(p, s.owner, s.server, ready),
        "scopes": list(s.scopes),
        "user": {"name": s.user} if s.user else None,
        "group": {"name": s.group} if s.group else None,
        "kind": "group" if s.group else "user",
        "created_at": iso(s.created),
    }


def code_model(
    p: Parts, c: ShareCodeRow, ready: set[tuple[str, str]], code: str | None = None
) -> dict[str, Any]:
    model: dict[str, Any] = {
        "server": shared_server(p, c.owner, c.server, ready),
        "scopes": list(c.scopes),
        "id": f"sc_{c.id}",
        "created_at": iso(c.created),
        "expires_at": iso(c.expires),
        "exchange_count": c.exchange_count,
        "last_exchanged_at": iso(c.last_exchanged),
    }
    if code is not None:  # only when it is made: the hub keeps its hash, not the code
        model["code"] = code
        # In the fragment, which browsers never send: the code stays out of every request
        # line and log (JupyterHub puts it in the query); the page reads it in the browser.
        model["accept_url"] = f"{p.cfg.base_url}hub/accept-share#code={code}"
        model["full_accept_url"] = _full(p, model["accept_url"])
    return model


def _page(request: web.Request, items: list[dict[str, Any]]) -> web.Response:
    """JupyterHub's paginated list: {"items": [...], "_pagination": {...}}, always."""
    wants = PAGINATION in request.headers.get("Accept", "")
    offset = _int(request, "offset", 0)
    limit = max(1, min(_int(request, "limit", DEFAULT_LIMIT if wants else MAX_LIMIT), MAX_LIMIT))
    nxt = None
    if offset + limit < len(items):
        url = str(request.url.update_query(offset=offset + limit, limit=limit))
        nxt = {"offset": offset + limit, "limit": limit, "url": url}
    return web.json_response(
        {
            "items": items[offset : offset + limit],
            "_pagination": {"offset": offset, "limit": limit, "total": len(items), "next": nxt},
        }
    )


def _int(request: web.Request, key: str, default: int) -> int:
    raw = request.query.get(key)
    if raw is None:
        return default
    raw = raw.lstrip("-")  # JupyterHub takes abs()
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
        raise BadRequest("Invalid argument type, offset and limit must be integers")
    return int(raw)


def _shares(request: web.Request, rows: list[ShareRow]) -> web.Response:
    p = parts(request)
    ready = running(p)
    return _page(request, [share_model(p, s, ready) for s in sorted(rows, key=lambda s: s.id)])


# --- what the URL names -------------------------------------------------------------------------
def _owner_server(request: web.Request) -> tuple[str, str]:
    return names.normalise(request.match_info["owner"]), request.match_info.get("server", "")


async def existing_server(p: Parts, owner: str, server: str) -> User:
    """The owner, if `server` is one of theirs: the default one always is, a named one
    while it exists (JupyterHub: 404 otherwise)."""
    user = await p.store.get_user(owner)
    if user is not None and (not server or p.servers.peek(user.id, server) is not None):
        return user
    raise NotFound(f"No such server: {owner[:64]}/{server[:64]}")


def _filtered(p: Parts, texts: list[str] | None, owner: str, server: str) -> list[str]:
    """The scopes, each filtered to the server (JupyterHub's Share.apply_filter): a scope
    with another filter is a 400; none asked means access to the server."""
    where = f"server={owner}/{server}"
    out = set()
    for text in texts or ["access:servers"]:
        scope = S.parse(text, p.access.custom)
        if scope.kind and (scope.kind, scope.value) != ("server", f"{owner}/{server}"):
            raise BadRequest(
                f"!{text.partition('!')[2][:80]} not allowed on sharing, only !{where}"
            )
        out.add(f"{scope.name}!{where}")
    return sorted(out)


def may_grant(p: Parts, who: Principal, owner: str, wanted: list[str]) -> None:
    """A share gives at most what the caller holds (JupyterHub) and what the owner holds."""
    for text in wanted:
        scope = S.parse(text, p.access.custom)
        if not p.access.grants(who, scope):
            raise Forbidden(f"Do not have permission to grant share with scope {text}")
        if not p.access.grants(p.access.user(owner), scope):
            raise Forbidden(f"{owner} does not hold the scope {text}, so it cannot be shared.")


def _recipient(f: Fields) -> tuple[str | None, str | None]:
    user, group = f.string("user", 255), f.string("group", 255)
    if user and group:
        raise BadRequest("Expected exactly one of `user` or `group`, not both.")
    if not user and not group:
        raise BadRequest("Specify exactly one of `user` or `group`")
    return (names.normalise(user) if user else None), group


def find(p: Parts, owner: str, server: str, user: str | None, group: str | None) -> ShareRow | None:
    for s in p.access.shares_of(owner, server):
        if s.user == user and s.group == group:
            return s
    return None


async def grant(
    p: Parts, owner: str, server: str, scopes: list[str], user: str | None, group: str | None
) -> ShareRow:
    """Add `scopes` to the share with the user or group (JupyterHub's Share.grant extends)."""
    old = find(p, owner, server, user, group)
    merged = sorted(set(old.scopes if old else ()) | set(scopes))
    if old is not None and merged == sorted(old.scopes):
        return old
    return await p.access.share(owner, server, merged, user=user, group=group)


# --- /shares ------------------------------------------------------------------------------------
@routes.get("/shares/{owner}")
async def owner_shares(request: web.Request) -> web.Response:
    owner = names.normalise(request.match_info["owner"])
    require(request, "read:shares", f"{owner[:64]}'s shares", user=owner)
    p = parts(request)
    await users.get(p.store, owner)
    return _shares(request, p.access.shares_of(owner))


@routes.get("/shares/{owner}/")
@routes.get("/shares/{owner}/{server}")
async def server_shares(request: web.Request) -> web.Response:
    owner, server = _owner_server(request)
    require(request, "read:shares", f"{owner[:64]}/{server[:64]}", user=owner, server=server)
    p = parts(request)
    await existing_server(p, owner, server)
    return _shares(request, p.access.shares_of(owner, server))


@routes.post("/shares/{owner}/")
@routes.post("/shares/{owner}/{server}")
async def share(request: web.Request) -> web.Response:
    owner, server = _owner_server(request)
    who = require(request, "shares", f"{owner[:64]}/{server[:64]}", user=owner, server=server)
    p = parts(request)
    f = (await read_body(request)).allow("scopes", "user", "group")
    user, group = _recipient(f)
    wanted = _filtered(p, f.strings("scopes", 100, 300), owner, server)
    await existing_server(p, owner, server)
    may_grant(p, who, owner, wanted)
    if user is not None:
        if not p.access.allows(who, "read:users:name", user=user):
            raise Forbidden("Need scope 'read:users:name' to share with users by name")
        if await p.store.get_user(user) is None:
            raise BadRequest(f"No such user: {user[:64]}")
        if user == owner:
            raise BadRequest(f"{owner} owns this server: there is nothing to share with them.")
    elif group is not None:
        if not p.access.allows(who, "read:groups:name", group=group):
            raise Forbidden("Need scope 'read:groups:name' to share with groups by name")
        if group not in p.access.groups:
            raise BadRequest(f"No such group: {group[:64]}")
    row = await grant(p, owner, server, wanted, user, group)
    return web.json_response(share_model(p, row, running(p)))


@routes.patch("/shares/{owner}/")
@routes.patch("/shares/{owner}/{server}")
async def revoke(request: web.Request) -> web.Response:
    """Take away some scopes (all when none are named); the share goes when none are left.
    An unknown user, group or share is revoked already: {} (JupyterHub)."""
    owner, server = _owner_server(request)
    require(request, "shares", f"{owner[:64]}/{server[:64]}", user=owner, server=server)
    p = parts(request)
    f = (await read_body(request)).allow("scopes", "user", "group")
    user, group = _recipient(f)
    taken = f.strings("scopes", 100, 300)
    await existing_server(p, owner, server)
    old = find(p, owner, server, user, group)
    if old is None:
        return web.json_response({})
    where = f"!server={owner}/{server}"
    drop = {t if "!" in t else t + where for t in taken or ()}
    left = [s for s in old.scopes if s not in drop] if taken else []
    if left == old.scopes:
        return web.json_response(share_model(p, old, running(p)))
    if not left:
        await p.access.unshare(old.id)
        return web.json_response({})
    row = await p.access.share(owner, server, left, user=user, group=group)
    return web.json_response(share_model(p, row, running(p)))


@routes.delete("/shares/{owner}/")
@routes.delete("/shares/{owner}/{server}")
async def revoke_all(request: web.Request) -> web.Response:
    owner, server = _owner_server(request)
    require(request, "shares", f"{owner[:64]}/{server[:64]}", user=owner, server=server)
    p = parts(request)
    await existing_server(p, owner, server)
    await p.access.unshare_server(owner, server)
    return web.Response(status=204)


# --- shared with a user or a group --------------------------------------------------------------
@routes.get("/users/{name}/shared")
async def user_shared(request: web.Request) -> web.Response:
    name = names.normalise(request.match_info["name"])
    require(request, "read:users:shares", f"user {name[:64]!r}", user=name)
    p = parts(request)
    await users.get(p.store, name)
    return _shares(request, p.access.shares_reaching(name))


def _users_share(request: web.Request) -> tuple[str, ShareRow]:
    p = parts(request)
    name = names.normalise(request.match_info["name"])
    owner, server = _owner_server(request)
    for s in p.access.shares_with(user=name):
        if s.owner == owner and s.server == server:
            return name, s
    raise NotFound(f"No such share for user {name[:64]} on {owner[:64]}/{server[:64]}")


@routes.get("/users/{name}/shared/{owner}/")
@routes.get("/users/{name}/shared/{owner}/{server}")
async def user_share(request: web.Request) -> web.Response:
    name = names.normalise(request.match_info["name"])
    require(request, "read:users:shares", f"user {name[:64]!r}", user=name)
    _, row = _users_share(request)
    p = parts(request)
    return web.json_response(share_model(p, row, running(p)))


@routes.delete("/users/{name}/shared/{owner}/")
@routes.delete("/users/{name}/shared/{owner}/{server}")
async def leave_user_share(request: web.Request) -> web.Response:
    """A user leaves a server shared with them."""
    name = names.normalise(request.match_info["name"])
    require(request, "users:shares", f"user {name[:64]!r}", user=name)
    _, row = _users_share(request)
    await parts(request).access.unshare(row.id)
    return web.Response(status=204)


@routes.get("/groups/{name}/shared")
async def group_shared(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    require(request, "read:groups:shares", f"group {name[:64]!r}", group=name)
    p = parts(request)
    p.access.group(name)
    return _shares(request, p.access.shares_with(group=name))


def _groups_share(request: web.Request) -> ShareRow:
    p = parts(request)
    name = request.match_info["name"]
    p.access.group(name)
    owner, server = _owner_server(request)
    for s in p.access.shares_with(group=name):
        if s.owner == owner and s.server == server:
            return s
    raise NotFound(f"No such share for group {name[:64]} on {owner[:64]}/{server[:64]}")


@routes.get("/groups/{name}/shared/{owner}/")
@routes.get("/groups/{name}/shared/{owner}/{server}")
async def group_share(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    require(request, "read:groups:shares", f"group {name[:64]!r}", group=name)
    p = parts(request)
    return web.json_response(share_model(p, _groups_share(request), running(p)))


@routes.delete("/groups/{name}/shared/{owner}/")
@routes.delete("/groups/{name}/shared/{owner}/{server}")
async def leave_group_share(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    require(request, "groups:shares", f"group {name[:64]!r}", group=name)
    await parts(request).access.unshare(_groups_share(request).id)
    return web.Response(status=204)


# --- share codes --------------------------------------------------------------------------------
async def _codes(request: web.Request, rows: list[ShareCodeRow]) -> web.Response:
    p = parts(request)
    ready = running(p)
    return _page(request, [code_model(p, c, ready) for c in sorted(rows, key=lambda c: c.id)])


@routes.get("/share-codes/{owner}")
async def owner_codes(request: web.Request) -> web.Response:
    owner = names.normalise(request.match_info["owner"])
    require(request, "read:shares", f"{owner[:64]}'s share codes", user=owner)
    p = parts(request)
    user = await users.get(p.store, owner)
    rows: list[ShareCodeRow] = []
    for server in {"", *p.servers.of_user(user.id)}:
        rows += await db.share_codes(p.store, owner, server)
    return await _codes(request, rows)


@routes.get("/share-codes/{owner}/")
@routes.get("/share-codes/{owner}/{server}")
async def server_codes(request: web.Request) -> web.Response:
    owner, server = _owner_server(request)
    require(request, "read:shares", f"{owner[:64]}/{server[:64]}", user=owner, server=server)
    p = parts(request)
    await existing_server(p, owner, server)
    return await _codes(request, await db.share_codes(p.store, owner, server))


@routes.post("/share-codes/{owner}/")
@routes.post("/share-codes/{owner}/{server}")
async def new_code(request: web.Request) -> web.Response:
    """A code to hand on (a link); shown once in this answer, stored only as its hash."""
    owner, server = _owner_server(request)
    who = require(request, "shares", f"{owner[:64]}/{server[:64]}", user=owner, server=server)
    p = parts(request)
    f = (await read_body(request)).allow("scopes", "expires_in")
    expires_in = f.number("expires_in", CODE_MIN_EXPIRES_IN, CODE_MAX_EXPIRES_IN)
    if expires_in is not None and expires_in != int(expires_in):
        raise BadRequest("expires_in must be a whole number of seconds.")
    wanted = _filtered(p, f.strings("scopes", 100, 300), owner, server)
    may_grant(p, who, owner, wanted)
    await existing_server(p, owner, server)
    code = secrets_.new_token()
    expires = time.time() + (expires_in or CODE_EXPIRES_IN)
    row = await db.add_share_code(
        p.store,
        owner,
        server,
        secrets_.hash_token(code),
        code[: secrets_.PREFIX_LEN],
        wanted,
        expires,
    )
    resp = web.json_response(code_model(p, row, running(p), code))
    resp.headers["Cache-Control"] = "no-store"
    return resp


@routes.delete("/share-codes/{owner}/")
@routes.delete("/share-codes/{owner}/{server}")
async def delete_codes(request: web.Request) -> web.Response:
    """One code (?code= or ?id=sc_N), or every code of the server."""
    owner, server = _owner_server(request)
    require(request, "shares", f"{owner[:64]}/{server[:64]}", user=owner, server=server)
    p = parts(request)
    await existing_server(p, owner, server)
    code, cid = request.query.get("code"), request.query.get("id")
    if code:
        row = await db.find_share_code(p.store, secrets_.hash_token(code))
        if row is None or (row.owner, row.server) != (owner, server):
            raise NotFound("No matching code found")
        await db.delete_share_codes(p.store, owner, server, row.id)
    elif cid:
        m = _CODE_ID.match(cid)
        if not m or not await db.delete_share_codes(p.store, owner, server, int(m.group(1))):
            raise NotFound(f"No code found matching id={cid[:40]}")
    else:
        await db.delete_share_codes(p.store, owner, server)
    return web.Response(status=204)
