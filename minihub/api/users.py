"""/hub/api: the version, users, their servers, tokens and activity.

A user sees and changes only themself; admins see and change everyone. Errors are JSON
`{"status": N, "message": "..."}` (rendered by minihub.web.errors).
"""

from __future__ import annotations

import asyncio
import json
import platform
import sys
import time
import weakref
from typing import Any

from aiohttp import web

from .. import __version__, scopes, users
from ..access import Access, Principal
from ..access.http import caller, principal, require
from ..auth import names
from ..body import Fields
from ..body import read as read_body
from ..context import Parts, identity, parts
from ..errors import BadRequest, Forbidden, NotFound
from ..isotime import parse_iso
from ..models import server_model, token_model, user_model
from ..scopes import Scope
from ..servers import Server
from ..store import Token, User, UserQuery

routes = web.RouteTableDef()
PAGINATION = "application/jupyterhub-pagination+json"
MAX_LIMIT = 500
CHUNK = 100  # user models built between two yields to the event loop
MAX_NEW_USERS = 1000  # per POST /users; a class list, not a bulk import
USER_OPTIONS_MAX = 64 * 1024  # a profile's choices are a few hundred bytes
MAX_EXPIRES_IN = 100 * 365.25 * 86400  # past a century, leave expires_in out: "never"
# The JupyterHub REST API version minihub speaks: clients (jupyterhub-singleuser, the idle
# culler) choose features by it, so it is what GET /hub/api and X-JupyterHub-Version report.
JUPYTERHUB_API_VERSION = "5.3.0"


def me(request: web.Request) -> User:
    """The calling user (a service is refused: this needs a user)."""
    ident = identity(request)
    caller(request)
    if ident is None or ident.user is None:
        raise Forbidden("A service cannot do this: it is not a user.")
    return ident.user


def admin(request: web.Request, scope: str = "admin:users") -> Principal:
    """The caller, if they hold `scope` on every user (admins do)."""
    return require(request, scope)


async def target(request: web.Request, scope: str = "read:users") -> User:
    """The {name} user of the URL, if the caller holds `scope` on them (users on themself,
    admins on everyone, services, groups' filters and scoped tokens as their scopes say)."""
    name = names.normalise(request.match_info["name"])
    require(request, scope, f"user {name[:64]!r}", user=name)
    return await users.get(parts(request).store, name)


def model(p: Parts, user: User, request: web.Request | None = None) -> dict[str, Any]:
    """The user model; stopped named servers only with ?include_stopped_servers, as in
    JupyterHub (the idle culler reads the default listing and expects active servers)."""
    return Models(p, request).one(user, p.servers.of_user(user.id))


class Models:
    """User models for one request, as the caller may see them. What a scope the caller
    holds unfiltered shows is decided once, not per user; a filtered one (a group's TA) is
    asked per user. Without a request: every field (the caller was checked already)."""

    def __init__(self, p: Parts, request: web.Request | None = None) -> None:
        self.p = p
        self.base = p.cfg.base_url
        self.stopped = request is None or _include_stopped(request)
        self.who = principal(request) if request is not None else None
        self.shown: set[str] | None = None  # None: every field
        self.ask: list[tuple[str, tuple[str, ...]]] = []  # scopes to check per user
        if request is not None:
            held = p.access.held(self.who) if self.who is not None else frozenset()
            self.shown = set()
            for scope, fields in MODEL_FIELDS.items():
                if Scope(scope) in held:
                    self.shown.update(fields)
                elif self.who is not None:
                    self.ask.append((scope, fields))

    def one(self, user: User, servers: dict[str, Server]) -> dict[str, Any]:
        """`servers`: the user's, as Servers.of_user gives them."""
        p = self.p
        if servers and not self.stopped:
            servers = {n: s for n, s in servers.items() if s.status != "stopped"}
        full = user_model(
            self.base,
            user,
            servers,
            roles=p.access.user_roles(user.name),
            groups=p.access.groups_of(user.name),
        )
        if self.shown is None:
            return full
        keys = set(self.shown)
        for scope, fields in self.ask:
            if not keys.issuperset(fields) and p.access.allows(self.who, scope, user=user.name):
                keys.update(fields)
        if len(keys) == len(full):
            return full
        return {k: v for k, v in full.items() if k in keys}

    def many(self, page: list[User]) -> list[dict[str, Any]]:
        """A page of users: their servers looked up in one pass over the hub's servers."""
        by_user = self._servers(page)
        return [self.one(u, by_user.get(u.id, {})) for u in page]

    def encoded(self, page: list[User]) -> list[str]:
        """The page's models as JSON. A whole model of a user without servers (most users,
        as an admin sees them) is kept encoded for the next listing while the user's row
        and the access state are what they were."""
        by_user = self._servers(page)
        whole = self.shown is None or self.shown >= ALL_FIELDS
        seen = self._encoded_cache() if whole else {}
        out = []
        for u in page:
            servers = by_user.get(u.id)
            if servers or not whole:
                out.append(json.dumps(self.one(u, servers or {})))
                continue
            stamp = (u.name, u.created, u.last_activity)
            hit = seen.get(u.id)
            if hit is None or hit[0] != stamp:
                hit = stamp, json.dumps(self.one(u, {}))
                # Full, it keeps what it holds: evicting the oldest, a listing of more users
                # than it holds evicted each one just before it was asked for again (10,002
                # users: every page of every listing encoded anew, ~9 ms a page).
                if u.id in seen or len(seen) < MAX_ENCODED:
                    seen[u.id] = hit
            out.append(hit[1])
        return out

    def _encoded_cache(self) -> dict[int, tuple[tuple[Any, ...], str]]:
        """This hub's encoded models, emptied when the access state changes (every model
        made before may show other roles or groups now)."""
        version = self.p.access.version
        held = _ENCODED.get(self.p.access)
        if held is None or held[0] != version:
            held = _ENCODED[self.p.access] = (version, {})
        return held[1]

    def _servers(self, page: list[User]) -> dict[int, dict[str, Server]]:
        ids = {u.id for u in page}
        by_user: dict[int, dict[str, Server]] = {}
        for s in self.p.servers.all():
            if s.user_id in ids and (s.name or s.status != "stopped"):
                by_user.setdefault(s.user_id, {})[s.name] = s
        return by_user


# Which of a user model's fields each scope shows (JupyterHub's user_model access map).
MODEL_FIELDS = {
    "read:users": (
        "kind",
        "name",
        "admin",
        "roles",
        "groups",
        "server",
        "pending",
        "created",
        "last_activity",
        "auth_state",
    ),
    "read:users:name": ("kind", "name", "admin"),
    "read:users:groups": ("kind", "name", "groups"),
    "read:users:activity": ("kind", "name", "last_activity"),
    "read:servers": ("kind", "name", "servers"),
    "read:roles:users": ("kind", "name", "roles", "admin"),
}
ALL_FIELDS = frozenset(f for fields in MODEL_FIELDS.values() for f in fields)
# Encoded whole user models by hub (its Access): the access state's version they were made
# at, and user id -> (the row they were made from, JSON). Bounded: ~0.6 KiB each
# (tracemalloc), so at most ~6 MiB however many users are listed.
_ENCODED: weakref.WeakKeyDictionary[Access, tuple[int, dict[int, tuple[tuple[Any, ...], str]]]] = (
    weakref.WeakKeyDictionary()
)
MAX_ENCODED = 10_000


def _include_stopped(request: web.Request) -> bool:
    return request.query.get("include_stopped_servers", "0").lower() not in ("0", "false")


@routes.get("")
@routes.get("/")
async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": JUPYTERHUB_API_VERSION, "minihub_version": __version__})


@routes.get("/info")
async def info(request: web.Request) -> web.Response:
    admin(request, "read:hub")
    p = parts(request)
    return web.json_response(
        {
            "version": __version__,
            "python": platform.python_version(),
            "sys_executable": sys.executable,
            "authenticator": {"class": type(p.authenticator).__name__, "version": __version__},
            "spawner": {"class": type(p.servers.spawner).__name__, "version": __version__},
        }
    )


@routes.get("/user")
async def whoami(request: web.Request) -> web.Response:
    """Who the caller is, with their scopes: what jupyterhub-singleuser and services ask."""
    who = caller(request)
    p = parts(request)
    have = p.access.held(who)
    if who.is_service:
        return web.json_response(
            {
                "kind": "service",
                "name": who.name,
                "admin": False,
                "roles": sorted(p.access.roles_of(who)),
                "groups": [],
                "session_id": None,
                "scopes": scopes.strings(have),
            }
        )
    m = model(p, me(request), request)
    m["session_id"] = None
    m["scopes"] = scopes.strings(have)
    # jupyterhub-singleuser asks for these filters by name; say each one the caller holds.
    # !user only if it reaches all the caller's servers: a named server accepts it, and the
    # default server's own token (access:servers!server=amy/) must not reach those.
    explicit = set()
    if p.access.allows(who, "access:servers", user=who.name, server=""):
        explicit.add(f"access:servers!server={who.name}/")
    if p.access.allows(who, "access:servers", user=who.name):
        explicit.add(f"access:servers!user={who.name}")
    if explicit:
        m["scopes"] = sorted({*m["scopes"], *explicit})
    return web.json_response(m)


@routes.get("/users")
async def list_users(request: web.Request) -> web.Response:
    p = parts(request)
    visible = p.access.visible(caller(request), "list:users")
    if visible is not None and not visible:
        raise Forbidden("Listing users needs the scope list:users (admins have it).")
    state = request.query.get("state", "")
    if state not in ("", "active", "inactive", "ready"):
        raise BadRequest("state must be active, inactive or ready")
    sort = request.query.get("sort", "name")  # minihub listed by name before `sort`
    if sort.lstrip("-") not in ("id", "name", "last_activity"):
        raise BadRequest(f"sort must be 'id', 'name' or 'last_activity', not {sort[:40]!r}")
    offset = _int(request, "offset", 0)
    limit = min(_int(request, "limit", MAX_LIMIT, low=1), MAX_LIMIT)
    q = UserQuery(
        substring=request.query.get("name_filter", "")[:64],
        names=visible,
        order=sort.lstrip("-"),
        descending=sort.startswith("-"),
        offset=offset,
        limit=limit,
    )
    active = {s.user_id for s in p.servers.all() if s.status != "stopped"}
    if state == "active":
        q.ids = active
    elif state == "ready":
        q.ids = {s.user_id for s in p.servers.all() if s.status == "running"}
    elif state == "inactive":
        q.not_ids = active
    page, total = await p.store.search_users(q)
    items = await _encoded(Models(p, request), page)
    if PAGINATION in request.headers.get("Accept", ""):
        nxt = None
        if offset + limit < total:
            nxt = {
                "offset": offset + limit,
                "limit": limit,
                "url": f"{request.url.update_query(offset=offset + limit, limit=limit)}",
            }
        pagination = {"offset": offset, "limit": limit, "total": total, "next": nxt}
        # what json.dumps({"items": [...], "_pagination": ...}) writes, items encoded already
        return _json(f'{{"items": [{items}], "_pagination": {json.dumps(pagination)}}}')
    return _json(f"[{items}]")


async def _encoded(models: Models, page: list[User]) -> str:
    """The page's models as JSON list items, CHUNK at a time with the loop let go between
    (a listing of 500 never keeps GET /hub/api/user waiting long), each chunk encoded at
    once: its dicts die young instead of surviving into the collector's old generation."""
    chunks: list[str] = []
    for i in range(0, len(page), CHUNK):
        if i:
            await asyncio.sleep(0)
        chunks += models.encoded(page[i : i + CHUNK])
    return ", ".join(chunks)


def _json(text: str) -> web.Response:
    return web.Response(text=text, content_type="application/json")


def _int(request: web.Request, key: str, default: int, low: int = 0) -> int:
    raw = request.query.get(key)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9 or int(raw) < low:
        raise BadRequest(f"{key} must be an integer of at least {low}")
    return int(raw)


@routes.post("/users")
async def create_users(request: web.Request) -> web.Response:
    admin(request)
    p = parts(request)
    f = (await read_body(request)).allow("usernames", "admin")
    given = f.strings("usernames", max_items=MAX_NEW_USERS, max_len=64)
    if not given:
        raise BadRequest('Send {"usernames": ["name", ...], "admin": false}')
    make_admin = f.boolean("admin", False)
    # Every name is checked before any is created: a refused request stores nothing.
    wanted = list(dict.fromkeys(_new_name(p, n) for n in given))
    made = []
    for name in wanted:
        if await p.store.get_user(name):
            continue
        made.append(await users.create(p.store, p.authenticator, name, make_admin, access=p.access))
    if not made:
        raise BadRequest("All those users already exist.", 409)
    return web.json_response([model(p, u) for u in made], status=201)


def _new_name(p: Parts, name: str) -> str:
    """The normalised name, if a user may be created with it (users.create checks again)."""
    name = names.validate(name)
    if name in p.authenticator.blocked_users:
        raise BadRequest(f"{name} is blocked ([auth] blocked_users)")
    return name


@routes.get("/users/{name}")
async def get_user(request: web.Request) -> web.Response:
    return web.json_response(model(parts(request), await target(request), request))


@routes.post("/users/{name}")
async def create_user(request: web.Request) -> web.Response:
    admin(request)
    p = parts(request)
    f = (await read_body(request)).allow("admin")
    user = await users.create(
        p.store,
        p.authenticator,
        request.match_info["name"],
        f.boolean("admin", False),
        access=p.access,
    )
    return web.json_response(model(p, user), status=201)


@routes.patch("/users/{name}")
async def patch_user(request: web.Request) -> web.Response:
    user = await target(request, "users")
    p = parts(request)
    f = (await read_body(request)).allow("name", "admin")
    make_admin, new = f.boolean("admin"), f.string("name", max_len=64)
    if make_admin is not None or new is not None:
        admin(request, "admin:users")  # a scope, not the owner's flag: tokens may be narrower
    new = await _rename_to(p, user, new) if new is not None and new != user.name else None
    # Both checked: now change. A refused rename must not have changed the admin flag.
    if make_admin is not None:
        await p.access.set_admin(user.name, make_admin)
    if new is not None:
        await p.store.rename_user(user.id, new)
        p.access.renamed(user.name, new)
    p.identities.invalidate()
    fresh = await p.store.get_user_by_id(user.id)
    assert fresh is not None
    return web.json_response(model(p, fresh))


async def _rename_to(p: Parts, user: User, new: str) -> str | None:
    """The name `user` may be renamed to (None if it is theirs already), or BadRequest."""
    new = names.validate(new)
    if new == user.name:
        return None
    if await p.store.get_user(new):
        raise BadRequest(f"User {new} already exists", 409)
    if any(s.status != "stopped" for s in p.servers.of_user(user.id).values()):
        raise BadRequest("Stop the user's servers before renaming them.")
    return new


@routes.delete("/users/{name}")
async def delete_user(request: web.Request) -> web.Response:
    who = require(request, "delete:users")
    p = parts(request)
    user = await users.get(p.store, request.match_info["name"])
    if not who.is_service and user.name == who.name:
        raise BadRequest("You cannot delete yourself.")
    await p.servers.forget_user(user.id)
    await p.store.delete_user(user.id)
    p.access.forgotten(user.name)
    p.identities.invalidate()
    return web.Response(status=204)


@routes.post("/users/{name}/server")
@routes.post("/users/{name}/servers/")
@routes.post("/users/{name}/servers/{server_name}")
async def start_server(request: web.Request) -> web.Response:
    user = await target(request, "start:servers")
    p = parts(request)
    name = request.match_info.get("server_name", "")
    options = (await read_body(request)).data  # user_options, as JupyterHub's body
    if len(json.dumps(options)) > USER_OPTIONS_MAX:  # kept with the server, stored, listed
        raise BadRequest(f"user_options must be at most {USER_OPTIONS_MAX // 1024} KiB of JSON.")
    srv = p.servers.peek(user.id, name)
    what = f"server {name!r}" if name else "server"
    if srv and srv.status in ("running", "stopping"):
        raise BadRequest(
            f"{user.name}'s {what} is "
            + ("already running." if srv.status == "running" else "stopping; try again soon.")
        )
    srv = await p.servers.spawn(user, name, user_options=options)
    status = 201 if srv.status == "running" else 202
    return web.json_response(server_model(p.cfg.base_url, user, srv, name), status=status)


@routes.delete("/users/{name}/server")
@routes.delete("/users/{name}/servers/")
@routes.delete("/users/{name}/servers/{server_name}")
async def stop_server(request: web.Request) -> web.Response:
    user = await target(request, "delete:servers")
    p = parts(request)
    name = request.match_info.get("server_name", "")
    remove = (await read_body(request)).allow("remove").boolean("remove", False)
    if name and not p.cfg.get("hub.allow_named_servers"):
        raise BadRequest("Named servers are not enabled on this hub ([hub] allow_named_servers).")
    if remove and not name:
        raise BadRequest("The default server cannot be removed, only stopped.")
    srv = p.servers.peek(user.id, name)
    if name and srv is None:
        raise NotFound(f"{user.name} has no server named {name[:64]!r}.")
    if srv is None or (srv.status == "stopped" and not remove):
        return web.Response(status=204)
    if remove:  # its shares and share codes go at once, not when it has stopped
        await p.access.unshare_server(user.name, name)
    work = p.servers.remove(user.id, name) if remove else p.servers.stop(user.id, name)
    task = asyncio.create_task(work)
    done, _ = await asyncio.wait({task}, timeout=10)
    return web.Response(status=204 if done else 202)


@routes.get("/users/{name}/server/progress")
@routes.get("/users/{name}/servers/{server_name}/progress")
async def progress(request: web.Request) -> web.StreamResponse:
    """EventSource stream of spawn progress, as JupyterHub's."""
    user = await target(request, "read:servers")
    p = parts(request)
    name = request.match_info.get("server_name", "")
    srv = p.servers.peek(user.id, name)
    if name and srv is None:
        raise NotFound(f"{user.name} has no server named {name[:64]!r}.")
    if srv is None or (srv.status == "stopped" and not srv.error):
        # As JupyterHub: nothing is starting, so there is no progress to follow.
        raise BadRequest(
            f"{user.name}'s {'server ' + repr(name) if name else 'server'} is not starting."
        )
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    sent = 0
    for _ in range(int(float(p.cfg.get("spawner.start_timeout")) * 10) + 20):
        srv = p.servers.peek(user.id, name)
        msgs = srv.progress if srv else []
        for i, msg in enumerate(msgs[sent:], start=sent + 1):
            await _event(resp, {"progress": min(95, 10 * i), "message": msg})
        sent = len(msgs)
        if srv is None or srv.status != "pending":
            break
        await asyncio.sleep(0.1)
    srv = p.servers.peek(user.id, name)
    if srv and srv.status == "running":
        await _event(
            resp,
            {
                "progress": 100,
                "ready": True,
                "message": "Server ready",
                "url": p.servers.prefix(srv),
            },
        )
    elif srv and srv.error:
        await _event(resp, {"progress": 100, "failed": True, "message": srv.error})
    return resp


async def _event(resp: web.StreamResponse, data: dict[str, Any]) -> None:
    await resp.write(f"data: {json.dumps(data)}\n\n".encode())


@routes.get("/users/{name}/tokens")
async def list_tokens(request: web.Request) -> web.Response:
    user = await target(request, "read:tokens")
    p = parts(request)
    toks = await p.store.list_tokens(user.id)
    return web.json_response(
        {"api_tokens": [_token_model(p, user, t) for t in toks], "oauth_tokens": []}
    )


@routes.post("/users/{name}/tokens")
async def create_token(request: web.Request) -> web.Response:
    user = await target(request, "tokens")
    f = (await read_body(request)).allow("note", "expires_in", "scopes", "roles")
    note = f.string("note", max_len=500) or "Requested via api"
    expires_in = f.number("expires_in", 1, MAX_EXPIRES_IN)
    wanted = f.strings("scopes", max_items=100, max_len=200) or []
    p = parts(request)
    for role in f.strings("roles", max_items=100, max_len=200) or []:
        # JupyterHub 2's token roles (deprecated there for scopes): a role's scopes
        if role not in p.access.roles:
            raise BadRequest(f"No such role: {role[:64]!r} (known: {', '.join(p.access.roles)})")
        wanted += [s for s in p.access.roles[role].scopes if s not in wanted]
    scopes.validate(wanted, p.access.custom)
    wanted = _no_stronger(request, user, wanted)
    secret, tok = await users.new_token(parts(request).store, user, note, wanted, expires_in)
    return web.json_response(_token_model(p, user, tok, secret), status=201)


def _no_stronger(request: web.Request, user: User, wanted: list[str]) -> list[str]:
    """A token gets at most what its owner holds, and a token made with a token at most
    what that token holds (JupyterHub: 403 for scopes the requester does not have)."""
    p = parts(request)
    who = caller(request)
    mine = p.access.token_asks(who)  # a token's scopes ("token" role's if it asked for none)
    if mine is not None and "inherit" in mine:
        mine = None
    if not wanted or "inherit" in wanted:
        return list(mine) if mine else wanted
    owner = p.access.user(user.name)
    for text in wanted:
        for s in scopes.expand([text], user.name, custom=p.access.custom):
            if not p.access.grants(owner, s):
                raise Forbidden(f"{user.name} does not hold the scope {text[:80]} asked for.")
    if mine and not set(wanted) <= set(mine):
        raise Forbidden("A token cannot create a token with scopes it does not hold itself.")
    return wanted


def _token_model(p: Parts, user: User, tok: Token, secret: str | None = None) -> dict[str, Any]:
    held = p.access.held(Principal("user", user.name, tuple(tok.scopes)))  # as principal_of
    return token_model(user, tok, scopes.strings(held), secret)


def _token_id(request: web.Request) -> int:
    raw = request.match_info["token_id"]
    raw = raw[1:] if raw[:1] in ("a", "o") else raw
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise NotFound("No such token")
    return int(raw)


@routes.get("/users/{name}/tokens/{token_id}")
async def get_token(request: web.Request) -> web.Response:
    user = await target(request, "read:tokens")
    tok = await parts(request).store.get_token(_token_id(request))
    if tok is None or tok.user_id != user.id:
        raise NotFound("No such token")
    return web.json_response(_token_model(parts(request), user, tok))


@routes.delete("/users/{name}/tokens/{token_id}")
async def delete_token(request: web.Request) -> web.Response:
    user = await target(request, "tokens")
    p = parts(request)
    if not await p.store.delete_token(user.id, _token_id(request)):
        raise NotFound("No such token")
    p.identities.invalidate()
    return web.Response(status=204)


@routes.post("/users/{name}/activity")
async def activity(request: web.Request) -> web.Response:
    user = await target(request, "users:activity")
    p = parts(request)
    f = (await read_body(request)).allow("last_activity", "servers")
    stamps = [
        t
        for t in [_stamp(f)]
        + [_stamp(_one_server(p, user, name, s)) for name, s in f.objects("servers").items()]
        if t is not None
    ]
    if not stamps:
        raise BadRequest('Send {"last_activity": "<ISO 8601 time>"}')
    stamps = [min(t, time.time()) for t in stamps]  # the future would keep the culler away
    await p.store.touch_user(user.id, max(stamps))
    touched = [""] if f.objects("servers") == {} else list(f.objects("servers"))
    for name in touched:
        srv = p.servers.peek(user.id, name)
        if srv and srv.status == "running":
            srv.last_activity = max(srv.last_activity, max(stamps))
    return web.Response(status=204)


def _one_server(p: Parts, user: User, name: str, fields: Fields) -> Fields:
    if name and p.servers.peek(user.id, name) is None:
        raise BadRequest(f"No such server {name[:64]!r} for {user.name}.")
    return fields.allow("last_activity")


def _stamp(f: Fields) -> float | None:
    text = f.string("last_activity", max_len=64)
    if text is None:
        return None
    try:
        return parse_iso(text)
    except ValueError:
        raise BadRequest(
            f"{f.where + '.' if f.where else ''}last_activity must be an ISO 8601 "
            f"time, not {text[:40]!r}."
        ) from None
