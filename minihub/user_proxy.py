"""/user/<name>/[<server>/]...: who may reach which user server, and forwarding to it.

The policy in front of minihub.proxy: authenticate, authorise (access:servers on that server,
by minihub.access; same-origin websockets), pick the named or default server, then forward with the
server protocol's cookie and header rules; a failed forward tells a dead server from a slow one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlsplit

from aiohttp import web

from .access.http import principal_of
from .context import Parts, identity, parts
from .errors import Forbidden, ServiceUnavailable
from .proxy import ProxyError, Upstream, UpstreamTimeout, canonical_path
from .servers import Server
from .store import User
from .web.errors import wants_json


async def user_route(request: web.Request) -> web.StreamResponse:
    """/user/<name>/...: authenticate, authorise, then hand the request to the proxy."""
    p = parts(request)
    path = canonical_path(request)
    base = p.cfg.base_url
    rest = path[len(base + "user/") :] if path.startswith(base + "user/") else ""
    name, _, tail = rest.partition("/")
    if not name:
        raise web.HTTPNotFound()
    ident = identity(request)
    if ident is None:
        if wants_json(request) or _is_websocket(request):
            raise Forbidden("Missing or invalid credentials: log in or send a token.")
        raise web.HTTPFound(f"{base}hub/login?next={quote(request.path_qs, safe='')}")
    if ident.via == "cookie" and _is_websocket(request):
        _same_origin(request)
    who = principal_of(ident)
    user = ident.user if ident.user and ident.name == name else await p.store.get_user(name)
    server = _server_named(p, user, tail)
    if not p.access.allows(who, "access:servers", user=name, server=server):
        raise Forbidden(
            f"You may not access {name[:64]!r}'s server (needs the scope access:servers "
            f"on it{', which this token does not carry' if ident.token else ''})."
        )
    srv = p.servers.peek(user.id, server) if user else None
    upstream = srv.upstream if srv else None
    if user is None or srv is None or upstream is None:
        return _not_running(request, base, name, tail)
    prefix = p.servers.prefix(srv)
    if not path.startswith(prefix):
        raise web.HTTPFound(prefix)

    def still_allowed() -> bool:
        return p.access.allows(who, "access:servers", user=name, server=server)

    async def signed_in() -> bool:
        return await p.identities.still_good(ident, request)

    return await _forward(request, p, srv, upstream, path, prefix, still_allowed, signed_in)


def _is_websocket(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def _server_named(p: Parts, user: User | None, tail: str) -> str:
    """/user/<name>/<server>/... is a named server's when <server> is one of the user's
    (named servers cannot take the default server's page names); else the default's."""
    first = tail.split("/", 1)[0]
    if user is None or not first or p.servers.peek(user.id, first) is None:
        return ""
    return first


def _same_origin(request: web.Request) -> None:
    """A cookie-authenticated websocket must come from a page of this hub (no CSWSH)."""
    origin = request.headers.get("Origin")
    if origin and urlsplit(origin).netloc != request.host:
        raise Forbidden("Cross-origin websocket refused.")


def _not_running(request: web.Request, base: str, name: str, tail: str) -> web.StreamResponse:
    if wants_json(request) or _is_websocket(request):
        raise ServiceUnavailable(f"{name}'s server is not running.")
    qs = f"?{request.query_string}" if request.query_string else ""
    raise web.HTTPFound(f"{base}hub/user/{name}/{quote(tail)}{qs}")


async def _forward(
    request: web.Request,
    p: Parts,
    srv: Server,
    upstream: Upstream,
    path: str,
    prefix: str,
    allowed: Callable[[], bool],
    signed_in: Callable[[], Awaitable[bool]],
) -> web.StreamResponse:
    start = time.perf_counter()
    p.metrics.proxied.inc()
    ws = _is_websocket(request)
    if ws:
        p.metrics.websockets += 1
    # jupyterhub-singleuser authenticates every request itself, by its own OAuth cookie
    # (browsers) or a hub token in Authorization (API clients, and JupyterLab's own calls).
    # So for it the hub's `_xsrf` cookie passes (it ignores cookies it did not sign) and
    # Authorization is forwarded, but only a token of the server's owner: an admin's token
    # never reaches a user's server. minihub's own server gets neither.
    protocol = p.servers.protocol
    ident = identity(request)
    own_token = (
        ident is not None
        and ident.via == "token"
        and ident.user is not None
        and ident.user.id == srv.user_id
    )
    try:
        return await p.proxy.forward(
            request,
            upstream,
            path=path,
            strip_cookies=protocol.strip_cookies,
            on_activity=lambda: p.servers.touch(srv.user_id, srv.name),
            keep_authorization=protocol.forwards_owner_token and own_token,
            cookie_path=prefix,
            allowed=allowed,
            signed_in=signed_in,
        )
    except ProxyError as e:
        if await _server_died(p, srv, dying=not isinstance(e, UpstreamTimeout)):
            raise ServiceUnavailable("The server stopped: reload to see why and restart it.")
        raise
    finally:
        if ws:
            p.metrics.websockets -= 1
        p.metrics.proxy_latency.observe(time.perf_counter() - start)


async def _server_died(p: Parts, srv: Server, dying: bool) -> bool:
    """After a failed forward: is the server gone? A refused or dropped connection from a
    live pid is usually a process in the middle of dying (its sockets close before its exit
    is reaped and reported), so look again for a moment before blaming anything else."""
    for _ in range(40 if dying else 1):
        if srv.status != "running" or not await p.servers.check(srv):
            return True
        await asyncio.sleep(0.05)
    return False
