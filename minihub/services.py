"""Hub services from [[services]] in minihub.toml, as JupyterHub's c.JupyterHub.services.

A service is an identity with a token and scopes; one with a `command` is started by the
hub with JupyterHub's JUPYTERHUB_* environment, restarted when it exits, stopped last. One
with a `url` is proxied at /services/<name>/ (minihub.service_proxy) and gets an OAuth client
`service-<name>` whose secret is its token, so jupyterhub.services.auth.HubOAuth logs users in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from .access import Access, Principal
from .auth import secrets as S
from .config import Config
from .context import PARTS
from .procfs import signal_group
from .protocols import hub_api_url
from .service_spec import CLIENT_PREFIX, Service, validate
from .spawner.local import open_log
from .store import Store

log = logging.getLogger("minihub.services")
RESTART_MIN, RESTART_MAX = 1.0, 30.0
STOP_TIMEOUT = 5.0
# What a service inherits from the hub's environment (JupyterHub's Spawner.env_keep).
ENV_KEEP = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "VIRTUAL_ENV", "HOME", "TZ")


async def register(store: Store, services: list[Service], base_url: str) -> dict[str, str]:
    """Make each service an identity with exactly one token, and its OAuth client; forget
    services (and clients) no longer configured. Returns the tokens to hand to commands
    (generated anew at each start)."""
    await store.forget_services_except([s.name for s in services])
    await store.forget_service_clients_except(
        CLIENT_PREFIX, [s.oauth_client_id for s in services if s.has_oauth]
    )
    tokens = {}
    for svc in services:
        sid = await store.sync_service(svc.name, svc.scopes)
        token = svc.api_token or S.new_token()
        await store.set_service_token(
            sid,
            S.hash_token(token),
            token[: S.PREFIX_LEN],
            "config" if svc.api_token else "generated",
        )
        tokens[svc.name] = token
        if svc.has_oauth:
            await store.save_oauth_client(
                svc.oauth_client_id,
                S.hash_token(token),
                svc.redirect_uri(base_url),
                f"JupyterHub service {svc.name}",
                None,
                client_scopes(svc),
            )
    return tokens


def client_scopes(svc: Service) -> list[str]:
    """What a token issued to the service's OAuth client may carry, and carries when the
    client asks for nothing: never empty (an empty list would mean all the user's rights)."""
    return sorted({svc.access_scope(), "identify", *svc.oauth_client_allowed_scopes})


@dataclass
class Registry:
    """The configured services and the supervisors of those the hub runs, for the proxy,
    the REST API, the home page and the OAuth provider."""

    services: dict[str, Service] = field(default_factory=dict)
    supervisors: dict[str, Supervisor] = field(default_factory=dict)

    def get(self, name: str) -> Service | None:
        return self.services.get(name)

    def by_client(self, client_id: str) -> Service | None:
        return next(
            (s for s in self.services.values() if s.has_oauth and s.oauth_client_id == client_id),
            None,
        )

    def displayed(self, access: Access, who: Principal | None) -> list[Service]:
        """What the home page lists: proxied services with `display` that `who` may access."""
        return [
            s
            for _, s in sorted(self.services.items())
            if s.url and s.display and access.allows(who, "access:services", service=s.name)
        ]

    def pid(self, name: str) -> int:
        """The process id of the service's command while it runs; 0 if not the hub's."""
        sup = self.supervisors.get(name)
        proc = sup.proc if sup else None
        return proc.pid if proc is not None and proc.returncode is None else 0


# --- supervision -------------------------------------------------------------------------------


class Supervisor:
    """Keeps one service's command running: restart with backoff, SIGTERM then SIGKILL."""

    def __init__(self, svc: Service, env: dict[str, str], log_path: Path) -> None:
        self.svc, self.env, self.log_path = svc, env, log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"service-{self.svc.name}")

    async def _run(self) -> None:
        delay = RESTART_MIN
        while True:
            loop = asyncio.get_running_loop()
            began = loop.time()
            status = await self._run_once()
            if loop.time() - began > RESTART_MAX:
                delay = RESTART_MIN  # it ran a good while: not a crash loop
            log.warning("service %s exited (%s); restarting in %.0fs", self.svc.name, status, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX)

    async def _run_once(self) -> int | str:
        fd = await asyncio.to_thread(open_log, self.log_path, os.geteuid(), os.getegid())
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.svc.command,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                cwd=self.svc.cwd or None,
                start_new_session=True,
            )
        except OSError as e:
            return f"cannot start {self.svc.command[0]}: {e.strerror or e}"
        finally:
            os.close(fd)
        self.starts += 1
        log.info("started service %s (pid %d)", self.svc.name, self.proc.pid)
        return await self.proc.wait()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
        log.info("stopped service %s", self.svc.name)


def service_env(cfg: Config, svc: Service, token: str) -> dict[str, str]:
    """JupyterHub's environment for a managed service (services/service.py `start`)."""
    env = {k: os.environ[k] for k in ENV_KEEP if k in os.environ}
    access = json.dumps([svc.access_scope()])
    env.update(
        {
            "JUPYTERHUB_SERVICE_NAME": svc.name,
            "JUPYTERHUB_API_TOKEN": token,
            "JUPYTERHUB_API_URL": hub_api_url(cfg),
            "JUPYTERHUB_BASE_URL": cfg.base_url,
            "JUPYTERHUB_HOST": str(cfg.get("hub.public_url")).rstrip("/"),
            "JUPYTERHUB_CLIENT_ID": svc.oauth_client_id,
            "JUPYTERHUB_OAUTH_CALLBACK_URL": svc.redirect_uri(cfg.base_url),
            "JUPYTERHUB_OAUTH_SCOPES": access,
            "JUPYTERHUB_OAUTH_ACCESS_SCOPES": access,
            "JUPYTERHUB_OAUTH_CLIENT_ALLOWED_SCOPES": json.dumps(svc.oauth_client_allowed_scopes),
            # HubOAuth's cookies at the service's prefix, not "__Host-" ones at / (as servers)
            "JUPYTERHUB_COOKIE_HOST_PREFIX_ENABLED": "0",
        }
    )
    if svc.url:
        env["JUPYTERHUB_SERVICE_URL"] = svc.url
        env["JUPYTERHUB_SERVICE_PREFIX"] = svc.prefix(cfg.base_url)
    env.update(svc.environment)
    return env


SUPERVISORS: web.AppKey[list[Supervisor]] = web.AppKey("services", list)
SERVICES: web.AppKey[Registry] = web.AppKey("service_registry", Registry)


def registry(request: web.Request) -> Registry:
    return request.config_dict[SERVICES]


def services_ctx(cfg: Config) -> Callable[[web.Application], AsyncIterator[None]]:
    """cleanup_ctx: register services, run their commands; stop them on the way out."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        p = app[PARTS]
        services = validate(cfg.services, str(cfg.path or "config"), p.access.custom)
        tokens = await register(p.store, services, cfg.base_url)
        logs = cfg.data_dir / "logs"
        sups = [
            Supervisor(s, service_env(cfg, s, tokens[s.name]), logs / f"service-{s.name}.log")
            for s in services
            if s.command
        ]
        app[SUPERVISORS] = sups
        app[SERVICES] = Registry({s.name: s for s in services}, {sup.svc.name: sup for sup in sups})
        for sup in sups:
            sup.start()
        try:
            yield
        finally:
            await asyncio.gather(*(s.stop() for s in sups), return_exceptions=True)

    return ctx
