"""The hub as an OAuth2 provider for jupyterhub-singleuser servers and HubOAuth services.

Authorization code flow (RFC 6749) with PKCE S256 (RFC 7636) when the client sends a
challenge, and JupyterHub's consent page (templates/oauth.html) before a code is given.
Each server is a client `jupyterhub-user-<name>[-<server>]` whose secret is its API token
(registered at launch by minihub.protocols); each service with a url a client
`service-<name>` whose secret is the service's token (registered by minihub.services).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from . import scopes
from .access import Access, Principal
from .access.http import principal_of
from .auth import secrets as S
from .auth.identity import Identity
from .body import read_form
from .context import identity, parts
from .service_spec import Service
from .services import Registry, registry
from .store import OAuthClient, Store, User
from .web.render import render

log = logging.getLogger("minihub.oauth2")
CODE_SECONDS = 300
routes = web.RouteTableDef()


class OAuthError(Exception):
    """An RFC 6749 error: `error` is the standard code, `description` for a person."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status

    def response(self) -> web.Response:
        # Both shapes: OAuth clients read error/error_description, ours read message.
        return web.json_response(
            {
                "error": self.error,
                "error_description": self.description,
                "status": self.status,
                "message": self.description,
            },
            status=self.status,
        )


# --- the provider ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pending:
    """An authorization request, checked against the client's registration and the user's
    access: what a code for it would carry. Built anew from the query (GET) and from the
    consent form (POST), so nothing the form says is trusted unchecked."""

    client: OAuthClient
    redirect_uri: str
    state: str | None
    challenge: str
    granted: list[str]
    service: Service | None


@routes.get("/oauth2/authorize")
async def authorize(request: web.Request) -> web.StreamResponse:
    """A logged-in user who may use the client's server gets a code, after a consent page
    unless JupyterHub would skip it; others log in first."""
    p = parts(request)
    ident = identity(request)
    if ident is None or ident.via != "cookie" or ident.user is None:
        raise web.HTTPFound(f"{p.cfg.base_url}hub/login?next={quote(request.path_qs, safe='')}")
    try:
        pending = await _pending(request, ident, request.query)
    except OAuthError as e:
        return e.response()
    if await _needs_confirm(p.store, ident.user, pending):
        return _consent_page(request, ident.user, pending)
    return await _issue(p.store, ident, pending)


@routes.post("/oauth2/authorize")
async def confirm(request: web.Request) -> web.StreamResponse:
    """The consent page's Authorize or Cancel (its `_xsrf` checked by minihub.middlewares)."""
    ident = identity(request)
    form = await read_form(request)
    try:
        if ident is None or ident.via != "cookie" or ident.user is None:
            raise OAuthError("access_denied", "Log in to the hub to authorize a client.", 403)
        pending = await _pending(request, ident, form)
    except OAuthError as e:
        return e.response()
    if form.get("decision") == "authorize":
        return await _issue(parts(request).store, ident, pending)
    log.info("%s declined OAuth access for %s", ident.user.name, pending.client.id)
    # RFC 6749 4.1.2.1: the client hears that the user said no
    denied = {"error": "access_denied", "error_description": "The user declined access."}
    raise web.HTTPFound(_back(pending, denied))


async def _pending(request: web.Request, ident: Identity, args: Mapping[str, str]) -> Pending:
    p = parts(request)
    client = await _client(p.store, args.get("client_id", ""))
    redirect_uri = _redirect_uri(client, args.get("redirect_uri", ""))
    if args.get("response_type", "code") != "code":
        raise OAuthError("unsupported_response_type", "Only response_type=code is supported.")
    challenge = _challenge(args.get("code_challenge", ""), args.get("code_challenge_method", ""))
    svc = await _may_use(p.store, p.access, client, principal_of(ident), registry(request))
    granted = _granted(client, args.get("scope", ""))
    if svc is not None:  # a token for a service always reaches that service
        granted = sorted({*granted, svc.access_scope()})
    return Pending(client, redirect_uri, args.get("state"), challenge, granted, svc)


async def _issue(store: Store, ident: Identity, pending: Pending) -> web.StreamResponse:
    """A code for the logged-in user; it and its token last only as long as this session."""
    assert ident.user is not None
    code = S.new_token()
    await store.add_oauth_code(
        S.hash_token(code),
        pending.client.id,
        ident.user.id,
        pending.redirect_uri,
        pending.granted,
        pending.challenge,
        time.time() + CODE_SECONDS,
        ident.session_hash,
    )
    raise web.HTTPFound(_back(pending, {"code": code}))


def _back(pending: Pending, args: dict[str, str]) -> str:
    """The client's registered redirect URI with `args` and the request's state."""
    if pending.state is not None:
        args = {**args, "state": pending.state}
    sep = "&" if "?" in pending.redirect_uri else "?"
    return f"{pending.redirect_uri}{sep}{urlencode(args)}"


async def _needs_confirm(store: Store, user: User, pending: Pending) -> bool:
    """As JupyterHub's needs_oauth_confirm: not for the user's own servers (a server shared
    with them, or an admin opening another's, does ask), nor for a service with
    oauth_no_confirm, nor when the user's tokens from this client already hold these scopes."""
    if pending.client.user_id == user.id:
        return False
    if pending.service is not None and pending.service.oauth_no_confirm:
        return False
    held = await store.oauth_scopes_granted(user.id, pending.client.id)
    return not (held and set(pending.granted) <= held)


def _consent_page(request: web.Request, user: User, pending: Pending) -> web.Response:
    """'<client> wants to: <what the scopes allow>', with Authorize and Cancel."""
    client = pending.client
    # the client's access to itself and identify are what every login gives: not listed
    required = {"identify", *(client.allowed_scopes if client.user_id is not None else ())}
    if pending.service is not None:
        required.add(pending.service.access_scope())
    rest = [s for s in pending.granted if s not in required]
    if not rest or "inherit" in rest:
        described = [(scopes.DESCRIPTIONS["inherit" if rest else "(no_scope)"], "")]
    else:
        raw = parts(request).cfg.custom_scopes  # checked at start-up: each has a description
        custom = {name: str(spec["description"]) for name, spec in raw.items()}
        described = scopes.describe(rest, user.name, custom)
    fields = {
        "client_id": client.id,
        "redirect_uri": pending.redirect_uri,
        "response_type": "code",
        "scope": " ".join(pending.granted),
        **({"state": pending.state} if pending.state is not None else {}),
        **({"code_challenge": pending.challenge} if pending.challenge else {}),
        **({"code_challenge_method": "S256"} if pending.challenge else {}),
    }
    ctx = {
        "client": client.description or client.id,
        "redirect_uri": pending.redirect_uri,
        "described": described,
        "identify_only": not rest,
        "fields": fields,
    }
    resp = render(request, "oauth.html", ctx)
    resp.headers["Cache-Control"] = "no-store"
    return resp


async def _client(store: Store, client_id: str) -> OAuthClient:
    client = await store.get_oauth_client(client_id) if client_id else None
    if client is None:
        raise OAuthError("invalid_client", f"No such OAuth client: {client_id[:80]!r}.")
    return client


def _redirect_uri(client: OAuthClient, given: str) -> str:
    if given and given != client.redirect_uri:
        raise OAuthError("invalid_request", "redirect_uri does not match the client's.")
    return client.redirect_uri


def _challenge(challenge: str, method: str) -> str:
    if not challenge:
        return ""
    if (method or "plain") != "S256":
        raise OAuthError("invalid_request", "Only code_challenge_method=S256 is supported.")
    return challenge


async def _may_use(
    store: Store, access: Access, client: OAuthClient, who: Principal | None, services: Registry
) -> Service | None:
    """Only people who may reach a server or service get a token for it: whoever holds
    access:servers on it, or access:services on the service, as minihub.access decides.
    Returns the client's service."""
    name = who.name if who else "You"
    if client.user_id is None:
        svc = services.by_client(client.id)
        if svc is None:
            raise OAuthError("access_denied", "This OAuth client has no configured service.", 403)
        if not access.allows(who, "access:services", service=svc.name):
            raise OAuthError(
                "access_denied",
                f"{name} may not access the service {svc.name!r} "
                f"(needs the scope {svc.access_scope()}).",
                403,
            )
        return svc
    owner = await store.get_user_by_id(client.user_id)
    server = client.id.removeprefix(f"jupyterhub-user-{owner.name}").lstrip("-") if owner else ""
    if owner is None or not access.allows(who, "access:servers", user=owner.name, server=server):
        raise OAuthError("access_denied", f"{name} may not access this server.", 403)
    return None


def _granted(client: OAuthClient, asked: str) -> list[str]:
    wanted = [s for s in asked.split() if s]
    allowed = client.allowed_scopes
    return [s for s in wanted if s in allowed] or list(allowed)


@routes.post("/oauth2/token")
async def token(request: web.Request) -> web.Response:
    """Exchange a code for an access token (a user token limited to the granted scopes)."""
    p = parts(request)
    args = await read_form(request)
    try:
        user, scoped, client, session_hash = await _exchange(p.store, args, request.headers)
        session_ends = await p.store.session_expires(session_hash) if session_hash else None
        if session_hash and session_ends is None:
            raise OAuthError("invalid_grant", "The login that authorized this code has ended.")
    except OAuthError as e:
        return e.response()
    secret = S.new_token()
    max_age = float(p.cfg.get("hub.session_max_age_days")) * 86400
    if session_ends is not None:  # it ends when that login does, at the latest
        max_age = min(max_age, session_ends - time.time())
    await p.store.add_kind_token(
        user.id,
        S.hash_token(secret),
        secret[: S.PREFIX_LEN],
        f"OAuth {client.id}",
        scoped,
        "oauth",
        client.id,
        time.time() + max_age,
        session_hash,
    )
    log.info("issued an OAuth token to %s for %s", user.name, client.id)
    return web.json_response(
        {
            "access_token": secret,
            "token_type": "Bearer",
            "expires_in": int(max_age),
            "scope": " ".join(scoped),
        },
        headers={"Cache-Control": "no-store"},
    )


async def _exchange(
    store: Store, args: dict[str, str], headers: Any
) -> tuple[User, list[str], OAuthClient, str | None]:
    if args.get("grant_type") != "authorization_code":
        raise OAuthError("unsupported_grant_type", "Only grant_type=authorization_code works.")
    client_id, secret = _client_credentials(args, headers)
    client = await _client(store, client_id)
    if not secret or not S.equal(S.hash_token(secret), client.secret_hash):
        raise OAuthError("invalid_client", "Wrong client secret.", 401)
    code = await store.take_oauth_code(S.hash_token(args.get("code", "")))
    if code is None or code.client_id != client.id:
        raise OAuthError("invalid_grant", "The code is unknown, used or expired.")
    if args.get("redirect_uri", code.redirect_uri) != code.redirect_uri:
        raise OAuthError("invalid_grant", "redirect_uri differs from the authorization's.")
    _check_verifier(code.code_challenge, args.get("code_verifier", ""))
    user = await store.get_user_by_id(code.user_id)
    if user is None:
        raise OAuthError("invalid_grant", "The user is gone.")
    return user, code.scopes, client, code.session_hash


def _client_credentials(args: dict[str, str], headers: Any) -> tuple[str, str]:
    """From the form, or HTTP Basic (RFC 6749 2.3.1)."""
    auth = str(headers.get("Authorization", ""))
    if auth.lower().startswith("basic "):
        try:
            raw = base64.b64decode(auth[6:].strip()).decode()
        except (ValueError, UnicodeDecodeError):
            raise OAuthError("invalid_client", "Malformed Basic credentials.", 401) from None
        cid, _, sec = raw.partition(":")
        return cid, sec
    return args.get("client_id", ""), args.get("client_secret", "")


def _check_verifier(challenge: str, verifier: str) -> None:
    if not challenge:
        return  # the client did not use PKCE
    digest = hashlib.sha256(verifier.encode()).digest()
    expected = base64.urlsafe_b64encode(digest).decode().rstrip("=")
    if not verifier or not S.equal(expected, challenge):
        raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge.")


def setup(app: web.Application, base_url: str) -> None:
    prefix = base_url + "hub/api"
    for r in routes:
        assert isinstance(r, web.RouteDef)
        app.router.add_route(r.method, prefix + r.path, r.handler)
