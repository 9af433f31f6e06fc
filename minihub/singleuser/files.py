"""GET files/<path>: a user's file as raw bytes, streamed, never able to script the hub's origin.

`Content-Security-Policy: sandbox` makes a user's HTML render as an opaque origin.
"""

from __future__ import annotations

import os
from urllib.parse import quote

from aiohttp import web

from ..errors import NotFound
from .http import CONTENTS, run

MIME_OVERRIDES = {".ipynb": "application/x-ipynb+json"}


async def get_file(request: web.Request) -> web.StreamResponse:
    path = request.match_info["path"].strip("/")
    os_path = await run(_existing_file, request, path)
    name = os.path.basename(path)
    headers = {
        "Content-Security-Policy": "sandbox",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }
    mime = MIME_OVERRIDES.get(os.path.splitext(name)[1])
    if mime:
        headers["Content-Type"] = mime
    if request.query.get("download") in ("1", "true"):
        headers["Content-Disposition"] = f"attachment; filename*=utf-8''{quote(name)}"
    return web.FileResponse(os_path, headers=headers)


def _existing_file(request: web.Request, path: str) -> str:
    os_path = request.app[CONTENTS].os_path(path)
    if not os.path.isfile(os_path):
        raise NotFound(f"No such file: {path}")
    return os.path.realpath(os_path)


def setup(app: web.Application, base_url: str) -> None:
    app.router.add_get(base_url + "files/{path:.+}", get_file)
