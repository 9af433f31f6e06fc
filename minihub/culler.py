"""The built-in idle culler: stops servers idle past [culler] timeout or older than max_age.

Activity is what the proxy saw (HTTP, websocket frames) plus what the server itself reports
(kernel executions, API use); an open but silent browser tab is not activity.
"""

from __future__ import annotations

import asyncio
import logging
import time

from .access import Access
from .auth.identity import Identities
from .config import Config
from .metrics import Metrics
from .servers import Server, Servers
from .store import Store

log = logging.getLogger("minihub.culler")


class Culler:
    def __init__(
        self,
        cfg: Config,
        servers: Servers,
        store: Store,
        metrics: Metrics,
        access: Access,
        identities: Identities | None = None,
    ) -> None:
        c = cfg.section("culler")
        self.timeout, self.max_age = int(c["timeout"]), int(c["max_age"])
        self.every, self.cull_users = max(1, int(c["every"])), bool(c["cull_users"])
        self.servers, self.store, self.metrics = servers, store, metrics
        self.access = access
        self.identities = identities  # its cache forgets a culled user's sessions and tokens
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.timeout or self.max_age)

    def start(self) -> None:
        if self.enabled:
            self._task = asyncio.create_task(self._loop(), name="minihub-culler")
            log.info(
                "culling servers idle for %ss or older than %ss, every %ss",
                self.timeout or "∞",
                self.max_age or "∞",
                self.every,
            )

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.cull_once()
            except Exception:
                log.exception("culling failed")

    async def cull_once(self) -> list[str]:
        culled = []
        for srv in self.servers.all():
            if srv.status != "running":
                continue
            await self.servers.refresh_activity(srv)
            reason = self._reason(srv, time.time())
            if reason:
                await self._cull(srv, reason)
                culled.append(srv.label)
        return culled

    def _reason(self, srv: Server, now: float) -> str:
        idle = now - (srv.last_activity or srv.started)
        if self.timeout and idle > self.timeout:
            return f"idle for {int(idle)}s (timeout {self.timeout}s)"
        if self.max_age and now - srv.started > self.max_age:
            return f"running for {int(now - srv.started)}s (max_age {self.max_age}s)"
        return ""

    async def _cull(self, srv: Server, reason: str) -> None:
        log.info("culling server %s: %s", srv.label, reason)
        self.metrics.culls.inc()  # before the stop: a client sees the server gone only after this
        await self.servers.stop(srv.user_id, srv.name)
        if self.cull_users:
            user = await self.store.get_user_by_id(srv.user_id)
            active = any(s.status != "stopped" for s in self.servers.of_user(srv.user_id).values())
            if user is not None and not self.access.is_admin(user.name) and not active:
                await self.servers.forget_user(user.id)
                await self.store.delete_user(user.id)
                self.access.forgotten(user.name)  # no group, role or share left for the name
                if self.identities is not None:
                    self.identities.invalidate()
                log.info("culled user %s", user.name)
