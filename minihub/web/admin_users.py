"""The admin page's users table: one page of users filtered, sorted and paged in SQL (the
filter lives in the URL), their servers with live memory, CPU and kernels, and the actions
on one user or on many (a selection or the whole filter), each checked per target."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from .. import users
from ..access import Principal
from ..access.http import allows, principal, require
from ..auth import names
from ..auth.native import NativeAuthenticator
from ..body import read_form
from ..context import SHUTDOWN, Parts, parts
from ..errors import BadRequest, Conflict, Forbidden, HubError
from ..servers import Server
from ..spawner import accounts
from ..spawner.base import Usage
from ..spawner.cgroups import hub_memory
from ..spawner.local import LocalSpawner
from ..store import User, UserQuery
from .admin import ACTION_SCOPES, admin_page, require_admin, section

log = logging.getLogger("minihub.web")
routes = web.RouteTableDef()
PER_PAGE = (25, 50, 100, 200, 500)
SORTS = ("name", "-name", "last_activity", "-last_activity", "running")
STATES = ("", "running", "pending", "stopped")
BULK_ACTIONS = ("start", "stop", "delete", "add-to-group", "reset-passwords")
MAX_BULK = 10_000  # users one bulk action reaches (a whole filter of a big hub)
MAX_PASSWORDS = 1000  # bcrypt costs ~50 ms each: a class, not the whole hub at once
USAGE_WAIT = 2.0  # seconds the page waits for the servers' usage before showing it without
BULK_STOP_WAIT = 30.0
PASSWORDS: web.RequestKey[list[tuple[str, str]]] = web.RequestKey("new_passwords", list)
_ALPHABET = "abcdefghijkmnpqrstuvwxyzACDEFGHJKLMNPQRTUVWXY34679"  # nothing to misread
_background: set[asyncio.Task[None]] = set()  # bulk stops still going after the answer


@dataclass(frozen=True)
class Filter:
    """The table's view, as its URL query says: a bookmark or a reload keeps it."""

    q: str = ""
    group: str = ""
    state: str = ""
    admin: bool = False
    sort: str = "name"
    page: int = 1
    per_page: int = 50

    @classmethod
    def parse(cls, data: Mapping[str, str]) -> Filter:
        state, sort = data.get("state", ""), data.get("sort", "") or "name"
        if state not in STATES:
            raise BadRequest("state must be running, pending or stopped.")
        if sort not in SORTS:
            raise BadRequest(f"sort must be one of {', '.join(SORTS)}.")
        per_page = _number(data, "per_page", 50)
        if per_page not in PER_PAGE:
            raise BadRequest(f"per_page must be one of {', '.join(map(str, PER_PAGE))}.")
        return cls(
            q=data.get("q", "").strip()[:64],
            group=data.get("group", "").strip()[:255],
            state=state,
            admin=data.get("admin", "") in ("1", "on", "true"),
            sort=sort,
            page=max(1, _number(data, "page", 1)),
            per_page=per_page,
        )

    def query(self, **change: Any) -> str:
        """The URL query of this view (or of it changed), defaults left out."""
        f = replace(self, **change)
        pairs = [
            ("q", f.q),
            ("group", f.group),
            ("state", f.state),
            ("admin", "1" if f.admin else ""),
            ("sort", "" if f.sort == "name" else f.sort),
            ("per_page", "" if f.per_page == 50 else str(f.per_page)),
            ("page", "" if f.page == 1 else str(f.page)),
        ]
        return urlencode([(k, v) for k, v in pairs if v])

    def sort_link(self, key: str) -> str:
        """The query sorting by `key`, or the other way round if it is sorted so already."""
        if key == "running":
            return self.query(sort="running", page=1)
        return self.query(sort=f"-{key}" if self.sort == key else key, page=1)


def _number(data: Mapping[str, str], key: str, default: int) -> int:
    raw = data.get(key, "")
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 7:
        raise BadRequest(f"{key} must be a whole number.")
    return int(raw)


# --- which users --------------------------------------------------------------------------
def server_index(p: Parts) -> dict[int, list[Server]]:
    """Every user's servers the hub knows, by user id: one pass over them for the page."""
    out: dict[int, list[Server]] = {}
    for srv in p.servers.all():
        out.setdefault(srv.user_id, []).append(srv)
    return out


def users_in(p: Parts, who: Principal | None, f: Filter, offset: int, limit: int) -> UserQuery:
    """The store query for a view: only users the caller may list (list:users), then the
    filter's group, admins, state, in its order."""
    only = p.access.visible(who, "list:users")
    if f.group:
        g = p.access.groups.get(f.group)
        members = set(g.members) if g else set()
        only = members if only is None else only & members
    if f.admin:
        admins = p.access.role_members("admin")
        only = admins if only is None else only & admins
    running = {s.user_id for s in p.servers.all() if s.status == "running"}
    pending = {s.user_id for s in p.servers.all() if s.pending}
    q = UserQuery(substring=names.normalise(f.q) if f.q else "", names=only)
    if f.state == "running":
        q.ids = running
    elif f.state == "pending":
        q.ids = pending
    elif f.state == "stopped":
        q.not_ids = running | pending
    q.order, q.descending = f.sort.lstrip("-"), f.sort.startswith("-")
    q.front, q.offset, q.limit = running, offset, limit
    return q


@dataclass
class ServerView:
    name: str  # "" for the default server
    status: str
    srv: Server | None
    may_open: bool
    url: str
    usage: Usage | None = None


@dataclass
class Row:
    user: User
    admin: bool
    groups: list[str]
    servers: list[ServerView]

    @property
    def running(self) -> bool:
        return any(s.status == "running" for s in self.servers)


def _views(p: Parts, request: web.Request, user: User, known: list[Server]) -> list[ServerView]:
    by_name = {s.name: s for s in known}
    wanted = [""] + sorted(n for n in by_name if n)
    views = []
    for name in wanted:
        srv = by_name.get(name)
        status = srv.status if srv else "stopped"
        may = status == "running" and allows(request, "access:servers", user=user.name, server=name)
        url = p.servers.prefix(srv) if srv else ""
        views.append(ServerView(name, status, srv, may, url))
    return views


async def _usage(p: Parts, views: list[ServerView]) -> None:
    """Each running server's usage, asked of the spawner all at once, bounded in time."""
    running = [v for v in views if v.status == "running" and v.srv is not None]

    async def one(v: ServerView) -> None:
        assert v.srv is not None
        try:
            v.usage = await p.servers.spawner.usage(v.srv.state)
        except Exception:
            log.exception("usage of %s unknown", v.srv.label)

    if running:
        await asyncio.wait([asyncio.create_task(one(v)) for v in running], timeout=USAGE_WAIT)


@section("_admin_users.html", 10)
async def users_values(request: web.Request) -> dict[str, Any]:
    p = parts(request)
    f = Filter.parse(request.query)
    who = principal(request)
    page, total = await p.store.search_users(
        users_in(p, who, f, (f.page - 1) * f.per_page, f.per_page)
    )
    index = server_index(p)
    admins = p.access.role_members("admin")
    rows = [
        Row(
            u,
            u.name in admins,
            p.access.groups_of(u.name),
            _views(p, request, u, index.get(u.id, [])),
        )
        for u in page
    ]
    await _usage(p, [v for r in rows for v in r.servers])
    return {
        "rows": rows,
        "filter": f,
        "total": total,
        "pages": max(1, -(-total // f.per_page)),
        "per_page_choices": PER_PAGE,
        "all_groups": sorted(p.access.groups),
        "native": p.authenticator.kind == "native",
        "hub_line": await hub_line(p),
        "may_remove_accounts": may_remove_accounts(p),
        "may_shutdown": allows(request, "shutdown"),
        "new_passwords": request.get(PASSWORDS, []),
        "next_url": f"{p.cfg.base_url}hub/admin" + (f"?{f.query()}" if f.query() else ""),
    }


async def hub_line(p: Parts) -> dict[str, Any]:
    used, limit = await asyncio.to_thread(hub_memory)
    return {
        "memory": used,
        "memory_limit": limit,
        "running": p.servers.count("running"),
        "pending": p.servers.count("pending"),
        "active_server_limit": int(p.cfg.get("spawner.active_server_limit")),
    }


def may_remove_accounts(p: Parts) -> bool:
    """Unix accounts are this machine's, so only a root hub with the local spawner."""
    return os.geteuid() == 0 and isinstance(p.servers.spawner, LocalSpawner)


# --- one user -----------------------------------------------------------------------------
def back(request: web.Request, form: Mapping[str, str]) -> web.HTTPFound:
    """Back to the admin page the form came from (its filter), never anywhere else."""
    base = f"{parts(request).cfg.base_url}hub/admin"
    target = form.get("next", "")
    ok = (target == base or target.startswith(base + "?")) and not any(
        c in target for c in "\\\r\n\t\x00"
    )
    return web.HTTPFound(target if ok else base)


@routes.post("/hub/admin/users/{name}/edit")
async def edit_user(request: web.Request) -> web.Response:
    """Rename a user and/or set their admin role (admin:users on them)."""
    me = require_admin(request)
    p = parts(request)
    form = await read_form(request)
    user = await users.get(p.store, request.match_info["name"])
    require(request, ACTION_SCOPES["edit"], f"user {user.name}", user=user.name)
    make_admin = form.get("admin") == "on"
    new = names.validate(form.get("new_name", "").strip() or user.name)
    if user.id == me.id and not make_admin and p.access.is_admin(user.name):
        raise BadRequest("You cannot remove your own admin rights.")
    if new != user.name or make_admin != p.access.is_admin(user.name):
        require_unfiltered(request, user.name)
    if new != user.name:
        if await p.store.get_user(new):
            raise Conflict(f"User {new} already exists.")
        if any(s.status != "stopped" for s in p.servers.of_user(user.id).values()):
            raise BadRequest(f"Stop {user.name}'s servers before renaming them.")
    if make_admin != p.access.is_admin(user.name):
        await p.access.set_admin(user.name, make_admin)
    if new != user.name:
        await p.store.rename_user(user.id, new)
        p.access.renamed(user.name, new)
    p.identities.invalidate()
    raise back(request, form)


def require_unfiltered(request: web.Request, name: str) -> None:
    """The admin role and a name are the whole hub's (a name is what [[roles]], admin_users
    and the Unix account go by): changing them needs admin:users on everyone, as PATCH
    /hub/api/users does, never a scope filtered to a group the target is in."""
    require(request, "admin:users", f"{name}'s admin role or name (on every user)")


async def delete_one(p: Parts, me: User, user: User, remove_account: bool) -> str:
    """Delete a hub user (their servers stopped first); with `remove_account` also their
    Unix account, its home archived first. What was done, for the page."""
    if user.id == me.id:
        raise BadRequest("You cannot delete yourself.")
    pw = None
    if remove_account:
        if not may_remove_accounts(p):
            raise Forbidden("Unix accounts are removed only by a hub running as root.")
        pw = await asyncio.to_thread(
            accounts.removable_account,
            user.name,
            uid_min=int(p.cfg.get("spawner.uid_min")),
            keep={me.name},
        )
    await p.servers.forget_user(user.id)  # named servers too: none left running unowned
    said = f"Deleted {user.name}"
    if pw is not None:
        archive = await accounts.remove_account(pw, p.cfg.data_dir / "archives")
        said += ", removed the Unix account" + (f", home archived to {archive}" if archive else "")
    await p.store.delete_user(user.id)
    p.access.forgotten(user.name)
    return said + "."


# --- many users ---------------------------------------------------------------------------
async def targets(request: web.Request, form: Mapping[str, str]) -> list[User]:
    """The bulk action's users: the ticked ones, or everyone the filter shows (all pages)."""
    p = parts(request)
    if form.get("target") == "filter":
        f = Filter.parse(form)
        found, _ = await p.store.search_users(users_in(p, principal(request), f, 0, MAX_BULK))
        return found
    picked = list(dict.fromkeys((await request.post()).getall("user", [])))
    if len(picked) > MAX_BULK:
        raise BadRequest(f"At most {MAX_BULK} users at a time.")
    out = []
    for name in picked:
        user = await p.store.get_user(names.normalise(str(name)))
        if user is not None:
            out.append(user)
    return out


@dataclass
class Outcome:
    done: list[str]
    refused: list[str]  # "name: why"

    def message(self, verb: str) -> tuple[str, str]:
        ok = f"{verb} {len(self.done)}: {', '.join(self.done[:50])}" if self.done else ""
        ok += " …" if len(self.done) > 50 else ""
        bad = f"Refused {len(self.refused)}: {'; '.join(self.refused[:50])}" if self.refused else ""
        return ok or f"{verb} none.", bad


@routes.post("/hub/admin/users/bulk")
async def bulk(request: web.Request) -> web.Response:
    me = require_admin(request)
    p = parts(request)
    form = await read_form(request)
    action = form.get("action", "")
    if action not in BULK_ACTIONS:
        raise BadRequest(f"Choose an action: {', '.join(BULK_ACTIONS)}.")
    chosen = await targets(request, form)
    if not chosen:
        return await admin_page(request, error="No users chosen.", status=400)
    if action == "add-to-group":
        out, verb = await _add_to_group(request, form, chosen), "Added to the group"
    elif action == "reset-passwords":
        return await _reset_passwords(request, chosen)
    else:
        out, verb = await _per_user(request, me, form, action, chosen)
    message, error = out.message(verb)
    p.identities.invalidate()
    return await admin_page(request, message, error, 200 if out.done or not out.refused else 403)


async def _per_user(
    request: web.Request, me: User, form: Mapping[str, str], action: str, chosen: list[User]
) -> tuple[Outcome, str]:
    p = parts(request)
    out = Outcome([], [])
    stops: list[asyncio.Task[None]] = []
    for user in chosen:
        try:
            if action == "start":
                _check(request, "start", user, "")
                await p.servers.spawn(user, wait=0)
            elif action == "stop":
                stops += _stop_all(request, user)
            else:
                _check(request, "delete", user, None)
                not_stronger(request, user.name, "delete:users")
                await delete_one(p, me, user, form.get("remove_account") == "on")
            out.done.append(user.name)
        except HubError as e:
            out.refused.append(f"{user.name}: {e.message}")
    if stops:
        _, still = await asyncio.wait(stops, timeout=BULK_STOP_WAIT)
        for t in still:
            _background.add(t)
            t.add_done_callback(_background.discard)
    verb = {"start": "Starting", "stop": "Stopped", "delete": "Deleted"}[action]
    return out, verb


def not_stronger(request: web.Request, name: str, bypass: str) -> None:
    """403 if the user `name` holds a scope the caller lacks (see `beyond`)."""
    if more := beyond(parts(request), principal(request), name, bypass):
        raise Forbidden(f"{name} holds {more}, which you do not: only {bypass} on everyone may.")


def _check(request: web.Request, action: str, user: User, server: str | None) -> None:
    on = {"server": server} if server is not None else {}
    require(request, ACTION_SCOPES[action], f"user {user.name}", user=user.name, **on)


def _stop_all(request: web.Request, user: User) -> list[asyncio.Task[None]]:
    """Stop every server of the user the caller may stop (all or none: checked first)."""
    p = parts(request)
    live = [n for n, s in p.servers.of_user(user.id).items() if s.status != "stopped"]
    for name in live:
        _check(request, "stop", user, name)
    return [
        asyncio.create_task(p.servers.stop(user.id, n), name=f"admin-stop-{user.name}/{n}")
        for n in live
    ]


async def _add_to_group(
    request: web.Request, form: Mapping[str, str], chosen: list[User]
) -> Outcome:
    p = parts(request)
    group = form.get("to_group", "").strip()
    if not group:
        raise BadRequest("Choose the group to add them to.")
    require(request, "groups", f"group {group[:64]!r}", group=group)
    p.access.group(group)  # 404 if there is none
    await p.access.add_members(group, [u.name for u in chosen])
    return Outcome([u.name for u in chosen], [])


async def _reset_passwords(request: web.Request, chosen: list[User]) -> web.Response:
    """New one-time passwords, shown once on the answer (and offered as CSV from it): only
    their bcrypt hashes are kept, and the users' sessions end."""
    p = parts(request)
    if not isinstance(p.authenticator, NativeAuthenticator):
        raise BadRequest("Passwords are reset only with the native authenticator.")
    if len(chosen) > MAX_PASSWORDS:
        raise BadRequest(f"At most {MAX_PASSWORDS} passwords at a time: narrow the filter.")
    out, made = Outcome([], []), []
    for user in chosen:
        if not allows(request, "admin:users", user=user.name):
            out.refused.append(f"{user.name}: needs the scope admin:users")
            continue
        if more := beyond(p, principal(request), user.name):
            out.refused.append(f"{user.name}: holds {more}, which you do not")
            continue
        password = "".join(secrets.choice(_ALPHABET) for _ in range(12))
        await users.set_password(p.store, p.authenticator, user, password)
        made.append((user.name, password))
        out.done.append(user.name)
    request[PASSWORDS] = made
    message, error = out.message("New passwords for")
    p.identities.invalidate()
    resp = await admin_page(request, message, error, 200 if made else 403)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def beyond(p: Parts, who: Principal | None, name: str, bypass: str = "admin:users") -> str:
    """A scope the user `name` holds and the caller does not ("" if none; their own, filtered
    to them, aside): a password reset hands the caller the account, and a delete takes it
    away, so a scope filtered to a group never reaches a stronger user (an admin or a
    grader in that group). `bypass` held unfiltered reaches anyone, as an admin's."""
    if who is None:
        return bypass
    if p.access.allows(who, bypass):
        return ""
    for s in sorted(p.access.held(p.access.user(name)), key=str):
        if s.kind in ("user", "server") and s.value.split("/", 1)[0] == name:
            continue
        if not p.access.grants(who, s):
            return str(s)
    return ""


@routes.post("/hub/admin/passwords.csv")
async def passwords_csv(request: web.Request) -> web.Response:
    """The result page's passwords as a CSV file: the page posts them back (never in a
    URL), this answers them as a download, nothing kept."""
    require_admin(request)
    form = await read_form(request)
    rows = list(csv.reader(io.StringIO(form.get("csv", "")[:200_000])))
    if not rows or any(len(r) != 2 for r in rows):
        raise BadRequest("Send the result page's name,password lines.")
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return web.Response(
        text=buf.getvalue(),
        content_type="text/csv",
        charset="utf-8",
        headers={
            "Content-Disposition": 'attachment; filename="passwords.csv"',
            "Cache-Control": "no-store",
        },
    )


@routes.post("/hub/admin/shutdown")
async def shutdown(request: web.Request) -> web.Response:
    """Stop the hub, as SIGTERM does (users' servers go on unless [hub] cleanup_servers)."""
    require_admin(request)
    require(request, "shutdown")
    form = await read_form(request)
    if form.get("confirm") != "shutdown":
        raise BadRequest('Type "shutdown" in the box to confirm.')
    stop = request.config_dict.get(SHUTDOWN)
    if stop is None:
        raise Conflict("This hub was not started by `minihub`, so it cannot stop itself.")
    log.warning("shutdown requested from the admin page")
    asyncio.get_running_loop().call_soon(stop.set)
    return web.Response(
        text="<!doctype html><title>minihub</title><p>The hub is shutting down.</p>",
        content_type="text/html",
    )
