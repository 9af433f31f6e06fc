"""The hub's middleware stack, outermost first (`MIDDLEWARES`): the access log, errors as
responses, security headers, forms parsed once, and who is asking (with the XSRF check).

Each is a few lines; how errors look lives in minihub.web.errors, identities in auth/.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from . import body
from .auth.identity import SAFE_METHODS
from .context import BASE_URL, IDENTITY, PAGE_CONTEXT, REQUEST_ID, Parts, parts
from .errors import Forbidden, HubError, SpawnError
from .web.errors import CLIENT_GONE, clean, client_gone, error_response

log = logging.getLogger("minihub.web")
access = logging.getLogger("minihub.access")
_ids = itertools.count(1)
NO_XSRF_PATHS = ("hub/login", "hub/signup")
# Paths the hub proxies (user servers, services): bodies stream on, their headers are theirs.
PROXIED = ("user/", "services/")


@web.middleware
async def log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One bounded, escaped access line per request, with no secrets."""
    rid = f"{next(_ids):x}"
    request[REQUEST_ID] = rid
    start = time.perf_counter()
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as e:
        status = e.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_GONE  # the hub is stopping, or aiohttp gave up on the client
        raise
    finally:
        ms = (time.perf_counter() - start) * 1000
        ident = request.get(IDENTITY)
        user = ident.name if ident is not None else "-"
        level = logging.WARNING if 500 <= status < CLIENT_GONE else logging.INFO
        access.log(
            level,
            "%d %s %s %.1fms user=%s rid=%s",
            status,
            request.method[:10],
            clean(request.path),
            ms,
            clean(str(user)),
            rid,
            extra={"status": status},
        )


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except HubError as e:
        tail = e.log_tail if isinstance(e, SpawnError) else ""
        return error_response(request, e.status, e.message, e.headers, tail)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        keep = {k: v for k, v in e.headers.items() if k in ("Allow", "Retry-After")}
        return error_response(
            request,
            e.status,
            e.text if e.text and e.text != f"{e.status}: {e.reason}" else e.reason or "Error",
            keep,
        )
    except Exception as e:
        if isinstance(e, ConnectionError) and client_gone(request):
            # Re-raising would make aiohttp log "Error handling request" with a traceback;
            # this answer cannot be delivered, aiohttp drops it quietly, and the access log
            # line (499) is the one trace it leaves.
            return web.Response(status=CLIENT_GONE)
        log.exception("unhandled error in %s %s", request.method, clean(request.path))
        return error_response(request, 500, "Internal error: the hub logged the details.")


@web.middleware
async def security_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    resp = await handler(request)
    if request.path.startswith(tuple(request.config_dict[BASE_URL] + x for x in PROXIED)):
        return resp  # the user server's (or service's) own headers (CSP included) pass through
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
    if (
        request.method not in SAFE_METHODS
        and request.content_type in body.FORM_TYPES
        and not request.path.startswith(tuple(request.config_dict[BASE_URL] + x for x in PROXIED))
    ):
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
    request[PAGE_CONTEXT] = {
        "user": ident.user if ident else None,
        "xsrf": p.identities.xsrf_for(ident),
        "kind": p.authenticator.kind,
    }
    proxied = request.path.startswith(tuple(base + x for x in PROXIED))
    if not request.path.startswith(tuple(base + x for x in NO_XSRF_PATHS + _own_xsrf(p))):
        await p.identities.check_xsrf(request, ident, form=not proxied)
    if (
        ident is not None
        and ident.via != "cookie"
        and request.method not in SAFE_METHODS
        and not proxied
        and not request.path.startswith(base + "hub/api")
    ):
        # Pages are for browsers: a token (perhaps a narrowly scoped one) must not reach
        # the admin and token forms, which check no scopes; the REST API does.
        raise Forbidden("Use the REST API under /hub/api with a token; pages need a login.")
    return await handler(request)


def _own_xsrf(p: Parts) -> tuple[str, ...]:
    """Paths that guard themselves: the OAuth token endpoint authenticates its client by
    secret; jupyterhub-singleuser checks its own `_xsrf` token (JupyterLab cannot know the
    hub's), and the hub's session cookie is SameSite=Lax."""
    own = ("hub/api/oauth2/token", "services/")  # services: the hub's cookie never reaches them
    return own + (("user/",) if p.servers.protocol.checks_own_xsrf else ())


MIDDLEWARES: tuple[Middleware, ...] = (
    log_middleware,
    errors_middleware,
    security_middleware,
    form_middleware,
    identity_middleware,
)
