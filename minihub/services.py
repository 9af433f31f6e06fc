"""Hub services from [[services]] in minihub.toml, as JupyterHub's c.JupyterHub.services.

A service is an identity with a token and scopes; one with a `command` is started by the
hub with JUPYTERHUB_API_TOKEN and JUPYTERHUB_API_URL, restarted when it exits, stopped last.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from .auth import secrets as S
from .config import Config
from .context import PARTS
from .procfs import signal_group
from .protocols import hub_api_url
from .service_spec import Service, validate
from .spawner.local import open_log
from .store import Store

log = logging.getLogger("minihub.services")
RESTART_MIN, RESTART_MAX = 1.0, 30.0
STOP_TIMEOUT = 5.0
# What a service inherits from the hub's environment (JupyterHub's Spawner.env_keep).
ENV_KEEP = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "VIRTUAL_ENV", "HOME", "TZ")


async def register(store: Store, services: list[Service]) -> dict[str, str]:
    """Make each service an identity with exactly one token; forget services no longer
    configured. Returns the tokens to hand to commands (generated anew at each start)."""
    await store.forget_services_except([s.name for s in services])
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
    return tokens


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
    env = {k: os.environ[k] for k in ENV_KEEP if k in os.environ}
    env.update(
        {
            "JUPYTERHUB_SERVICE_NAME": svc.name,
            "JUPYTERHUB_API_TOKEN": token,
            "JUPYTERHUB_API_URL": hub_api_url(cfg),
            "JUPYTERHUB_BASE_URL": cfg.base_url,
            "JUPYTERHUB_CLIENT_ID": f"service-{svc.name}",
            "JUPYTERHUB_OAUTH_SCOPES": "[]",
            "JUPYTERHUB_OAUTH_ACCESS_SCOPES": "[]",
        }
    )
    env.update(svc.environment)
    return env


SUPERVISORS: web.AppKey[list[Supervisor]] = web.AppKey("services", list)


def services_ctx(cfg: Config) -> Callable[[web.Application], AsyncIterator[None]]:
    """cleanup_ctx: register services, run their commands; stop them on the way out."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        services = validate(cfg.services, str(cfg.path or "config"))
        tokens = await register(app[PARTS].store, services)
        logs = cfg.data_dir / "logs"
        sups = [
            Supervisor(s, service_env(cfg, s, tokens[s.name]), logs / f"service-{s.name}.log")
            for s in services
            if s.command
        ]
        app[SUPERVISORS] = sups
        for sup in sups:
            sup.start()
        try:
            yield
        finally:
            await asyncio.gather(*(s.stop() for s in sups), return_exceptions=True)

    return ctx
