"""The hub as an OAuth2 provider for jupyterhub-singleuser servers, and their launch protocol.

Authorization code flow (RFC 6749) with PKCE S256 (RFC 7636) when the client sends a
challenge. Each server is a client `jupyterhub-user-<name>` whose secret is its API token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from . import scopes
from .auth import secrets as S
from .config import Config
from .context import identity, parts
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
        return web.json_response({"error": self.error, "error_description": self.description,
                                  "status": self.status, "message": self.description},
                                 status=self.status)


# --- the server's side: its client registration and environment ---------------------------

@dataclass(frozen=True)
class ServerClient:
    """What a jupyterhub-singleuser server is told at launch."""

    client_id: str
    api_token: str
    redirect_uri: str
    access_scopes: list[str]


def access_scopes(name: str) -> list[str]:
    return [f"access:servers!server={name}/", f"access:servers!user={name}"]


async def register_server(store: Store, user: User, base_url: str) -> ServerClient:
    """A fresh API token for `user`'s server (only its hash is kept) and its OAuth client.

    The token may post activity and reach the server, like JupyterHub's "server" role;
    it is also the client secret for the code exchange.
    """
    token = S.new_token()
    await store.delete_kind_tokens(user.id, "server")
    prefix = f"{base_url}user/{user.name}/"
    await store.add_kind_token(user.id, S.hash_token(token), token[:S.PREFIX_LEN],
                               f"Server at {prefix}",
                               [f"users:activity!user={user.name}", *access_scopes(user.name)],
                               "server", None)
    client = ServerClient(f"jupyterhub-user-{user.name}", token, prefix + "oauth_callback",
                          access_scopes(user.name))
    await store.save_oauth_client(client.client_id, S.hash_token(token), client.redirect_uri,
                                  f"Server at {prefix}", user.id,
                                  ["identify", *client.access_scopes])
    return client


def hub_api_url(cfg: Config) -> str:
    """Where a server on this machine reaches the hub's API."""
    if cfg.tls and cfg.get("hub.public_url"):
        # The certificate names the public host, so a TLS hub is reached by that name.
        return str(cfg.get("hub.public_url")).rstrip("/") + "/hub/api"
    ip = str(cfg.get("hub.ip"))
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(ip, ip)
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    scheme = "https" if cfg.tls else "http"
    return f"{scheme}://{host}:{cfg.get('hub.port')}{cfg.base_url}hub/api"


def server_env(cfg: Config, user: User, client: ServerClient, host: str, port: int,
               admin_access: bool) -> dict[str, str]:
    """The environment JupyterHub's Spawner.get_env gives jupyterhub-singleuser."""
    api = hub_api_url(cfg)
    prefix = f"{cfg.base_url}user/{user.name}/"
    public = str(cfg.get("hub.public_url")).rstrip("/")
    url_host = f"[{host}]" if ":" in host else host
    env = {
        "JUPYTERHUB_API_TOKEN": client.api_token,
        "JPY_API_TOKEN": client.api_token,
        "JUPYTERHUB_CLIENT_ID": client.client_id,
        "JUPYTERHUB_COOKIE_HOST_PREFIX_ENABLED": "0",
        "JUPYTERHUB_HOST": public,
        "JUPYTERHUB_OAUTH_CALLBACK_URL": client.redirect_uri,
        "JUPYTERHUB_OAUTH_SCOPES": json.dumps(client.access_scopes),
        "JUPYTERHUB_OAUTH_ACCESS_SCOPES": json.dumps(client.access_scopes),
        "JUPYTERHUB_OAUTH_CLIENT_ALLOWED_SCOPES": json.dumps([]),
        "JUPYTERHUB_USER": user.name,
        "JUPYTERHUB_SERVER_NAME": "",
        "JUPYTERHUB_API_URL": api,
        "JUPYTERHUB_ACTIVITY_URL": f"{api}/users/{quote(user.name)}/activity",
        "JUPYTERHUB_BASE_URL": cfg.base_url,
        "JUPYTERHUB_SERVICE_PREFIX": prefix,
        "JUPYTERHUB_SERVICE_URL": f"http://{url_host}:{port}{prefix}",
        "JUPYTERHUB_PUBLIC_URL": f"{public}{prefix}" if public else "",
        "JUPYTERHUB_PUBLIC_HUB_URL": f"{public}{cfg.base_url}hub/" if public else "",
    }
    if admin_access:
        env["JUPYTERHUB_ADMIN_ACCESS"] = "1"
    if landing_path(cfg) != "/":
        env["JUPYTERHUB_DEFAULT_URL"] = landing_path(cfg)
    return env


def landing_path(cfg: Config) -> str:
    """Where under /user/<name>/ the hub sends a browser. minihub's own default (/tree/)
    is a 404 on jupyterhub-singleuser with JupyterLab; its root goes to its own default."""
    url = str(cfg.get("spawner.default_url"))
    return "/" if cfg.get("spawner.cmd") and url == "/tree/" else url


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
        await _may_use(p.store, client, ident.user, bool(p.cfg.get("hub.admin_access")))
    except OAuthError as e:
        return e.response()
    code = S.new_token()
    granted = _granted(client, q.get("scope", ""))
    await p.store.add_oauth_code(S.hash_token(code), client.id, ident.user.id, redirect_uri,
                                 granted, challenge, time.time() + CODE_SECONDS)
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


async def _may_use(store: Store, client: OAuthClient, user: User, admin_access: bool) -> None:
    """Only people who may reach a server get a token for it (no consent page: the owner,
    or an admin with admin_access, is the only one who gets this far)."""
    if client.user_id is None:
        return
    owner = await store.get_user_by_id(client.user_id)
    held = scopes.user_defaults(user.name, user.admin, admin_access)
    if owner is None or not scopes.allows(held, "access:servers", owner.name, ""):
        raise OAuthError("access_denied", f"{user.name} may not access this server.", 403)


def _granted(client: OAuthClient, asked: str) -> list[str]:
    wanted = [s for s in asked.split() if s]
    allowed = client.allowed_scopes
    return [s for s in wanted if s in allowed] or list(allowed)


@routes.post("/oauth2/token")
async def token(request: web.Request) -> web.Response:
    """Exchange a code for an access token (a user token limited to the granted scopes)."""
    p = parts(request)
    form = await request.post()
    args = {k: str(v) for k, v in form.items()}
    try:
        user, scoped, client = await _exchange(p.store, args, request.headers)
    except OAuthError as e:
        return e.response()
    secret = S.new_token()
    max_age = float(p.cfg.get("hub.session_max_age_days")) * 86400
    await p.store.add_kind_token(user.id, S.hash_token(secret), secret[:S.PREFIX_LEN],
                                 f"OAuth {client.id}", scoped, "oauth", client.id,
                                 time.time() + max_age)
    log.info("issued an OAuth token to %s for %s", user.name, client.id)
    return web.json_response({"access_token": secret, "token_type": "Bearer",
                              "expires_in": int(max_age), "scope": " ".join(scoped)},
                             headers={"Cache-Control": "no-store"})


async def _exchange(store: Store, args: dict[str, str],
                    headers: Any) -> tuple[User, list[str], OAuthClient]:
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
