"""Who a request is: a session cookie or an API token, cached briefly, plus CSRF checks.

The cookie holds a random session id; SQLite holds its SHA-256. API tokens come in an
`Authorization: token T` or `Bearer T` header, never in a URL.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from ..errors import Forbidden
from ..store import Store, Token, User
from . import secrets as S

SESSION_COOKIE = "minihub-session"
XSRF_COOKIE = "_xsrf"
HUB_COOKIES = (SESSION_COOKIE, XSRF_COOKIE)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CACHE_SECONDS = 5.0


@dataclass
class Identity:
    """A user (by session or token) or a service (by its token): `user` is None for one."""

    user: User | None
    via: str  # "cookie" or "token"
    session_hash: str | None = None
    token: Token | None = None
    service: str | None = None

    @property
    def name(self) -> str:
        return self.user.name if self.user else str(self.service)


class Identities:
    """Resolves requests to identities; a short cache keeps the proxy path off SQLite."""

    def __init__(self, store: Store, key: bytes) -> None:
        self.store = store
        self.key = key
        self._cache: dict[str, tuple[float, Identity | None]] = {}
        self._listeners: list[Callable[[], None]] = []

    def on_invalidate(self, fn: Callable[[], None]) -> None:
        """Call `fn` whenever a credential may have stopped being good (see invalidate)."""
        self._listeners.append(fn)

    def invalidate(self) -> None:
        """A session or token may be gone or changed (a logout, a token's deletion, a
        password change, a user's removal): forget what was resolved, and tell the listeners
        (the proxy asks each open websocket's credential again)."""
        self._cache.clear()
        for fn in list(self._listeners):
            fn()

    async def resolve(self, request: web.Request, touch: bool = True) -> Identity | None:
        auth = request.headers.get("Authorization", "")
        if auth:
            return await self._from_token(auth, touch)
        sid = request.cookies.get(SESSION_COOKIE)
        return await self._from_session(sid) if sid else None

    async def still_good(self, ident: Identity, request: web.Request) -> bool:
        """Does `request`'s credential still resolve to `ident` (the same user or service,
        by the same session or token)? Asked of an open websocket after invalidate."""
        again = await self.resolve(request, touch=False)
        return (
            again is not None
            and (again.user.id if again.user else None) == (ident.user.id if ident.user else None)
            and again.service == ident.service
            and again.session_hash == ident.session_hash
            and (again.token.id if again.token else None)
            == (ident.token.id if ident.token else None)
        )

    async def _from_token(self, header: str, touch: bool = True) -> Identity | None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() not in ("token", "bearer") or not value.strip():
            return None
        h = S.hash_token(value.strip())
        hit, cached = self._cached("t:" + h)
        if hit:
            return cached
        found = await self.store.token_owner(h)
        ident = Identity(found[0], "token", token=found[1]) if found else None
        if ident is None:
            svc = await self.store.service_token(h)
            ident = Identity(None, "token", token=svc[1], service=svc[0]) if svc else None
        if touch and ident is not None and ident.token is not None:
            await self.store.touch_token(ident.token.id)
        return self._remember("t:" + h, ident)

    async def _from_session(self, sid: str) -> Identity | None:
        h = S.hash_token(sid)
        hit, cached = self._cached("s:" + h)
        if hit:
            return cached
        user = await self.store.session_user(h)
        return self._remember("s:" + h, Identity(user, "cookie", session_hash=h) if user else None)

    def _cached(self, key: str) -> tuple[bool, Identity | None]:
        entry = self._cache.get(key)
        if entry and entry[0] > time.monotonic():
            return True, entry[1]
        return False, None

    def _remember(self, key: str, ident: Identity | None) -> Identity | None:
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (time.monotonic() + CACHE_SECONDS, ident)
        return ident

    def xsrf_for(self, ident: Identity | None) -> str:
        if ident is None or ident.session_hash is None:
            return ""
        return S.xsrf_token(self.key, ident.session_hash)

    async def check_xsrf(
        self, request: web.Request, ident: Identity | None, form: bool = True
    ) -> None:
        """Refuse a cookie-authenticated state change without the session's XSRF token.

        `form=False` (proxied requests): only the header counts, so the body is never read
        here and streams on to the user server untouched."""
        if request.method in SAFE_METHODS or ident is None or ident.via != "cookie":
            return
        given = request.headers.get("X-XSRFToken", "")
        if (
            not given
            and form
            and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data")
        ):
            given = str((await request.post()).get("_xsrf", ""))
        if not given or not S.equal(given, self.xsrf_for(ident)):
            raise Forbidden("'_xsrf' argument missing or wrong: reload the page and try again.")
