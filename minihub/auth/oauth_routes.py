"""The hub's two OAuth routes: /hub/oauth_login sends the browser to the provider, and
/hub/oauth_callback finishes the sign-in with the login flow every authenticator shares.
"""

from __future__ import annotations

import logging
import secrets
from urllib.parse import urlsplit

from aiohttp import web

from .. import users
from ..context import Parts, parts
from ..errors import BadRequest, HubError, NotFound
from ..web.errors import clean
from ..web.pages import after_login, login_address, over_https, safe_next, start_session
from . import secrets as S
from .oauth import OAuthenticator, Pending
from .oauth_client import LoginRefused
from .throttle import address_group

log = logging.getLogger("minihub.auth")
STATE_COOKIE = "minihub-oauth-state"
routes = web.RouteTableDef()


def _oauth(p: Parts) -> OAuthenticator:
    if not isinstance(p.authenticator, OAuthenticator):
        raise NotFound("This hub does not sign people in through an identity provider.")
    return p.authenticator


def callback_url(request: web.Request, auth: OAuthenticator, p: Parts) -> str:
    if auth.callback_url:
        return str(auth.callback_url)
    public = str(p.cfg.get("hub.public_url"))
    if public:
        u = urlsplit(public)
        return f"{u.scheme}://{u.netloc}{p.cfg.base_url}hub/oauth_callback"
    return f"{request.scheme}://{request.host}{p.cfg.base_url}hub/oauth_callback"


@routes.get("/hub/oauth_login")
async def oauth_login(request: web.Request) -> web.Response:
    p = parts(request)
    auth = _oauth(p)
    browser = request.cookies.get(STATE_COOKIE, "")
    if len(browser) != 43:  # reuse the cookie so sign-ins in two tabs both work
        browser = secrets.token_urlsafe(32)
    nxt = request.query.get("next", "")
    state, pending = auth.pending.add(
        browser, safe_next(request, nxt) if nxt else "", address_group(login_address(request))
    )
    try:
        url = await auth.client.authorize_url(
            callback_url(request, auth, p), state, pending.verifier, pending.nonce
        )
    except HubError as e:
        log.warning("oauth sign-in could not start: %s", e.message)
        raise
    resp = web.HTTPFound(url)
    resp.set_cookie(
        STATE_COOKIE,
        browser,
        path=f"{p.cfg.base_url}hub/",
        httponly=True,
        samesite="Lax",
        secure=over_https(request, p),
        max_age=int(auth.pending.ttl),
    )
    resp.headers["Cache-Control"] = "no-store"
    raise resp


@routes.get("/hub/oauth_callback")
async def oauth_callback(request: web.Request) -> web.Response:
    p = parts(request)
    auth = _oauth(p)
    try:
        return await _finish(request, p, auth)
    except HubError as e:
        log.warning("oauth sign-in refused (%d): %s", e.status, clean(e.message, 300))
        raise


async def _finish(request: web.Request, p: Parts, auth: OAuthenticator) -> web.Response:
    q = request.query
    pending = auth.pending.take(q.get("state", ""))  # single use, whatever happens next
    if q.get("error"):
        raise LoginRefused(
            f"{auth.login_service} did not sign you in "
            f"({q['error'][:80]}): start again from the login page."
        )
    _check_pending(request, pending)
    assert pending is not None
    expected_iss = auth.client.s.issuer
    if "iss" in q and expected_iss and q["iss"] != expected_iss:  # RFC 9207 mix-up defence
        raise LoginRefused("The sign-in answer came from another provider than this hub's.")
    if not q.get("code"):
        raise BadRequest(f"{auth.login_service} sent no sign-in code: start again.")
    person = await auth.person(q["code"], pending, callback_url(request, auth, p))
    result = await auth.admit(person)
    user = await users.login(p.store, p.access, result.name, result.admin, result.groups)
    await auth.save_auth_state(user.id, person)
    resp = web.HTTPFound(await after_login(request, p, user, pending.next or None))
    await start_session(request, p, user, resp)
    resp.del_cookie(STATE_COOKIE, path=f"{p.cfg.base_url}hub/")
    log.info("login of %s through %s", user.name, auth.login_service)
    raise resp


def _check_pending(request: web.Request, pending: Pending | None) -> None:
    if pending is None:
        raise BadRequest(
            "This sign-in has expired or was already used: start again from the login page."
        )
    browser = request.cookies.get(STATE_COOKIE, "")
    if not browser or not S.equal(S.hash_token(browser), pending.browser_hash):
        raise BadRequest(
            "This sign-in was started in another browser (or its cookie was "
            "lost): start again from the login page."
        )


def setup(app: web.Application, base_url: str) -> None:
    prefix = base_url.rstrip("/")
    for r in routes:
        assert isinstance(r, web.RouteDef)
        app.router.add_route(r.method, prefix + r.path, r.handler)
