"""The announcement: `[hub] announcement` and its per-page variants, which an admin
overrides while the hub runs (hub setting "announcement"); shown as a banner on hub pages
and, through GET /hub/api/announcement, in the notebook app.

The text is plain text: escaped, with http(s) links made into links and line breaks kept,
so nothing an admin types (or the database holds) is ever markup.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from markupsafe import Markup, escape

from ..config import Config
from ..context import parts
from ..errors import BadRequest
from ..hubsettings import HubSettings

PAGES = ("login", "home", "spawn", "logout")  # as JupyterHub's announcement_<page>
FIELDS = ("all", *PAGES)  # the hub setting's keys; "all" is [hub] announcement
MAX_LENGTH = 2000
# What a page template is, for its announcement; any other page shows the general one.
PAGE_OF = {
    "login.html": "login",
    "home.html": "home",
    "spawn.html": "spawn",
    "spawn_pending.html": "spawn",
    "logout.html": "logout",
}
_LINK = re.compile(r"https?://[^\s<>\"']+[^\s<>\"'.,;:!?)\]]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _config_key(field: str) -> str:
    return "hub.announcement" if field == "all" else f"hub.announcement_{field}"


def current(cfg: Config, settings: HubSettings) -> dict[str, str]:
    """Every field's text now: an admin's value where one is stored ("" clears it), else
    the configuration's."""
    stored: dict[str, Any] = settings.get("announcement") or {}
    return {
        f: str(stored[f]) if isinstance(stored.get(f), str) else str(cfg.get(_config_key(f)))
        for f in FIELDS
    }


def for_page(cfg: Config, settings: HubSettings, template: str) -> str:
    """What a page shows: its own announcement if it has one, else the general one."""
    texts = current(cfg, settings)
    page = PAGE_OF.get(template)
    return (texts[page] if page else "") or texts["all"]


def overridden(settings: HubSettings) -> bool:
    return bool(settings.get("announcement"))


def clean(field: str, text: str) -> str:
    """An admin's text as stored: no control characters but line breaks, bounded."""
    text = _CONTROL.sub("", text.replace("\r\n", "\n")).strip()
    if len(text) > MAX_LENGTH:
        label = "announcement" if field == "all" else f"the {field} page's announcement"
        raise BadRequest(f"Make {label} shorter: at most {MAX_LENGTH} characters.")
    return text


def as_html(text: str) -> Markup:
    """Plain text as safe HTML: escaped, links clickable, line breaks kept."""
    out, at = [], 0
    for m in _LINK.finditer(text):
        out.append(escape(text[at : m.start()]))
        url = escape(m.group())
        out.append(Markup(f'<a href="{url}" rel="noopener noreferrer">{url}</a>'))
        at = m.end()
    out.append(escape(text[at:]))
    return Markup("").join(out).replace("\n", Markup("<br>"))


async def api_announcement(request: web.Request) -> web.Response:
    """GET /hub/api/announcement: the general announcement, for the notebook app's banner.
    No login needed (the login page shows it anyway); cached for a few seconds at most."""
    p = parts(request)
    return web.json_response(
        {
            "announcement": current(p.cfg, p.settings)["all"],
            "poll_seconds": int(p.cfg.get("hub.announcement_poll_seconds")),
        },
        headers={"Cache-Control": "public, max-age=5"},
    )
