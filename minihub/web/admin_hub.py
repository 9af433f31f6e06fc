"""The hub's own state on the admin page: the announcement, set and cleared without a
restart, and sign-up requests waiting for approval."""

from __future__ import annotations

from aiohttp import web

from .admin import add_routes

routes = web.RouteTableDef()


def setup(app: web.Application, base_url: str) -> None:
    add_routes(app, base_url, list(routes))
