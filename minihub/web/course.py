"""Course material: /hub/user-redirect/… links that land on each user's own server
(nbgitpuller's git-pull links among them), the link builder and class folders on the admin
page."""

from __future__ import annotations

from aiohttp import web

from .admin import add_routes

routes = web.RouteTableDef()


def setup(app: web.Application, base_url: str) -> None:
    add_routes(app, base_url, list(routes))
