"""The access model from a request handler: who is asking, and the one way to ask."""

from __future__ import annotations

from aiohttp import web

from ..auth.identity import Identity
from ..context import identity, parts
from ..errors import Forbidden
from .model import Access, Principal


def principal_of(ident: Identity | None) -> Principal | None:
    """A session is all its user holds; a token at most its scopes (a user's token that
    asked for none: the "token" role's, by default "inherit"; a service's: all its own)."""
    if ident is None:
        return None
    tok = ident.token
    if ident.service is not None:
        return Principal(
            "service", ident.service, tuple(tok.scopes) if tok and tok.scopes else None
        )
    return Principal("user", ident.name, tuple(tok.scopes) if tok is not None else None)


def principal(request: web.Request) -> Principal | None:
    return principal_of(identity(request))


def caller(request: web.Request) -> Principal:
    """The principal, or Forbidden for an anonymous request (as JupyterHub's API: 403)."""
    p = principal(request)
    if p is None:
        raise Forbidden("Missing or invalid credentials: send 'Authorization: token <token>'.")
    return p


def access(request: web.Request) -> Access:
    return parts(request).access


def allows(request: web.Request, scope: str, **target: str) -> bool:
    return access(request).allows(principal(request), scope, **target)


def require(request: web.Request, scope: str, what: str = "", **target: str) -> Principal:
    """The caller, if they hold `scope` on the target; else Forbidden naming the scope."""
    p = caller(request)
    access(request).require(p, scope, what, **target)
    return p
