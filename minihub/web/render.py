"""Jinja2 templates for the hub's pages, autoescaped, with the values every page needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from .. import __version__
from ..access.http import allows
from ..context import BASE_URL, PAGE_CONTEXT, PARTS
from . import announcement

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(
    request: web.Request, template: str, ctx: dict[str, Any] | None = None, status: int = 200
) -> web.Response:
    base = dict(request.get(PAGE_CONTEXT, {}))
    base.setdefault("base_url", request.config_dict[BASE_URL])
    base["version"] = __version__
    # what the page may offer (asked here, not for every proxied request); each action is
    # still decided by minihub.access when it is made
    base["admin_ui"] = allows(request, "admin-ui")
    p = request.config_dict[PARTS]
    base["announcement"] = announcement.for_page(p.cfg, p.settings, template)
    base["pending_signups"] = _pending_signups(request) if base["admin_ui"] else 0
    base.update(ctx or {})
    html = _env.get_template(template).render(**base)
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def _pending_signups(request: web.Request) -> int:
    """Sign-up requests awaiting approval, for the Admin link's badge: only for those who
    may approve them (admin:users)."""
    signups = getattr(request.config_dict[PARTS].authenticator, "signups", None)
    if signups is None or not allows(request, "admin:users"):
        return 0
    return int(signups.pending)


def _ts(value: float | None) -> str:
    if not value:
        return "—"
    import datetime as dt

    return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def add_filters() -> None:
    _env.filters["ts"] = _ts
    _env.filters["announcement"] = announcement.as_html
