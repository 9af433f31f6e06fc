"""Wires the hub's parts into one aiohttp application: middlewares, routes, lifetimes.

Behaviour lives in the parts (auth/, servers, proxy, api, web/); this module only connects them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote, urlsplit

from aiohttp import web

from . import api, body, oauth2, protocols, scopes, services
from .auth.base import Authenticator
from .auth.identity import SAFE_METHODS, Identities, Identity
from .auth.native import NativeAuthenticator
from .auth.pam import PAMAuthenticator
from .auth.secrets import load_or_create_key
from .auth.throttle import Throttle
from .config import Config
from .context import BASE_URL, IDENTITY, PAGE_CONTEXT, PARTS, Parts, identity, parts
from .culler import Culler
from .errors import Forbidden, ServiceUnavailable
from .metrics import Metrics
from .proxy import Proxy, ProxyError, Upstream, UpstreamTimeout, normalise_path
from .servers import Server, Servers
from .spawner.forkserver import ForkSpawner
from .spawner.local import LocalSpawner
from .store import Store, User
from .web import admin, pages
from .web.errors import (
    Handler,
    errors_middleware,
    log_middleware,
    quiet_client_protocol_errors,
    wants_json,
)
from .web.render import add_filters

log = logging.getLogger("minihub")
STATIC = Path(__file__).parent / "web" / "static"
NO_XSRF_PATHS = ("hub/login", "hub/signup")


def make_authenticator(cfg: Config, store: Store) -> Authenticator:
    if cfg.get("auth.authenticator") == "native":
        return NativeAuthenticator(cfg, store)
    if cfg.get("auth.authenticator") == "oauth":
        from .auth.oauth import OAuthenticator  # authlib and cryptography only when used

        return OAuthenticator(cfg, store)
    return PAMAuthenticator(cfg)


def parts_ctx(cfg: Config) -> object:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        data = cfg.data_dir
        data.mkdir(mode=0o711, parents=True, exist_ok=True)
        store = await Store.open(data / "minihub.sqlite")
        key = load_or_create_key(Path(cfg.get("hub.cookie_secret_file")))
        metrics = Metrics()
        spawner = ForkSpawner(cfg) if cfg.get("spawner.fork_server") else LocalSpawner(cfg)
        servers = Servers(cfg, store, key, spawner, protocols.choose(cfg, store),
                          on_spawned=metrics.spawn_duration.observe)
        proxy = Proxy(server_ca_file=str(cfg.get("hub.server_ca_file")))
        p = Parts(cfg, store, key, Identities(store, key), make_authenticator(cfg, store),
                  Throttle(cfg), servers, proxy, metrics)
        _gauges(p)
        app[PARTS] = p
        await servers.open()
        culler = Culler(cfg, servers, store, metrics)
        culler.start()
        try:
            yield
        finally:
            await culler.stop()
            await servers.close(stop_all=bool(cfg.get("hub.cleanup_servers")))
            await proxy.close()
            await store.close()

    return ctx


def _gauges(p: Parts) -> None:
    m = p.metrics
    m.gauge("minihub_users", "Users known to the hub.", lambda: m.users)
    m.gauge("minihub_active_servers", "Running user servers.",
            lambda: p.servers.count("running"))
    m.gauge("minihub_pending_servers", "User servers starting.",
            lambda: p.servers.count("pending"))
    m.gauge("minihub_websocket_connections", "Open proxied websockets.",
            lambda: m.websockets)


@web.middleware
async def security_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    resp = await handler(request)
    if request.path.startswith(request.config_dict[BASE_URL] + "user/"):
        return resp  # the user server's own headers (CSP included) pass through
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("Content-Security-Policy", "frame-ancestors 'self'")
    resp.headers.setdefault("Referrer-Policy", "same-origin")
    if parts(request).cfg.tls:
        resp.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return resp


@web.middleware
async def form_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Hub forms are parsed here, once, so a broken one is a 400 wherever it is read (the
    XSRF check, pages, the OAuth token endpoint). Proxied bodies stream on untouched."""
    if (request.method not in SAFE_METHODS and request.content_type in body.FORM_TYPES
            and not request.path.startswith(request.config_dict[BASE_URL] + "user/")):
        await body.read_form(request)
    return await handler(request)


@web.middleware
async def identity_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    p = parts(request)
    base = p.cfg.base_url
    if request.path.startswith(base + "hub/static/") or request.path == base + "hub/health":
        return await handler(request)
    ident = await p.identities.resolve(request)
    request[IDENTITY] = ident
    request[PAGE_CONTEXT] = {"user": ident.user if ident else None,
                             "xsrf": p.identities.xsrf_for(ident),
                             "kind": p.authenticator.kind}
    proxied = request.path.startswith(base + "user/")
    if not request.path.startswith(tuple(base + x for x in NO_XSRF_PATHS + _own_xsrf(p))):
        await p.identities.check_xsrf(request, ident, form=not proxied)
    if (ident is not None and ident.via != "cookie" and request.method not in SAFE_METHODS
            and not proxied and not request.path.startswith(base + "hub/api")):
        # Pages are for browsers: a token (perhaps a narrowly scoped one) must not reach
        # the admin and token forms, which check no scopes; the REST API does.
        raise Forbidden("Use the REST API under /hub/api with a token; pages need a login.")
    return await handler(request)


def _own_xsrf(p: Parts) -> tuple[str, ...]:
    """Paths that guard themselves: the OAuth token endpoint authenticates its client by
    secret; jupyterhub-singleuser checks its own `_xsrf` token (JupyterLab cannot know the
    hub's), and the hub's session cookie is SameSite=Lax."""
    return ("hub/api/oauth2/token",) + (("user/",) if p.servers.protocol.checks_own_xsrf else ())


def _token_may_access(p: Parts, ident: Identity, name: str, server: str) -> bool:
    """A token with explicit scopes reaches a server only with access:servers for it."""
    if ident.token is None:
        return True
    held = scopes.held_by(ident.user.name, ident.user.admin, ident.token.scopes,
                          bool(p.cfg.get("hub.admin_access")))
    return scopes.allows(held, "access:servers", name, server)


async def user_route(request: web.Request) -> web.StreamResponse:
    """/user/<name>/...: authenticate, authorise, then hand the request to the proxy."""
    p = parts(request)
    path = normalise_path(request.raw_path.split("?", 1)[0])
    base = p.cfg.base_url
    rest = path[len(base + "user/"):] if path.startswith(base + "user/") else ""
    name, _, tail = rest.partition("/")
    if not name:
        raise web.HTTPNotFound()
    ident = identity(request)
    if ident is None:
        if wants_json(request) or request.headers.get("Upgrade", "").lower() == "websocket":
            raise Forbidden("Missing or invalid credentials: log in or send a token.")
        raise web.HTTPFound(f"{base}hub/login?next={quote(request.path_qs, safe='')}")
    if ident.via == "cookie" and request.headers.get("Upgrade", "").lower() == "websocket":
        _same_origin(request)
    if ident.name != name and not (ident.user.admin and p.cfg.get("hub.admin_access")):
        raise Forbidden(f"You may not access {name[:64]!r}'s server.")
    user = ident.user if ident.name == name else await p.store.get_user(name)
    server = _server_named(p, user, tail)
    if not _token_may_access(p, ident, name, server):
        raise Forbidden(f"This token's scopes do not include access to {name[:64]!r}'s server.")
    srv = p.servers.peek(user.id, server) if user else None
    upstream = srv.upstream if srv else None
    if user is None or srv is None or upstream is None:
        return _not_running(request, base, name, tail)
    prefix = p.servers.prefix(srv)
    if not path.startswith(prefix):
        raise web.HTTPFound(prefix)
    return await _forward(request, p, srv, upstream, path, prefix)


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
    if wants_json(request) or request.headers.get("Upgrade", "").lower() == "websocket":
        raise ServiceUnavailable(f"{name}'s server is not running.")
    qs = f"?{request.query_string}" if request.query_string else ""
    raise web.HTTPFound(f"{base}hub/user/{name}/{quote(tail)}{qs}")


async def _forward(request: web.Request, p: Parts, srv: Server, upstream: Upstream,
                   path: str, prefix: str) -> web.StreamResponse:
    start = time.perf_counter()
    p.metrics.proxied.inc()
    ws = request.headers.get("Upgrade", "").lower() == "websocket"
    if ws:
        p.metrics.websockets += 1
    # jupyterhub-singleuser authenticates every request itself, by its own OAuth cookie
    # (browsers) or a hub token in Authorization (API clients, and JupyterLab's own calls).
    # So for it the hub's `_xsrf` cookie passes (it ignores cookies it did not sign) and
    # Authorization is forwarded, but only a token of the server's owner: an admin's token
    # never reaches a user's server. minihub's own server gets neither.
    protocol = p.servers.protocol
    ident = identity(request)
    own_token = ident is not None and ident.via == "token" and ident.user.id == srv.user_id
    try:
        return await p.proxy.forward(request, upstream, path=path,
                                     strip_cookies=protocol.strip_cookies,
                                     on_activity=lambda: p.servers.touch(srv.user_id, srv.name),
                                     keep_authorization=protocol.forwards_owner_token
                                     and own_token, cookie_path=prefix)
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


async def _close_websockets(app: web.Application) -> None:
    await app[PARTS].proxy.close_websockets()


async def root(request: web.Request) -> web.StreamResponse:
    base = parts(request).cfg.base_url
    raise web.HTTPFound(f"{base}hub/" if identity(request) else f"{base}hub/login")


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    ident = identity(request)
    if ident is None or not ident.user.admin:
        raise Forbidden("Metrics need an admin's token: Authorization: token <token>.")
    p = parts(request)
    p.metrics.users = await p.store.count_users()
    return web.Response(text=parts(request).metrics.render(),
                        content_type="text/plain", charset="utf-8",
                        headers={"Cache-Control": "no-store"})


def make_app(cfg: Config) -> web.Application:
    add_filters()
    quiet_client_protocol_errors()
    app = web.Application(middlewares=[log_middleware, errors_middleware, security_middleware,
                                       form_middleware, identity_middleware],
                          client_max_size=4 * 1024 * 1024)
    base = cfg.base_url
    app[BASE_URL] = base
    app.cleanup_ctx.append(parts_ctx(cfg))  # type: ignore[arg-type]
    app.cleanup_ctx.append(services.services_ctx(cfg))
    app.on_shutdown.append(_close_websockets)
    app.router.add_get(base, root)
    if base != "/":
        app.router.add_get(base.rstrip("/"), root)
    app.router.add_get(base + "hub", root)
    app.router.add_get(base + "hub/health", health)
    app.router.add_get(base + "hub/metrics", metrics)
    app.router.add_static(base + "hub/static/", STATIC, append_version=False)
    api.setup(app, base)
    pages.setup(app, base)
    if cfg.get("auth.authenticator") == "oauth":
        from .auth.oauth_routes import setup as oauth_setup

        oauth_setup(app, base)
    oauth2.setup(app, base)
    admin.setup(app, base)
    app.router.add_route("*", base + "user/{name}", user_route)
    app.router.add_route("*", base + "user/{name}/{tail:.*}", user_route)
    return app
