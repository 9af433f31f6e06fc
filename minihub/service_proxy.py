"""/services/<name>/...: forwarding to a service with a `url`, as JupyterHub's proxy route.

Who may pass. JupyterHub's proxy lets every request through and the service decides (its
HubOAuth asks the hub who the token's user is and checks `access:services!service=<name>`).
Here the hub decides first for every request it can identify: a logged-in user or a token
must hold `access:services` on the service (minihub.access), else 403, and an open websocket
closes once that is revoked. An anonymous request passes, as in JupyterHub, so a service can
serve public pages and its HubOAuth can send a browser to the hub's login; the service, not
this gate, is the boundary for those (a request the hub cannot identify reaches the service
carrying no hub credential at all).

What crosses. The path and query are kept. The hub's session cookie never reaches a service
and a service cannot set it (nor a cookie outside its prefix); `_xsrf` passes both ways, as
for jupyterhub-singleuser, because HubOAuth keeps its own `_xsrf` at the service's prefix. The
Authorization header is forwarded: services check tokens with the hub themselves.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from .access.http import principal_of
from .auth.identity import SESSION_COOKIE
from .context import identity, parts
from .errors import Forbidden, NotFound, ServiceUnavailable
from .proxy import Upstream, UpstreamUnavailable, canonical_path
from .service_spec import Service
from .services import registry
from .user_proxy import _is_websocket, _same_origin


async def service_route(request: web.Request) -> web.StreamResponse:
    """/services/<name>/...: authorise (if identified), then hand the request to the proxy."""
    p = parts(request)
    path = canonical_path(request)
    base = p.cfg.base_url + "services/"
    name = path[len(base) :].split("/", 1)[0] if path.startswith(base) else ""
    svc = registry(request).get(name) if name else None
    if svc is None or not svc.url:
        what = "has no url to proxy to" if svc else "is not configured on this hub"
        raise NotFound(f"The service {name[:64]!r} {what}.")
    prefix = svc.prefix(p.cfg.base_url)
    if path + "/" == prefix:
        qs = f"?{request.query_string}" if request.query_string else ""
        raise web.HTTPFound(prefix + qs)
    ident = identity(request)
    who = principal_of(ident)
    if ident is not None:
        if ident.via == "cookie" and _is_websocket(request):
            _same_origin(request)
        if not p.access.allows(who, "access:services", service=name):
            raise Forbidden(
                f"{ident.name} may not access the service {name!r} (needs the scope "
                f"access:services!service={name}"
                f"{', which this token does not carry' if ident.token else ''})."
            )

    def still_allowed() -> bool:
        return who is None or p.access.allows(who, "access:services", service=name)

    async def signed_in() -> bool:  # an anonymous websocket has no credential to lose
        return ident is None or await p.identities.still_good(ident, request)

    return await _forward(request, svc, path, prefix, still_allowed, signed_in)


def upstream_of(svc: Service) -> Upstream:
    u = urlsplit(svc.url)
    assert u.hostname and u.port  # service_spec made url scheme://host:port
    return Upstream(u.hostname, u.port, secret="", scheme=u.scheme)


async def _forward(
    request: web.Request,
    svc: Service,
    path: str,
    prefix: str,
    allowed: Callable[[], bool],
    signed_in: Callable[[], Awaitable[bool]],
) -> web.StreamResponse:
    p = parts(request)
    start = time.perf_counter()
    p.metrics.proxied.inc()
    ws = _is_websocket(request)
    if ws:
        p.metrics.websockets += 1
    try:
        return await p.proxy.forward(
            request,
            upstream_of(svc),
            path=path,
            strip_cookies=(SESSION_COOKIE,),
            keep_authorization=True,
            cookie_path=prefix,
            allowed=allowed,
            signed_in=signed_in,
        )
    except UpstreamUnavailable:
        raise ServiceUnavailable(
            f"The service {svc.name!r} is not answering at {svc.url}"
            f"{': it may still be starting' if svc.managed else ''}."
        ) from None
    finally:
        if ws:
            p.metrics.websockets -= 1
        p.metrics.proxy_latency.observe(time.perf_counter() - start)
