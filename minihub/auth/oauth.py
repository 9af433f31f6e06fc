"""Sign in with an identity provider ([auth] authenticator = "oauth"): OIDC, Google, Auth0, GitHub.

The provider proves who someone is; the hub's rules ([auth] and [auth.oauth]) decide who gets in.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..config import Config
from ..errors import HubError, SpawnError, StartupError
from ..setting import Setting
from ..spawner import accounts
from ..store import Store
from . import names
from . import secrets as S
from .base import Authenticator, AuthResult
from .oauth_client import ClientSettings, LoginRefused, OAuthClient

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

log = logging.getLogger("minihub.auth")

STATE_TTL = 600.0  # seconds a started sign-in may take
MAX_PENDING = 10_000
PENDING_PER_ADDRESS = 50  # started sign-ins one address may hold: more evict its own oldest
MAX_ORGS = 20

PRESETS: dict[str, dict[str, Any]] = {
    "oidc": {"label": "", "claim": "preferred_username", "scopes": ["openid", "email", "profile"]},
    "google": {
        "label": "Google",
        "claim": "email",
        "issuer": "https://accounts.google.com",
        "scopes": ["openid", "email", "profile"],
    },
    "auth0": {"label": "Auth0", "claim": "email", "scopes": ["openid", "email", "profile"]},
    "github": {
        "label": "GitHub",
        "claim": "login",
        "scopes": [],
        "authorize": "https://github.com/login/oauth/authorize",
        "token": "https://github.com/login/oauth/access_token",
        "userinfo": "https://api.github.com/user",
    },
}


@dataclass
class Pending:
    """A sign-in started in one browser and not yet finished; used at most once."""

    browser_hash: str
    verifier: str
    nonce: str
    next: str
    expires: float
    address: str = ""  # who started it (the throttle's address group)


class PendingLogins:
    """Started sign-ins by hash of their `state`, in memory: a hub restart only asks for a retry."""

    def __init__(
        self,
        ttl: float = STATE_TTL,
        limit: int = MAX_PENDING,
        per_address: int = PENDING_PER_ADDRESS,
    ) -> None:
        self.ttl, self.limit, self.per_address = ttl, limit, per_address
        self._by_state: dict[str, Pending] = {}

    def add(self, browser: str, next_url: str, address: str = "") -> tuple[str, Pending]:
        """A new sign-in. `address` starting many evicts only its own oldest; when the store
        is full, the oldest of the address that holds most goes: a flood of sign-ins that
        are never finished does not push out everyone else's."""
        self._prune(address)
        state = secrets.token_urlsafe(32)
        pending = Pending(
            S.hash_token(browser),
            secrets.token_urlsafe(48),
            secrets.token_urlsafe(24),
            next_url,
            time.monotonic() + self.ttl,
            address,
        )
        self._by_state[S.hash_token(state)] = pending
        return state, pending

    def take(self, state: str) -> Pending | None:
        pending = self._by_state.pop(S.hash_token(state), None) if state else None
        if pending is None or pending.expires < time.monotonic():
            return None
        return pending

    def _prune(self, address: str) -> None:
        now = time.monotonic()
        for k in [k for k, p in self._by_state.items() if p.expires < now]:
            del self._by_state[k]
        mine = [k for k, p in self._by_state.items() if p.address == address]
        if len(mine) >= self.per_address:  # oldest first: dicts keep insertion order
            del self._by_state[mine[0]]
        while len(self._by_state) >= self.limit:
            counts = Counter(p.address for p in self._by_state.values())
            top = counts.most_common(1)[0][0]
            del self._by_state[next(k for k, p in self._by_state.items() if p.address == top)]


@dataclass
class Person:
    """What the provider said about someone, reduced to what the hub's rules look at."""

    raw_name: str
    email: str = ""
    email_verified: bool = False
    hosted_domain: str = ""
    groups: set[str] = field(default_factory=set)
    orgs: set[str] = field(default_factory=set)
    tokens: dict[str, Any] = field(default_factory=dict)


def _setting(name: str, typ: Any, default: Any, help: str) -> Setting:
    return Setting("auth.oauth", name, typ, default, help)


class OAuthenticator(Authenticator):
    kind = "oauth"
    # [auth.oauth]. The registry reads these whichever authenticator is chosen, so this module
    # and oauth_client import cryptography, authlib and joserfc only when they are used.
    settings: ClassVar[list[Setting]] = [
        _setting(
            "provider",
            str,
            "oidc",
            '"oidc" (any provider with discovery at issuer), "google", "auth0" or "github".',
        ),
        _setting(
            "issuer",
            str,
            "",
            'OIDC issuer URL; its /.well-known/openid-configuration is read. Set for provider = "oidc".',
        ),
        _setting("domain", str, "", "Auth0 tenant domain, e.g. example.eu.auth0.com."),
        _setting("client_id", str, "", "Client id registered at the provider."),
        _setting("client_secret", str, "", "Client secret (or use client_secret_file)."),
        _setting(
            "client_secret_file",
            str,
            "",
            "File holding the client secret (mode 0600), instead of client_secret.",
        ),
        _setting(
            "scopes",
            list,
            [],
            'Scopes to request. Empty: the provider\'s default (["openid", "email", "profile"]; GitHub: ["read:org"] when organisations are checked).',
        ),
        _setting(
            "callback_url",
            str,
            "",
            "Redirect URI registered at the provider. Empty: <public_url>hub/oauth_callback (or the request's own URL).",
        ),
        _setting(
            "username_claim",
            str,
            "",
            "Claim that becomes the username. Empty: preferred_username (oidc), email (google, auth0: its local part), login (github).",
        ),
        _setting(
            "allow_all",
            bool,
            False,
            "Let anyone the provider authenticates log in when no allow rule is set.",
        ),
        _setting(
            "allowed_domains",
            list,
            [],
            "Email domains (verified email, or Google hd) that may log in; others are refused.",
        ),
        _setting("groups_claim", str, "groups", "Claim listing a person's groups."),
        _setting("allowed_groups", list, [], "Groups (from groups_claim) that may log in."),
        _setting("admin_groups", list, [], "Groups (from groups_claim) that are admins."),
        _setting(
            "allowed_organizations", list, [], "GitHub: organisations whose members may log in."
        ),
        _setting("authorize_url", str, "", "Override the provider's authorization endpoint."),
        _setting("token_url", str, "", "Override the provider's token endpoint."),
        _setting(
            "userdata_url",
            str,
            "",
            "Override the user-info endpoint (GitHub: its API's /user; /orgs/... is found beside it).",
        ),
        _setting(
            "logout_redirect",
            bool,
            False,
            "On logout, also end the session at the provider (its end_session_endpoint).",
        ),
        _setting("end_session_url", str, "", "Override the provider's end-session endpoint."),
        _setting(
            "enable_auth_state",
            bool,
            False,
            "Keep the provider's tokens, encrypted with a key derived from the cookie secret.",
        ),
        _setting(
            "http_timeout",
            (int, float),
            10,
            "Seconds to wait for the provider's token, key and user-info endpoints.",
        ),
    ]

    def __init__(self, cfg: Config, store: Store) -> None:
        super().__init__(cfg)
        o = cfg.section("auth.oauth")
        self.cfg, self.store = cfg, store
        self.provider = o["provider"]
        if self.provider not in PRESETS:
            raise StartupError(
                f"[auth.oauth] provider must be one of {', '.join(PRESETS)}, not {self.provider!r}"
            )
        preset = PRESETS[self.provider]
        self.client = OAuthClient(self._client_settings(o, preset))
        self.login_service = self.client.s.label
        self.username_claim = o["username_claim"] or preset["claim"]
        self.allow_all = bool(o["allow_all"])
        self.allowed_domains = {d.lower().lstrip("@") for d in o["allowed_domains"]}
        self.groups_claim = o["groups_claim"]
        self.oauth_allowed_groups = set(o["allowed_groups"])
        self.oauth_admin_groups = set(o["admin_groups"])
        self.allowed_orgs = {x.lower() for x in o["allowed_organizations"]}
        self.callback_url = o["callback_url"]
        self.logout_redirect = bool(o["logout_redirect"])
        self.pending = PendingLogins()
        self.vault = _vault(cfg) if o["enable_auth_state"] else None
        if not (self.allow_all or self._has_allow_rule()):
            log.warning(
                "[auth.oauth]: no allow rule (allowed_users, allowed_domains, "
                "allowed_groups, allowed_organizations) and allow_all = false: "
                "only admin_users can log in"
            )

    def _client_settings(self, o: dict[str, Any], preset: dict[str, Any]) -> ClientSettings:
        issuer = o["issuer"] or preset.get("issuer", "")
        if self.provider == "auth0":
            if not o["domain"] and not issuer:
                raise StartupError("[auth.oauth] domain: set your Auth0 tenant's domain")
            issuer = issuer or f"https://{o['domain'].strip('/')}/"
        if self.provider in ("oidc", "google", "auth0") and not issuer:
            raise StartupError(
                "[auth.oauth] issuer: set the provider's issuer URL "
                "(its /.well-known/openid-configuration is read)"
            )
        if not o["client_id"]:
            raise StartupError("[auth.oauth] client_id: set the id registered at the provider")
        overrides = {k: o[f"{k}_url"] or preset.get(k, "") for k in ("authorize", "token")}
        overrides["userinfo"] = o["userdata_url"] or preset.get("userinfo", "")
        overrides["end_session"] = o["end_session_url"]
        scopes = list(o["scopes"]) or list(preset["scopes"])
        if self.provider == "github" and not o["scopes"] and o["allowed_organizations"]:
            scopes = ["read:org"]
        label = preset["label"] or _host_of(issuer)
        return ClientSettings(
            label=label,
            client_id=o["client_id"],
            client_secret=_client_secret(o),
            scopes=scopes,
            issuer="" if self.provider == "github" else issuer,
            overrides={k: v for k, v in overrides.items() if v},
            token_auth="client_secret_post" if self.provider == "github" else "client_secret_basic",
            timeout=float(o["http_timeout"]),
        )

    def _has_allow_rule(self) -> bool:
        return bool(
            self.allowed_users
            or self.allowed_domains
            or self.oauth_allowed_groups
            or self.allowed_orgs
        )

    async def check_password(self, username: str, password: str) -> bool:
        return False  # people sign in at the provider, never with a password here

    # --- who the provider says this is ----------------------------------------------------
    async def person(self, code: str, pending: Pending, redirect_uri: str) -> Person:
        tokens = await self.client.exchange(code, pending.verifier, redirect_uri)
        if self.provider == "github":
            return await self._github_person(tokens)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise LoginRefused(
                f"{self.login_service} sent no ID token: is the 'openid' "
                "scope in [auth.oauth] scopes?"
            )
        claims = await self.client.verify_id_token(id_token, pending.nonce)
        if (await self.client.endpoints()).userinfo:
            info = await self.client.userinfo(tokens["access_token"])
            if info.get("sub") != claims["sub"]:
                raise LoginRefused(f"{self.login_service}'s user info is about someone else.")
            claims = {**info, **claims}
        return self._person_from_claims(claims, tokens)

    def _person_from_claims(self, claims: dict[str, Any], tokens: dict[str, Any]) -> Person:
        groups = claims.get(self.groups_claim) or []
        return Person(
            raw_name=str(claims.get(self.username_claim) or ""),
            email=str(claims.get("email") or ""),
            email_verified=claims.get("email_verified") is True,
            hosted_domain=str(claims.get("hd") or ""),
            groups={str(g) for g in groups} if isinstance(groups, list) else set(),
            tokens=tokens,
        )

    async def _github_person(self, tokens: dict[str, Any]) -> Person:
        token = str(tokens["access_token"])
        user = await self.client.userinfo(token)
        login = str(user.get("login") or "")
        email = str(user.get("email") or "")
        person = Person(
            raw_name=str(user.get(self.username_claim) or ""),
            email=email,
            email_verified=bool(email),
            tokens=tokens,
        )
        api = (await self.client.endpoints()).userinfo.rsplit("/user", 1)[0]
        for org in sorted(self.allowed_orgs)[:MAX_ORGS]:
            status = await self.client.get_status(f"{api}/orgs/{org}/members/{login}", token)
            if status == 204:
                person.orgs.add(org)
        return person

    # --- the hub's rules ------------------------------------------------------------------
    async def admit(self, person: Person) -> AuthResult:
        """The hub user this person signs in as, or LoginRefused saying why not."""
        name = self.username(person)
        if name in self.blocked_users:
            raise LoginRefused(f"{name} may not use this hub.")
        if self.allowed_domains and not self._domain_ok(person):
            raise LoginRefused(
                f"Accounts from {_domain(person.email) or 'this domain'} may not use this hub."
            )
        if not self._allowed(name, person):
            raise LoginRefused(
                f"{name} is not on this hub's list of allowed users: ask an admin to add you."
            )
        await self._ensure_account(name)
        return AuthResult(name, self._admin(name, person), self.managed(person.groups))

    def _admin(self, name: str, person: Person) -> bool | None:
        """admin_users are admins; with admin_groups the provider's groups decide at every
        sign-in (taken out of the group, out of the admins, as oauthenticator); else None:
        left as the hub has it (an admin may have made them one)."""
        if name in self.admin_users or self.oauth_admin_groups & person.groups:
            return True
        return False if self.oauth_admin_groups else None

    def username(self, person: Person) -> str:
        raw = person.raw_name
        if not raw:
            raise LoginRefused(
                f"{self.login_service} did not say who you are (no {self.username_claim!r} claim)."
            )
        if "@" in raw:  # an email as the name: its local part, unique only within one domain
            raw = self._local_part(raw, person)
        try:
            return names.validate(raw)
        except HubError as e:
            raise LoginRefused(
                f"Your {self.login_service} name {raw[:64]!r} cannot be a hub "
                f"user name. {e.message}"
            ) from None

    def _local_part(self, raw: str, person: Person) -> str:
        """alice for alice@example.org, if example.org is the one allowed domain: with no
        domain rule, or several, alice@a.org and alice@b.org (or an unverified alice@ of
        any provider account) would sign in as the same hub user."""
        domains = sorted(self.allowed_domains)
        if len(domains) != 1 or _domain(raw) != domains[0]:
            only = f"@{domains[0]}" if len(domains) == 1 else "one domain"
            raise LoginRefused(
                f"Your {self.login_service} name {raw[:64]!r} is an email address, and the hub "
                f"makes user names only of addresses in {only} ([auth.oauth] allowed_domains "
                "with one domain), so that people of different domains never share a name. "
                "An admin can set it, or username_claim to a claim without '@'."
            )
        if raw.lower() == person.email.lower() and not person.email_verified:
            raise LoginRefused(f"Your email address {raw[:64]!r} is not verified.")
        return raw.rsplit("@", 1)[0]

    def _domain_ok(self, person: Person) -> bool:
        if person.hosted_domain and person.hosted_domain.lower() in self.allowed_domains:
            return True
        return person.email_verified and _domain(person.email) in self.allowed_domains

    def _allowed(self, name: str, person: Person) -> bool:
        if name in self.admin_users or name in self.allowed_users:
            return True
        if self.oauth_allowed_groups & person.groups or self.allowed_orgs & person.orgs:
            return True
        if self.oauth_allowed_groups or self.allowed_orgs or self.allowed_users:
            return False
        return self.allow_all or bool(self.allowed_domains)

    async def _ensure_account(self, name: str) -> None:
        """As root, users run as their Unix account: make it, or say what the admin must do."""
        if os.geteuid() != 0:
            return
        try:
            await accounts.ensure_account(
                name,
                create=bool(self.cfg.get("users.create_system_users")),
                home_mode=int(self.cfg.get("users.home_mode")),
            )
        except SpawnError as e:
            raise LoginRefused(e.message) from None

    # --- auth state -----------------------------------------------------------------------
    async def save_auth_state(self, user_id: int, person: Person) -> None:
        if self.vault is None:
            return
        keep: dict[str, Any] = {
            k: person.tokens[k]
            for k in (
                "access_token",
                "refresh_token",
                "id_token",
                "expires_in",
                "scope",
                "token_type",
            )
            if k in person.tokens
        }
        keep["saved_at"] = time.time()
        blob = self.vault.encrypt(json.dumps(keep).encode())
        await self.store.set_auth_state(user_id, blob)

    async def load_auth_state(self, user_id: int) -> dict[str, Any] | None:
        blob = await self.store.get_auth_state(user_id)
        if self.vault is None or blob is None:
            return None
        from cryptography.fernet import InvalidToken

        try:
            data: dict[str, Any] = json.loads(self.vault.decrypt(blob))
        except InvalidToken:
            log.warning(
                "auth state of user %d cannot be decrypted (cookie secret changed?)", user_id
            )
            return None
        return data

    async def end_session_url(self, post_logout: str) -> str:
        """Where logout sends the browser when logout_redirect is on (empty: nowhere)."""
        if not self.logout_redirect:
            return ""
        try:
            ep = await self.client.endpoints()
        except HubError:
            return ""
        if not ep.end_session:
            return ""
        from urllib.parse import urlencode

        sep = "&" if "?" in ep.end_session else "?"
        return (
            ep.end_session
            + sep
            + urlencode(
                {"client_id": self.client.s.client_id, "post_logout_redirect_uri": post_logout}
            )
        )


def _vault(cfg: Config) -> Fernet:
    from cryptography.fernet import Fernet

    # A key of its own, derived from the cookie secret: nothing new to keep safe.
    key = S.load_or_create_key(Path(cfg.get("hub.cookie_secret_file")))
    raw = bytes.fromhex(S.derive(key, "auth_state", "fernet"))
    return Fernet(base64.urlsafe_b64encode(raw))


def _client_secret(o: dict[str, Any]) -> str:
    if o["client_secret"] or not o["client_secret_file"]:
        return str(o["client_secret"])
    path = Path(o["client_secret_file"])
    try:
        return path.read_text().strip()
    except OSError as e:
        raise StartupError(
            f"[auth.oauth] client_secret_file: cannot read {path}: {e.strerror}"
        ) from None


def _domain(email: str) -> str:
    return email.rsplit("@", 1)[1].lower() if "@" in email else ""


def _host_of(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname or url
