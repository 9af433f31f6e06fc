"""HTML pages of the per-user server: file browser, notebook and text editors, terminal.

Each page is a small shell; the bundled app in web/static/nb/ fills it from the REST API.
"""

from __future__ import annotations

import json
import posixpath
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

WEB = Path(__file__).resolve().parent.parent / "web"
STATIC = WEB / "static" / "nb"
# Bundle names carry a content hash, so a browser may keep them for good.
IMMUTABLE = "public, max-age=31536000, immutable"
# Notebook outputs run in srcdoc frames, which inherit this policy: it must not forbid
# inline script there, so it only limits what cannot be needed.
PAGE_CSP = "frame-ancestors 'self'; object-src 'none'; base-uri 'self'; form-action 'self'"

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(WEB / "templates")),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


@lru_cache(maxsize=1)
def _manifest() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((STATIC / "manifest.json").read_text())
    return data


def _hub_url(base_url: str) -> str:
    prefix, sep, _ = base_url.rpartition("/user/")
    return (prefix if sep else "") + "/hub/"


def _clean(path: str) -> str:
    return posixpath.normpath("/" + path).lstrip("/") if path.strip("/") else ""


class Pages:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def render(
        self, template: str, entry: str, path: str, title: str, **extra: str
    ) -> web.Response:
        try:
            assets = _manifest()[entry]
        except (OSError, ValueError, KeyError):
            return web.Response(
                status=503,
                text="The notebook app is not built: run "
                "scripts/build-frontend, then reinstall minihub.\n",
            )
        html = _env.get_template(template).render(
            base_url=self.base_url,
            static_url=self.base_url + "static/nb/",
            assets=assets,
            path=path,
            title=title,
            hub_url=_hub_url(self.base_url),
            **extra,
        )
        return web.Response(
            text=html,
            content_type="text/html",
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": PAGE_CSP,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "same-origin",
            },
        )

    async def tree(self, request: web.Request) -> web.StreamResponse:
        path = _clean(request.match_info.get("path", ""))
        return self.render("nb_tree.html", "tree", path, posixpath.basename(path) or "Files")

    async def notebook(self, request: web.Request) -> web.StreamResponse:
        path = _clean(request.match_info["path"])
        return self.render(
            "nb_notebook.html", "notebook", path, posixpath.basename(path).removesuffix(".ipynb")
        )

    async def edit(self, request: web.Request) -> web.StreamResponse:
        path = _clean(request.match_info["path"])
        return self.render("nb_edit.html", "edit", path, posixpath.basename(path))

    async def terminal(self, request: web.Request) -> web.StreamResponse:
        """The page of one terminal; it attaches to terminals/websocket/<name> itself."""
        name = request.match_info["name"]
        return self.render("nb_terminal.html", "terminal", "", f"Terminal {name}", terminal=name)

    async def home(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(self.base_url + "tree/")

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["asset"]
        target = (STATIC / name).resolve()
        if not target.is_relative_to(STATIC.resolve()) or not target.is_file():
            raise web.HTTPNotFound(
                text=json.dumps({"message": "No such file", "reason": None}),
                content_type="application/json",
            )
        cache = "no-cache" if name == "manifest.json" else IMMUTABLE
        return web.FileResponse(
            target, headers={"Cache-Control": cache, "X-Content-Type-Options": "nosniff"}
        )


def setup(app: web.Application, base_url: str) -> None:
    """Add the page routes under base_url (which ends with '/')."""
    pages = Pages(base_url)
    r = app.router
    r.add_get(base_url, pages.home)
    if base_url.rstrip("/"):
        r.add_get(base_url.rstrip("/"), pages.home)
    r.add_get(base_url + "tree", pages.tree)
    r.add_get(base_url + "tree/{path:.*}", pages.tree)
    r.add_get(base_url + "notebooks/{path:.+}", pages.notebook)
    r.add_get(base_url + "edit/{path:.+}", pages.edit)
    r.add_get(base_url + "terminals/{name}", pages.terminal)
    r.add_get(base_url + "static/nb/{asset:.+}", pages.static)
