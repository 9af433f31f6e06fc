"""The OAuth 2 / OpenID Connect client side: discovery, the authorization URL, the code exchange,
ID-token validation against the provider's JWKS (following key rotation) and user info.

Built on authlib (PKCE, grant URIs) and joserfc (JWS/JWT); nothing here logs a token or secret.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp

from ..errors import Forbidden, HubError

if TYPE_CHECKING:  # imported where used: the settings table loads this module (~150 ms)
    from joserfc import jwt
    from joserfc.jwk import KeySet

log = logging.getLogger("minihub.auth")

DISCOVERY_TTL = 3600.0
CLOCK_SKEW = 60  # seconds of leeway on exp/iat/nbf
# Asymmetric algorithms only: "none" and HS* (keyed by the client secret) are never accepted.
SAFE_ALGS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
    "Ed25519",
)


class ProviderError(HubError):
    """The provider could not be reached or answered something unusable."""

    status = 502


class LoginRefused(Forbidden):
    """The provider, or the hub's rules, did not let this person in."""


@dataclass
class Endpoints:
    authorize: str
    token: str
    userinfo: str = ""
    jwks: str = ""
    issuer: str = ""  # empty: plain OAuth 2 (GitHub), no ID token
    end_session: str = ""
    algs: tuple[str, ...] = ("RS256",)


@dataclass
class ClientSettings:
    label: str  # the provider's name for people: "GitHub", "Google", ...
    client_id: str
    client_secret: str
    scopes: list[str]
    issuer: str = ""  # set: OIDC with discovery
    overrides: dict[str, str] = field(default_factory=dict)  # authorize/token/userinfo/end_session
    token_auth: str = "client_secret_basic"  # or client_secret_post (GitHub)
    timeout: float = 10.0


class OAuthClient:
    """One provider. Discovery and keys are cached; a token with an unknown key refetches them."""

    def __init__(self, settings: ClientSettings) -> None:
        self.s = settings
        self._endpoints: Endpoints | None = None
        self._endpoints_at = 0.0
        self._keys: KeySet | None = None
        self._lock = asyncio.Lock()

    @property
    def oidc(self) -> bool:
        return bool(self.s.issuer)

    # --- endpoints ------------------------------------------------------------------------
    async def endpoints(self) -> Endpoints:
        async with self._lock:
            fresh = time.monotonic() - self._endpoints_at < DISCOVERY_TTL
            if self._endpoints is None or not fresh:
                self._endpoints = await self._discover() if self.oidc else self._static()
                self._endpoints_at = time.monotonic()
            return self._endpoints

    def _static(self) -> Endpoints:
        o = self.s.overrides
        return Endpoints(
            o["authorize"], o["token"], o.get("userinfo", ""), end_session=o.get("end_session", "")
        )

    async def _discover(self) -> Endpoints:
        url = self.s.issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = await self._get_json(url, "discovery document")
        if doc.get("issuer") != self.s.issuer:
            raise ProviderError(
                f"{self.s.label}'s discovery document names issuer "
                f"{str(doc.get('issuer'))[:200]!r}, not the configured "
                f"{self.s.issuer!r}: fix [auth.oauth] issuer."
            )
        o = self.s.overrides
        algs = tuple(
            a for a in doc.get("id_token_signing_alg_values_supported", ["RS256"]) if a in SAFE_ALGS
        ) or ("RS256",)
        try:
            return Endpoints(
                authorize=o.get("authorize") or str(doc["authorization_endpoint"]),
                token=o.get("token") or str(doc["token_endpoint"]),
                userinfo=o.get("userinfo") or str(doc.get("userinfo_endpoint") or ""),
                jwks=str(doc["jwks_uri"]),
                issuer=self.s.issuer,
                end_session=o.get("end_session") or str(doc.get("end_session_endpoint") or ""),
                algs=algs,
            )
        except KeyError as e:
            raise ProviderError(f"{self.s.label}'s discovery document lacks {e.args[0]}.") from None

    # --- the front channel ----------------------------------------------------------------
    async def authorize_url(self, redirect_uri: str, state: str, verifier: str, nonce: str) -> str:
        from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
        from authlib.oauth2.rfc7636 import create_s256_code_challenge

        ep = await self.endpoints()
        extra: dict[str, str] = {
            "code_challenge": create_s256_code_challenge(verifier),
            "code_challenge_method": "S256",
        }
        if self.oidc:
            extra["nonce"] = nonce
        return str(
            prepare_grant_uri(
                ep.authorize,
                self.s.client_id,
                "code",
                redirect_uri,
                " ".join(self.s.scopes),
                state,
                **extra,
            )
        )

    # --- the back channel -----------------------------------------------------------------
    async def exchange(self, code: str, verifier: str, redirect_uri: str) -> dict[str, Any]:
        """Trade the code for tokens; a refusal (expired, replayed code) is LoginRefused."""
        ep = await self.endpoints()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        headers = {"Accept": "application/json"}
        if self.s.token_auth == "client_secret_post":
            form.update(client_id=self.s.client_id, client_secret=self.s.client_secret)
        else:
            headers["Authorization"] = self._basic_auth()
        body = await self._request(
            "POST", ep.token, "token endpoint", data=form, headers=headers, refusal_ok=True
        )
        if body.get("error") in ("invalid_client", "unauthorized_client"):
            log.error(
                "%s rejected the hub's client credentials: %s", self.s.label, _oauth_error(body)
            )
            raise ProviderError(
                f"{self.s.label} does not accept this hub's client_id or client_secret: an "
                "admin must check [auth.oauth] against the provider's registration."
            )
        if "error" in body or not isinstance(body.get("access_token"), str):
            raise LoginRefused(
                f"{self.s.label} refused the sign-in code "
                f"({_oauth_error(body)}). It may have expired or been used "
                "already: start again from the login page."
            )
        return body

    def _basic_auth(self) -> str:
        # RFC 6749 2.3.1: both parts are form-encoded before they are joined and encoded.
        pair = f"{quote(self.s.client_id, safe='')}:{quote(self.s.client_secret, safe='')}"
        return "Basic " + base64.b64encode(pair.encode()).decode("ascii")

    async def userinfo(self, access_token: str, url: str = "") -> dict[str, Any]:
        ep = await self.endpoints()
        target = url or ep.userinfo
        headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/json"}
        return await self._get_json(target, "user-info endpoint", headers)

    async def get_status(self, url: str, access_token: str) -> int:
        """Status of an authenticated GET (GitHub's membership checks answer 204 or 404)."""
        headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/json"}
        try:
            async with (
                self._session() as s,
                s.get(url, headers=headers, allow_redirects=False) as r,
            ):
                return r.status
        except (TimeoutError, aiohttp.ClientError) as e:
            raise self._unreachable(url, e) from None

    # --- ID tokens ------------------------------------------------------------------------
    async def verify_id_token(self, id_token: str, nonce: str) -> dict[str, Any]:
        """Signature (JWKS, refetched once for a new key), iss, aud/azp, exp, iat, nonce."""
        from joserfc import jwt
        from joserfc.errors import JoseError

        ep = await self.endpoints()
        try:
            token = await self._decode(id_token, ep)
            registry = jwt.JWTClaimsRegistry(
                leeway=CLOCK_SKEW,
                iss={"essential": True, "value": ep.issuer},
                aud={"essential": True, "value": self.s.client_id},
                sub={"essential": True},
                exp={"essential": True},
                iat={"essential": True},
                nonce={"essential": True, "value": nonce},
            )
            registry.validate(token.claims)
        except JoseError as e:
            why = f"{e.error}: {e.description}" if e.description else e.error
            raise LoginRefused(
                f"The ID token from {self.s.label} is not valid ({why[:200]}): sign-in refused."
            ) from None
        claims = dict(token.claims)
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != self.s.client_id:
            raise LoginRefused(
                f"The ID token from {self.s.label} was issued to another "
                "party (azp): sign-in refused."
            )
        return claims

    async def _decode(self, id_token: str, ep: Endpoints) -> jwt.Token:
        from joserfc import jwt
        from joserfc.errors import BadSignatureError, InvalidKeyIdError

        keys = self._keys or await self._fetch_keys(ep)
        try:
            return jwt.decode(id_token, keys, algorithms=list(ep.algs))
        except (InvalidKeyIdError, BadSignatureError):
            # The provider may have rotated its keys since we cached them: fetch once more.
            fresh = await self._fetch_keys(ep)
            return jwt.decode(id_token, fresh, algorithms=list(ep.algs))

    async def _fetch_keys(self, ep: Endpoints) -> KeySet:
        from joserfc.errors import JoseError
        from joserfc.jwk import KeySet

        doc = await self._get_json(ep.jwks, "key set (JWKS)")
        try:
            keys = KeySet.import_key_set(doc)  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError, KeyError) as e:
            raise ProviderError(f"{self.s.label}'s key set is unusable: {e}"[:300]) from None
        self._keys = keys
        log.info("fetched %d signing keys from %s", len(keys.keys), ep.jwks)
        return keys

    # --- HTTP -----------------------------------------------------------------------------
    def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.s.timeout))

    async def _get_json(
        self, url: str, what: str, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        return await self._request("GET", url, what, headers=headers)

    async def _request(
        self, method: str, url: str, what: str, *, refusal_ok: bool = False, **kw: Any
    ) -> dict[str, Any]:
        try:
            async with self._session() as s, s.request(method, url, **kw) as r:
                status = r.status
                body = await r.json(content_type=None) if r.content_length != 0 else {}
        except (TimeoutError, aiohttp.ClientError) as e:
            raise self._unreachable(url, e) from None
        except ValueError:
            raise ProviderError(f"{self.s.label}'s {what} did not answer JSON.") from None
        if not isinstance(body, dict):
            raise ProviderError(f"{self.s.label}'s {what} answered something unexpected.")
        if status >= 400 and not (refusal_ok and status in (400, 401)):
            raise ProviderError(
                f"{self.s.label}'s {what} answered HTTP {status} ({_oauth_error(body)})."
            )
        return body

    def _unreachable(self, url: str, e: BaseException) -> ProviderError:
        log.warning("cannot reach %s at %s: %s", self.s.label, url.split("?")[0], type(e).__name__)
        return ProviderError(
            f"Could not reach {self.s.label} to complete the sign-in: "
            "try again in a moment, or ask an admin if it persists."
        )


def _oauth_error(body: dict[str, Any]) -> str:
    code = str(body.get("error") or "no error code")[:80]
    desc = str(body.get("error_description") or "")[:200]
    return f"{code}: {desc}" if desc else code
