"""The hub's server-rendered pages: login, logout, home, admin, tokens, spawn progress.

Every form works without JavaScript; every state-changing form carries the XSRF token,
checked by the identity middleware before any handler runs.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import web

from .. import procfs, users
from ..access.http import principal, require
from ..auth import names
from ..auth.base import TRUSTED_ATTEMPT, AuthResult
from ..auth.identity import SESSION_COOKIE, XSRF_COOKIE
from ..auth.throttle import Attempt, address_group, client_address, in_networks
from ..context import Parts, identity, parts
from ..errors import BadRequest, Forbidden, HubError, NotFound
from ..servers import Server, Servers, check_server_name
from ..services import registry
from ..store import User
from . import sharing
from .render import render

log = logging.getLogger("minihub.web")
routes = web.RouteTableDef()


def base(request: web.Request) -> str:
    return parts(request).cfg.base_url


def redirect(location: str) -> web.HTTPFound:
    return web.HTTPFound(location)


def current(request: web.Request) -> User:
    ident = identity(request)
    if ident is None:
        raise redirect(f"{base(request)}hub/login?next={quote(request.path_qs, safe='')}")
    if ident.user is None:
        raise Forbidden("A service's token opens no page: log in as a user.")
    return ident.user


def safe_next(request: web.Request, target: str | None) -> str:
    """A same-origin path under base_url, whatever `target` tries."""
    default = f"{base(request)}hub/"
    if not target or any(c in target for c in "\\\r\n\t\x00") or ord(min(target)) < 0x20:
        return default
    parts_ = urlsplit(target)
    if parts_.scheme or parts_.netloc or not target.startswith("/") or target.startswith("//"):
        return default
    if not target.startswith(base(request)):
        return default
    return target


def check_origin(request: web.Request) -> None:
    """Forms posted before there is a session (login, sign-up) must come from this origin."""
    origin = request.headers.get("Origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.host:
        raise Forbidden("Cross-origin form submission refused.")
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        raise Forbidden("Cross-site form submission refused.")


# --- login / logout ---------------------------------------------------------------------
@routes.get("/hub/login")
async def login_page(request: web.Request) -> web.Response:
    if identity(request):
        raise redirect(safe_next(request, request.query.get("next")))
    return login_form(request, "")


def login_form(
    request: web.Request, error: str, status: int = 200, username: str = ""
) -> web.Response:
    p = parts(request)
    return render(
        request,
        "login.html",
        {
            "error": error,
            "username": username,
            "next": request.query.get("next", ""),
            "signup": getattr(p.authenticator, "can_signup", False),
            "login_service": getattr(p.authenticator, "login_service", ""),
            "kind": p.authenticator.kind,
            # e.g. a workshop login's closing time (minihub.auth.shared)
            "login_notice": getattr(p.authenticator, "login_notice", lambda: "")(),
        },
        status=status,
    )


@routes.post("/hub/login")
async def login_post(request: web.Request) -> web.StreamResponse:
    check_origin(request)
    p = parts(request)
    form = await request.post()
    raw = str(form.get("username", ""))[:256]
    password = str(form.get("password", ""))
    try:
        async with p.throttle.attempt(names.normalise(raw), login_address(request)) as attempt:
            result = await _authenticate(p, attempt, password)
    except HubError as e:  # the throttle or the check pool turned it away, before any check
        p.metrics.login_failures.inc()
        resp = login_form(request, e.message, e.status, raw)
        resp.headers.update(e.headers)
        return resp
    if result is None:
        return login_form(request, "Invalid username or password.", 403, raw)
    p.metrics.logins.inc()
    user = await users.login(p.store, p.access, result.name, result.admin, result.groups)
    resp = redirect(await after_login(request, p, user))
    await start_session(request, p, user, resp)
    log.info("login of %s", user.name)
    raise resp


def login_address(request: web.Request) -> str:
    """Who is logging in, for the throttle: X-Forwarded-For only from a trusted proxy.

    A trusted proxy on loopback (nginx on this machine) shares its address with every
    user's kernels and terminals here, which could forge the header (a fresh address per
    guess, or a victim's address to lock it out). So a loopback peer counts as that proxy
    only if its socket belongs to root or a system account (below [spawner] uid_min); a
    user's own process counts as "uid N", its header ignored.
    """
    p = parts(request)
    trusted = p.throttle.trusted_proxies
    peer = request.remote
    if peer and address_group(peer) == "loopback" and in_networks(peer, trusted):
        uid = _loopback_peer_uid(request)
        if uid is None:
            return peer
        if uid != 0 and uid >= int(p.cfg.get("spawner.uid_min")):
            return f"uid {uid}"
    return client_address(peer, request.headers.getall("X-Forwarded-For", []), trusted)


def _loopback_peer_uid(request: web.Request) -> int | None:
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport else None
    sock = transport.get_extra_info("sockname") if transport else None
    if not (isinstance(peer, tuple) and isinstance(sock, tuple)):
        return None
    return procfs.tcp_socket_uid((peer[0], peer[1]), (sock[0], sock[1]))


async def _authenticate(p: Parts, attempt: Attempt, password: str) -> AuthResult | None:
    """The authenticator's verdict. Every failure is answered when the same delay has passed
    since the attempt began, whether the name exists or not (no timing tells them apart)."""
    loop = asyncio.get_running_loop()
    answer_at = loop.time() + p.throttle.failure_delay
    token = TRUSTED_ATTEMPT.set(attempt.trusted)
    try:
        result = None
        if names.is_valid(attempt.name):
            result = await p.authenticator.authenticate(attempt.name, password)
    finally:
        TRUSTED_ATTEMPT.reset(token)
    if result is not None:
        p.throttle.success(attempt)
        return result
    p.metrics.login_failures.inc()
    p.throttle.failure(attempt)
    log.info(
        "failed login for %s from %s",
        attempt.name[:64].encode("unicode_escape").decode(),
        attempt.address,
    )
    await asyncio.sleep(max(0.0, answer_at - loop.time()))
    return None


async def after_login(
    request: web.Request, p: Parts, user: User, next_url: str | None = None
) -> str:
    nxt = safe_next(request, next_url or request.query.get("next") or None)
    own = f"{p.cfg.base_url}user/{user.name}/"
    if nxt in (f"{p.cfg.base_url}hub/", own) or nxt.startswith(own):
        if nxt == f"{p.cfg.base_url}hub/":
            nxt = own
        if p.servers.spawner.options_form(user.name):  # the user chooses first
            return f"{spawn_url(p, user, '')}?next={quote(nxt, safe='')}"
        try:
            await p.servers.spawn(user, wait=0)
        except HubError:
            return f"{p.cfg.base_url}hub/home"
        return f"{p.cfg.base_url}hub/spawn-pending/{user.name}?next={quote(nxt, safe='')}"
    return nxt


def over_https(request: web.Request, p: Parts) -> bool:
    """Did the browser come over HTTPS: the hub's own TLS, or a trusted proxy's (nginx
    terminating TLS says so in X-Forwarded-Proto)? Cookies are marked Secure then."""
    if p.cfg.tls or request.secure:
        return True
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[-1].strip().lower()
    peer = request.remote
    return proto == "https" and peer is not None and in_networks(peer, p.throttle.trusted_proxies)


async def start_session(
    request: web.Request, p: Parts, user: User, resp: web.StreamResponse
) -> None:
    max_age = float(p.cfg.get("hub.session_max_age_days")) * 86400
    sid = await users.new_session(p.store, user, max_age)
    from ..auth import secrets as S

    secure = over_https(request, p)
    resp.set_cookie(
        SESSION_COOKIE,
        sid,
        path=p.cfg.base_url,
        httponly=True,
        samesite="Lax",
        secure=secure,
        max_age=int(max_age),
    )
    resp.set_cookie(
        XSRF_COOKIE,
        S.xsrf_token(p.key, S.hash_token(sid)),
        path=p.cfg.base_url,
        samesite="Lax",
        secure=secure,
        max_age=int(max_age),
    )


@routes.get("/hub/logout")
async def logout_page(request: web.Request) -> web.Response:
    if identity(request) is None:
        raise redirect(f"{base(request)}hub/login")
    return render(request, "logout.html")


@routes.post("/hub/logout")
async def logout(request: web.Request) -> web.Response:
    p = parts(request)
    ident = identity(request)
    if ident and ident.session_hash:
        await p.store.delete_session(ident.session_hash)
        p.identities.invalidate()
    resp = redirect(f"{p.cfg.base_url}hub/login")
    end_session = getattr(p.authenticator, "end_session_url", None)
    if end_session is not None:  # OAuth: optionally end the provider's session too
        resp = redirect(await end_session(_public_login_url(request, p)) or str(resp.location))
    resp.del_cookie(SESSION_COOKIE, path=p.cfg.base_url)
    resp.del_cookie(XSRF_COOKIE, path=p.cfg.base_url)
    raise resp


def _public_login_url(request: web.Request, p: Parts) -> str:
    public = urlsplit(str(p.cfg.get("hub.public_url")))
    origin = (
        f"{public.scheme}://{public.netloc}"
        if public.netloc
        else f"{request.scheme}://{request.host}"
    )
    return f"{origin}{p.cfg.base_url}hub/login"


@routes.get("/hub/signup")
async def signup_page(request: web.Request) -> web.Response:
    if not getattr(parts(request).authenticator, "can_signup", False):
        raise web.HTTPNotFound(reason="Sign-up is not open on this hub.")
    return signup_form(request)


def signup_form(
    request: web.Request, error: str = "", status: int = 200, pending: bool = False
) -> web.Response:
    auth = parts(request).authenticator
    ctx = {
        "error": error,
        "pending": pending,  # the request was made and awaits an admin
        "approval": getattr(auth, "signup_approval", False),
        "ask_email": getattr(auth, "signup_approval", False)
        and getattr(auth, "signup_ask_email", False),
    }
    return render(request, "signup.html", ctx, status=status)


@routes.post("/hub/signup")
async def signup(request: web.Request) -> web.Response:
    check_origin(request)
    p = parts(request)
    if not getattr(p.authenticator, "can_signup", False):
        raise web.HTTPNotFound(reason="Sign-up is not open on this hub.")
    form = await request.post()
    name, pw = str(form.get("username", ""))[:256], str(form.get("password", ""))
    if pw != str(form.get("password2", "")):
        return signup_form(request, "The passwords differ.", 400)
    email = str(form.get("email", ""))[:256]
    try:  # sign-up hashes a password and may run useradd: throttled like a login
        async with p.throttle.attempt(names.normalise(name), login_address(request)):
            user = await users.sign_up(p.store, p.authenticator, name, pw, email)
    except HubError as e:
        resp = signup_form(request, e.message, e.status)
        resp.headers.update(e.headers)
        return resp
    if user is None:  # [auth] signup_approval: a request, not yet a user
        return signup_form(request, pending=True)
    raise redirect(f"{p.cfg.base_url}hub/login")


# --- home and servers ---------------------------------------------------------------------
# What a page calls each status: "pending" is an API word (JupyterHub's), not a person's.
STATUS_WORDS = {
    "running": "running",
    "pending": "starting",
    "stopping": "stopping",
    "stopped": "stopped",
}


@routes.get("/hub/")
async def hub_root(request: web.Request) -> web.Response:
    user = current(request)
    raise redirect(f"{base(request)}user/{user.name}/")


@routes.get("/hub/home")
async def home(request: web.Request) -> web.Response:
    return home_page(request, current(request))


def home_page(
    request: web.Request, user: User, error: str = "", status: int = 200, new_name: str = ""
) -> web.Response:
    """The user's servers: the default one, and the named ones when the hub allows them."""
    p = parts(request)
    allowed = bool(p.cfg.get("hub.allow_named_servers"))
    named = named_servers(p.servers, user.id) if allowed else []
    limit = int(p.cfg.get("hub.named_server_limit_per_user"))
    return render(
        request,
        "home.html",
        {
            "srv": p.servers.peek(user.id),
            "named": named,
            "allow_named": allowed,
            "limit": limit,
            "at_limit": bool(limit) and len(named) >= limit,
            "error": error,
            "new_name": new_name,
            "words": STATUS_WORDS,
            "default_url": p.servers.protocol.landing_path(),
            "sharing": sharing.home_context(request, user),
            "services": registry(request).displayed(p.access, principal(request)),
        },
        status=status,
    )


def named_servers(servers: Servers, user_id: int) -> list[tuple[str, Server]]:
    """The user's named servers, by name."""
    return sorted(
        ((n, s) for n, s in servers.of_user(user_id).items() if n), key=lambda row: row[0]
    )


@routes.post("/hub/home/start")
async def home_start(request: web.Request) -> web.Response:
    user = current(request)
    p = parts(request)
    if p.servers.spawner.options_form(user.name):
        raise redirect(spawn_url(p, user, ""))
    await p.servers.spawn(user, wait=0)
    raise redirect(f"{p.cfg.base_url}hub/spawn-pending/{user.name}")


@routes.post("/hub/home/stop")
async def home_stop(request: web.Request) -> web.Response:
    user = current(request)
    p = parts(request)
    await p.servers.stop(user.id)
    raise redirect(f"{p.cfg.base_url}hub/home")


@routes.post("/hub/home/servers")
async def home_create(request: web.Request) -> web.Response:
    """The home page's form: create (and start) a named server of one's own."""
    user = current(request)
    p = parts(request)
    name = str((await request.post()).get("server_name", "")).strip()[:64]
    if not p.cfg.get("hub.allow_named_servers"):  # no form to show the reason in
        raise BadRequest("Named servers are not enabled on this hub.")
    try:
        check_server_name(name)
        if p.servers.peek(user.id, name) is not None:
            raise BadRequest(f"You already have a server named {name!r}: start it from the list.")
        if p.servers.spawner.options_form(user.name):
            p.servers.check_name(user, name)
            raise redirect(spawn_url(p, user, name))
        await start(p, user, name)
    except HubError as e:  # shown in the form, with what was typed
        resp = home_page(request, user, e.message, e.status, name)
        resp.headers.update(e.headers)
        return resp
    raise redirect(f"{p.cfg.base_url}hub/spawn-pending/{user.name}/{name}")


async def start(
    p: Parts, user: User, server_name: str, options: dict[str, Any] | None = None
) -> None:
    """Ask for the server to start; its progress page follows it from here."""
    srv = p.servers.peek(user.id, server_name)
    if srv is not None and srv.status == "stopping":  # spawn would leave it stopping
        raise BadRequest("That server is still stopping: try again in a moment.", 409)
    await p.servers.spawn(user, server_name, wait=0, user_options=options)


def describe(viewer: User, target: User, server_name: str) -> str:
    """'your server', "alice's server 'work'": how a page names the server it is about."""
    whose = "your" if viewer.id == target.id else f"{target.name}'s"
    return f"{whose} server “{server_name}”" if server_name else f"{whose} server"


@routes.get("/hub/spawn-pending/{name}")
async def spawn_pending(request: web.Request) -> web.Response:
    user = await may_act_on(request, "read:servers")
    return pending_page(request, user, "", parts(request).servers.peek(user.id))


@routes.get("/hub/spawn-pending/{name}/{server_name}")
async def spawn_pending_named(request: web.Request) -> web.Response:
    user = await may_act_on(request, "read:servers")
    return pending_page(
        request,
        user,
        request.match_info["server_name"],
        named_server(request, user, must_exist=True),
    )


def pending_page(
    request: web.Request, user: User, server_name: str, srv: Server | None
) -> web.Response:
    """Progress while it starts; on to the server when it runs; why, when it failed."""
    p = parts(request)
    own = f"{p.cfg.base_url}user/{user.name}/" + (f"{server_name}/" if server_name else "")
    nxt = safe_next(request, request.query.get("next")) if request.query.get("next") else own
    if srv is not None and srv.status == "running":
        raise redirect(nxt)
    if srv is None or srv.status == "stopping" or (srv.status == "stopped" and not srv.error):
        raise redirect(
            f"{p.cfg.base_url}hub/user/{user.name}/" + (f"{server_name}/" if server_name else "")
        )
    api = f"{p.cfg.base_url}hub/api/users/{user.name}/" + (
        f"servers/{server_name}/progress" if server_name else "server/progress"
    )
    return render(
        request,
        "spawn_pending.html",
        {
            "srv": srv,
            "target": user,
            "next": nxt,
            "progress_url": api,
            "spawn_url": spawn_url(p, user, server_name),
            "what": describe(current(request), user, server_name),
        },
        status=200 if srv.status == "pending" else srv.error_status,
    )


@routes.get("/hub/user/{name}/{tail:.*}")
@routes.get("/hub/user/{name}")
async def not_running(request: web.Request) -> web.Response:
    """Where the proxy sends a browser whose server is not running: a named server's when
    the path's first segment names one of the user's, else the default server's."""
    user = await may_act_on(request)
    p = parts(request)
    tail = request.match_info.get("tail", "")
    first = tail.split("/", 1)[0]
    server_name = first if first and p.servers.peek(user.id, first) is not None else ""
    target = f"{p.cfg.base_url}user/{user.name}/{tail}"
    srv = p.servers.peek(user.id, server_name)
    if srv is not None and srv.status == "running":
        raise redirect(target + (f"?{request.query_string}" if request.query_string else ""))
    if srv is not None and srv.status == "pending":
        pending = pending_url(p, user, server_name)
        raise redirect(f"{pending}?next={quote(target)}")
    return render(
        request,
        "not_running.html",
        {
            "srv": srv,
            "target": user,
            "next": target,
            "spawn_url": spawn_url(p, user, server_name),
            "what": describe(current(request), user, server_name),
        },
        status=503,
    )


def spawn_url(p: Parts, user: User, server_name: str) -> str:
    return f"{p.cfg.base_url}hub/spawn/{user.name}" + (f"/{server_name}" if server_name else "")


def pending_url(p: Parts, user: User, server_name: str) -> str:
    return f"{p.cfg.base_url}hub/spawn-pending/{user.name}" + (
        f"/{server_name}" if server_name else ""
    )


@routes.get("/hub/spawn/{name}")
@routes.get("/hub/spawn/{name}/{server_name}")
async def spawn_form(request: web.Request) -> web.Response:
    """The spawner's options form (profiles), as JupyterHub's spawn page; without one, the
    user's own server starts at once, as there. A GET carries no XSRF token (a link from
    another site is one), so creating a named server, or starting another user's, is only
    offered here: the Start button posts it."""
    user = await may_act_on(request, "start:servers")
    p = parts(request)
    server_name = request.match_info.get("server_name", "")
    srv = p.servers.peek(user.id, server_name)
    if server_name and srv is None:
        p.servers.check_name(user, server_name)
    own = f"{p.cfg.base_url}user/{user.name}/" + (f"{server_name}/" if server_name else "")
    nxt = safe_next(request, request.query.get("next")) if request.query.get("next") else own
    form = p.servers.spawner.options_form(user.name)
    at_once = current(request).id == user.id and (srv is not None or not server_name)
    if (not form and at_once) or (srv is not None and srv.status in ("pending", "running")):
        if srv is None or srv.status != "running":
            await start(p, user, server_name)
        pending = pending_url(p, user, server_name)
        raise redirect(f"{pending}?next={quote(nxt, safe='')}")
    return render(
        request,
        "spawn.html",
        {
            "form": form,
            "next": nxt,
            "spawn_url": spawn_url(p, user, server_name),
            "what": describe(current(request), user, server_name),
        },
    )


@routes.post("/hub/spawn/{name}")
@routes.post("/hub/spawn/{name}/{server_name}")
async def spawn_post(request: web.Request) -> web.Response:
    """Start a server (a named one is created if new, as in JupyterHub) with the form's
    choices as its user_options; on to its progress."""
    user = await may_act_on(request, "start:servers")
    p = parts(request)
    server_name = request.match_info.get("server_name", "")
    form = await request.post()
    own = f"{p.cfg.base_url}user/{user.name}/" + (f"{server_name}/" if server_name else "")
    nxt = safe_next(request, str(form.get("next", ""))) if form.get("next") else own
    fields = {k: str(v) for k, v in form.items() if k not in ("_xsrf", "next")}
    options = p.servers.spawner.options_from_form(fields) if fields else {}
    await start(p, user, server_name, options)
    pending = pending_url(p, user, server_name)
    raise redirect(f"{pending}?next={quote(nxt, safe='')}")


@routes.post("/hub/stop/{name}/{server_name}")
async def stop_named(request: web.Request) -> web.Response:
    user = await may_act_on(request, "delete:servers")
    p = parts(request)
    named_server(request, user, must_exist=True)
    await p.servers.stop(user.id, request.match_info["server_name"])
    raise redirect(await back(request))


@routes.post("/hub/delete/{name}/{server_name}")
async def delete_named(request: web.Request) -> web.Response:
    """Stop a named server and forget it (its row, its name); files in the home stay."""
    user = await may_act_on(request, "delete:servers")
    p = parts(request)
    named_server(request, user, must_exist=True)
    await p.access.unshare_server(user.name, request.match_info["server_name"])
    await p.servers.remove(user.id, request.match_info["server_name"])
    raise redirect(await back(request))


def named_server(request: web.Request, user: User, must_exist: bool = False) -> Server | None:
    name = request.match_info["server_name"]
    srv = parts(request).servers.peek(user.id, name) if name else None
    if srv is None and must_exist:
        raise NotFound(f"{user.name} has no server named {name[:40]!r}.")
    return srv


async def back(request: web.Request) -> str:
    """Where a server form returns to: its `next` (the admin page) or home."""
    nxt = str((await request.post()).get("next", ""))
    return safe_next(request, nxt) if nxt else f"{base(request)}hub/home"


async def may_act_on(request: web.Request, scope: str = "servers") -> User:
    """The {name} user of a server form, if the caller holds `scope` on that server."""
    current(request)
    name = names.normalise(request.match_info["name"])
    server = request.match_info.get("server_name", "")
    require(request, scope, f"{name[:64]}'s server", user=name, server=server)
    return await users.get(parts(request).store, name)


# --- tokens ---------------------------------------------------------------------------------
@routes.get("/hub/token")
async def token_page(request: web.Request) -> web.Response:
    return await _token_page(request, current(request))


async def _token_page(
    request: web.Request, user: User, new: str = "", error: str = ""
) -> web.Response:
    toks = await parts(request).store.list_tokens(user.id)
    return render(request, "token.html", {"tokens": toks, "new_token": new, "error": error})


@routes.post("/hub/token")
async def token_create(request: web.Request) -> web.Response:
    user = current(request)
    form = await request.post()
    note = str(form.get("note", ""))[:500] or "Requested via token page"
    days = str(form.get("expires_days", "")).strip()
    if days and not (days.isascii() and days.isdigit() and len(days) <= 5):
        return await _token_page(request, user, error="Expiry must be a number of days.")
    expires = int(days) * 86400 if days and int(days) > 0 else None
    secret, _ = await users.new_token(parts(request).store, user, note, [], expires)
    resp = await _token_page(request, user, new=secret)
    resp.headers["Cache-Control"] = "no-store"
    return resp


@routes.post("/hub/token/{token_id}/revoke")
async def token_revoke(request: web.Request) -> web.Response:
    user = current(request)
    p = parts(request)
    tid = request.match_info["token_id"]
    if not (tid.isascii() and tid.isdigit() and len(tid) <= 18) or not await p.store.delete_token(
        user.id, int(tid)
    ):
        raise BadRequest("No such token.", 404)
    p.identities.invalidate()
    raise redirect(f"{p.cfg.base_url}hub/token")


# --- password -------------------------------------------------------------------------------
@routes.get("/hub/change-password")
async def password_page(request: web.Request) -> web.Response:
    current(request)
    return render(request, "password.html", {"error": "", "done": False})


@routes.post("/hub/change-password")
async def password_change(request: web.Request) -> web.Response:
    user = current(request)
    p = parts(request)
    form = await request.post()
    old, new = str(form.get("old", "")), str(form.get("new", ""))
    ctx: dict[str, Any] = {"error": "", "done": False}
    if new != str(form.get("new2", "")):
        ctx["error"] = "The new passwords differ."
    elif not await p.authenticator.check_password(user.name, old):
        ctx["error"] = "Your current password is wrong."
    else:
        try:
            await users.set_password(p.store, p.authenticator, user, new)
            resp = redirect(f"{p.cfg.base_url}hub/login")
            p.identities.invalidate()
            raise resp
        except HubError as e:
            ctx["error"] = e.message
    return render(request, "password.html", ctx, status=400)


def setup(app: web.Application, base_url: str) -> None:
    prefix = base_url.rstrip("/")
    for r in routes:
        assert isinstance(r, web.RouteDef)
        app.router.add_route(r.method, prefix + r.path, r.handler)
