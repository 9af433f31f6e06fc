"""Wires the hub's parts into one aiohttp application: middlewares, routes, lifetimes.

Behaviour lives in the parts (auth/, servers, proxy, api, web/); this module only connects them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from . import api, oauth2, protocols, services
from .access import Access, roles
from .access.http import allows
from .auth.identity import Identities
from .auth.secrets import load_or_create_key
from .auth.throttle import Throttle
from .config import Config
from .context import BASE_URL, PARTS, Parts, identity, parts
from .culler import Culler
from .errors import Forbidden
from .hubsettings import HubSettings
from .metrics import Metrics
from .middlewares import MIDDLEWARES
from .plugins import make_authenticator, make_spawner
from .proxy import Proxy
from .servers import Servers
from .service_proxy import service_route
from .service_spec import validate as validate_services
from .spawner.base import Spawner
from .store import Store
from .user_proxy import user_route
from .web import admin, admin_hub, course, pages, sharing
from .web.errors import quiet_client_protocol_errors
from .web.render import add_filters

log = logging.getLogger("minihub")
STATIC = Path(__file__).parent / "web" / "static"


def parts_ctx(cfg: Config, spawner: Spawner | None = None) -> object:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        data = cfg.data_dir
        data.mkdir(mode=0o711, parents=True, exist_ok=True)
        # Before the store opens: a spawner that cannot be made (a bad kubeconfig) stops
        # start-up with its message, and no database thread is left to keep the process up.
        sp = spawner or make_spawner(cfg)
        store = await Store.open(data / "minihub.sqlite")
        key = load_or_create_key(Path(cfg.get("hub.cookie_secret_file")))
        metrics = Metrics()
        servers = Servers(
            cfg,
            store,
            key,
            sp,
            protocols.choose(cfg, store),
            on_spawned=metrics.spawn_duration.observe,
        )
        proxy = Proxy(server_ca_file=str(cfg.get("hub.server_ca_file")))
        try:
            authenticator = make_authenticator(cfg, store)
            access = await make_access(cfg, store)
            settings = HubSettings(store)
            await settings.load()
        except BaseException:
            await store.close()  # else its thread keeps the failed process alive
            raise
        sp.groups_of = access.groups_of  # profiles and limits by hub group
        servers.protocol.server_role = list(access.roles["server"].scopes)  # [[roles]]
        sp.hub_shared_dirs = lambda: list(settings.get("shared_dirs"))  # class folders
        p = Parts(
            cfg,
            store,
            key,
            Identities(store, key),
            authenticator,
            Throttle(cfg),
            servers,
            proxy,
            metrics,
            access,
            settings,
        )
        _gauges(p)
        access.on_change(proxy.recheck_websockets)
        p.identities.on_invalidate(proxy.recheck_credentials)
        app[PARTS] = p
        await servers.open()
        culler = Culler(cfg, servers, store, metrics, access, p.identities)
        culler.start()
        access.start()
        try:
            yield
        finally:
            await access.stop()
            await culler.stop()
            await servers.close(stop_all=bool(cfg.get("hub.cleanup_servers")))
            await proxy.close()
            await store.close()

    return ctx


async def make_access(cfg: Config, store: Store) -> Access:
    """The access model from [[roles]], [[groups]], [custom_scopes] and [[services]]."""
    where = str(cfg.path or "config")
    custom = roles.custom_scopes(cfg.custom_scopes, where)
    access = Access(
        store,
        roles.validate_roles(cfg.roles, where, custom),
        roles.validate_groups(cfg.groups, where),
        custom,
        bool(cfg.get("hub.admin_access")),
        {s.name: s.scopes for s in validate_services(cfg.services, where, custom)},
    )
    await access.load()
    return access


def _gauges(p: Parts) -> None:
    m = p.metrics
    m.gauge("minihub_users", "Users known to the hub.", lambda: m.users)
    m.gauge("minihub_active_servers", "Running user servers.", lambda: p.servers.count("running"))
    m.gauge("minihub_pending_servers", "User servers starting.", lambda: p.servers.count("pending"))
    m.gauge("minihub_websocket_connections", "Open proxied websockets.", lambda: m.websockets)


async def _close_websockets(app: web.Application) -> None:
    await app[PARTS].proxy.close_websockets()


async def root(request: web.Request) -> web.StreamResponse:
    base = parts(request).cfg.base_url
    raise web.HTTPFound(f"{base}hub/" if identity(request) else f"{base}hub/login")


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    if not allows(request, "read:metrics"):
        raise Forbidden("Metrics need a token with the scope read:metrics (admins have it).")
    p = parts(request)
    p.metrics.users = await p.store.count_users()
    return web.Response(
        text=parts(request).metrics.render(),
        content_type="text/plain",
        charset="utf-8",
        headers={"Cache-Control": "no-store"},
    )


def make_app(cfg: Config, spawner: Spawner | None = None) -> web.Application:
    """`spawner`: an instance to use instead of the configured one (tests: FakeSpawner)."""
    add_filters()
    quiet_client_protocol_errors()
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=4 * 1024 * 1024)
    base = cfg.base_url
    app[BASE_URL] = base
    app.cleanup_ctx.append(parts_ctx(cfg, spawner))  # type: ignore[arg-type]
    app.cleanup_ctx.append(services.services_ctx(cfg))
    app.on_shutdown.append(_close_websockets)
    app.router.add_get(base, root)
    if base != "/":
        app.router.add_get(base.rstrip("/"), root)
    app.router.add_get(base + "hub", root)
    app.router.add_get(base + "hub/health", health)
    app.router.add_get(base + "hub/metrics", metrics)
    app.router.add_static(base + "hub/static/", STATIC, append_version=False)
    api.setup(app, base)
    pages.setup(app, base)
    sharing.setup(app, base)
    if cfg.get("auth.authenticator") == "oauth":
        from .auth.oauth_routes import setup as oauth_setup

        oauth_setup(app, base)
    oauth2.setup(app, base)
    admin.setup(app, base)
    admin_hub.setup(app, base)
    course.setup(app, base)
    app.router.add_route("*", base + "services/{name}", service_route)
    app.router.add_route("*", base + "services/{name}/{tail:.*}", service_route)
    app.router.add_route("*", base + "user/{name}", user_route)
    app.router.add_route("*", base + "user/{name}/{tail:.*}", user_route)
    return app
