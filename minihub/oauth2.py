"""The hub as an OAuth2 provider for jupyterhub-singleuser servers and HubOAuth services.

Authorization code flow (RFC 6749) with PKCE S256 (RFC 7636) when the client sends a
challenge. Each server is a client `jupyterhub-user-<name>[-<server>]` whose secret is its
API token (registered at launch by minihub.protocols); each service with a url a client
`service-<name>` whose secret is the service's token (registered by minihub.services).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from .access import Access, Principal
from .access.http import principal_of
from .auth import secrets as S
from .body import read_form
from .context import identity, parts
from .service_spec import Service
from .services import Registry, registry
from .store import OAuthClient, Store, User

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


@routes.get("/oauth2/authorize")
async def authorize(request: web.Request) -> web.StreamResponse:
    """A logged-in user who may use the client's server gets a code; others log in first."""
    p = parts(request)
    ident = identity(request)
    if ident is None or ident.via != "cookie":
        raise web.HTTPFound(f"{p.cfg.base_url}hub/login?next={quote(request.path_qs, safe='')}")
    q = request.query
    try:
        client = await _client(p.store, q.get("client_id", ""))
        redirect_uri = _redirect_uri(client, q.get("redirect_uri", ""))
        if q.get("response_type", "code") != "code":
            raise OAuthError("unsupported_response_type", "Only response_type=code is supported.")
        challenge = _challenge(q.get("code_challenge", ""), q.get("code_challenge_method", ""))
        svc = await _may_use(p.store, p.access, client, principal_of(ident), registry(request))
    except OAuthError as e:
        return e.response()
    code = S.new_token()
    granted = _granted(client, q.get("scope", ""))
    if svc is not None:  # a token for a service always reaches that service
        granted = sorted({*granted, svc.access_scope()})
    await p.store.add_oauth_code(
        S.hash_token(code),
        client.id,
        ident.user.id if ident.user else 0,
        redirect_uri,
        granted,
        challenge,
        time.time() + CODE_SECONDS,
    )
    args = {"code": code, **({"state": q["state"]} if "state" in q else {})}
    sep = "&" if "?" in redirect_uri else "?"
    raise web.HTTPFound(f"{redirect_uri}{sep}{urlencode(args)}")


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
    """Only people who may reach a server or service get a token for it (no consent page:
    whoever holds access:servers on it, or access:services on the service, as minihub.access
    decides; so a service's oauth_no_confirm changes nothing). Returns the client's service."""
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
        user, scoped, client = await _exchange(p.store, args, request.headers)
    except OAuthError as e:
        return e.response()
    secret = S.new_token()
    max_age = float(p.cfg.get("hub.session_max_age_days")) * 86400
    await p.store.add_kind_token(
        user.id,
        S.hash_token(secret),
        secret[: S.PREFIX_LEN],
        f"OAuth {client.id}",
        scoped,
        "oauth",
        client.id,
        time.time() + max_age,
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
) -> tuple[User, list[str], OAuthClient]:
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
    return user, code.scopes, client


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
