"""The life of each server as the hub sees it: start, readiness, stop, poll, re-adopt.

A server is one of a user's servers, keyed by (user id, server name); "" is the default
server. A Spawner (minihub.spawner.base) makes it run somewhere and returns where it listens
plus its own state; this module owns everything else: the secret and proof, limits, the
readiness probe, progress, activity, and the servers table in SQLite, so a restarted hub
re-adopts exactly the servers that were up and stops the ones it was still starting.

Every request to a server carries its secret, and every answer must carry its proof (see
minihub.proxy.Upstream). Both are HMACs of the cookie secret and a per-start nonce, so
SQLite stores only the nonce and the secret's hash, and a restarted hub derives them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets as pysecrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from . import trust
from .auth import secrets as S
from .config import Config
from .errors import BadRequest, PortTaken, SpawnError, TooManyRequests
from .isotime import parse_iso
from .protocols import ServerProtocol
from .proxy import Upstream
from .singleuser import SECRET_HEADER
from .spawner.base import UNKNOWN_EXIT, Endpoint, Launch, Spawner, State
from .store import ServerRow, Store, User

log = logging.getLogger("minihub.servers")
PROBE_INTERVAL = 0.05
# A server that takes seconds to start (jupyterhub-singleuser in a pod, fifty at once on two
# CPUs) is probed less often as it goes: 20 probes a second each cost the hub a second of CPU
# per spawn (scripts/bench/kube.py); a server ready at once is still seen within 50 ms.
PROBE_BACKOFF, PROBE_MAX_INTERVAL = 1.5, 0.5
POLL_EVERY = 5.0
POLL_SLICE = 16  # servers polled between turns of the loop
SLOW_SPAWN: float | None = None  # a test's own [spawner] slow_spawn_timeout, if it sets one
_DRAIN_TURNS = 3  # loop turns the progress follower gets after start returns
PORT_TAKEN_RETRIES = 2  # starts again on another port, for a server that binds its own
# What a server that exits because its port is taken says: the system's words (EADDRINUSE)
# and Jupyter Server's (port_retries = 0, as jupyterhub-singleuser runs it).
_PORT_TAKEN = re.compile(
    r"Address already in use|could not be started because port \d+ is not available"
)

# JupyterHub 6's server names (its "safe slug": a lowercase letter first, a letter or digit
# last, no "--"); and names the default server's own pages use, which a named server would
# hide (/user/alice/tree/ must stay alice's file browser).
_SERVER_NAME = re.compile(r"^(?=.{1,30}$)[a-z](?:-?[a-z0-9])*$")
RESERVED_NAMES = frozenset(
    {
        "api",
        "tree",
        "notebooks",
        "edit",
        "files",
        "view",
        "lab",
        "static",
        "terminals",
        "kernelspecs",
        "nbconvert",
        "doc",
        "oauth_callback",
        "logout",
        "login",
        "custom",
        "nbextensions",
    }
)


def check_server_name(name: str) -> str:
    if not _SERVER_NAME.match(name):
        raise BadRequest(
            f"Invalid server name {name[:40]!r}: use 1 to 30 lowercase letters, "
            "digits and single '-', starting with a letter and not ending in '-'."
        )
    if name in RESERVED_NAMES:
        raise BadRequest(f"{name!r} cannot name a server: the default server's pages use it.")
    return name


@dataclass
class Server:
    """One server of one user, as this hub process knows it."""

    user_id: int
    user: str  # the owner's name
    name: str = ""  # "" for the default server
    status: str = "stopped"  # stopped | pending | running | stopping
    endpoint: Endpoint | None = None
    state: State = field(default_factory=dict)
    nonce: str = ""
    secret: str = ""
    proof: str = ""  # what the server answers back; "" for jupyterhub-singleuser
    started: float = 0.0
    last_activity: float = 0.0
    user_options: dict[str, Any] = field(default_factory=dict)
    progress: list[str] = field(default_factory=list)
    error: str = ""
    error_status: int = 502  # a refusal's own status (403 for root), kept for the answer
    log_tail: str = ""
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    cleanup: asyncio.Task[None] | None = None  # after a run that died, until it is done
    spawn_seconds: float = 0.0
    flushed_activity: float = 0.0  # the last_activity last written to the database

    @property
    def key(self) -> tuple[int, str]:
        return self.user_id, self.name

    @property
    def label(self) -> str:
        """For log lines and task names: alice, or alice/work."""
        return f"{self.user}/{self.name}" if self.name else self.user

    @property
    def pending(self) -> str | None:
        return {"pending": "spawn", "stopping": "stop"}.get(self.status)

    @property
    def upstream(self) -> Upstream | None:
        if self.status != "running" or self.endpoint is None:
            return None
        e = self.endpoint
        return Upstream(e.host, e.port, self.secret, self.proof, e.scheme)


class Servers:
    def __init__(
        self,
        cfg: Config,
        store: Store,
        key: bytes,
        spawner: Spawner,
        protocol: ServerProtocol,
        on_spawned: Callable[[float], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.sp = cfg.section("spawner")
        self.store = store
        self.key = key
        self.spawner = spawner
        self.protocol = protocol
        self.on_spawned = on_spawned
        self._servers: dict[tuple[int, str], Server] = {}
        self._http: aiohttp.ClientSession | None = None
        self._poller: asyncio.Task[None] | None = None
        self._checks: set[asyncio.Task[bool]] = set()
        spawner.on_exit = self._exited

    # --- lifetime ---------------------------------------------------------------------
    async def open(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        await self.adopt()
        self._poller = asyncio.create_task(self._poll_loop(), name="minihub-poll-servers")

    async def close(self, stop_all: bool = False) -> None:
        if self._poller:
            self._poller.cancel()
        self.spawner.on_exit = None
        await asyncio.gather(*self._checks, return_exceptions=True)
        cleanups = [s.cleanup for s in self._servers.values() if s.cleanup]
        await asyncio.gather(*cleanups, return_exceptions=True)  # a cancelled check's too
        tasks = [s.task for s in self._servers.values() if s.task and not s.task.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if stop_all:
            await asyncio.gather(
                *(self.stop(s.user_id, s.name) for s in self.all() if s.status == "running"),
                return_exceptions=True,
            )
        else:
            await self.flush_activity()
        if self._http:
            await self._http.close()
        await self.spawner.close()

    # --- queries ----------------------------------------------------------------------
    def get(self, user: User, name: str = "") -> Server:
        srv = self._servers.get((user.id, name))
        if srv is None:
            srv = self._servers[(user.id, name)] = Server(user.id, user.name, name)
        srv.user = user.name
        return srv

    def peek(self, user_id: int, name: str = "") -> Server | None:
        return self._servers.get((user_id, name))

    def of_user(self, user_id: int) -> dict[str, Server]:
        """The user's servers by name: the default one while it is not stopped, and every
        named one (stopped named servers stay until removed, as in JupyterHub)."""
        return {
            n: s
            for (uid, n), s in self._servers.items()
            if uid == user_id and (n or s.status != "stopped")
        }

    def count(self, status: str) -> int:
        return sum(1 for s in self._servers.values() if s.status == status)

    def all(self) -> list[Server]:
        return list(self._servers.values())

    def touch(self, user_id: int, name: str = "") -> None:
        srv = self._servers.get((user_id, name))
        if srv is not None:
            srv.last_activity = time.time()

    def prefix(self, srv: Server) -> str:
        return f"{self.cfg.base_url}user/{srv.user}/" + (f"{srv.name}/" if srv.name else "")

    # --- start ------------------------------------------------------------------------
    async def spawn(
        self,
        user: User,
        name: str = "",
        wait: float | None = None,
        user_options: dict[str, Any] | None = None,
    ) -> Server:
        """Start this server of `user` (if not already up); return after `wait` s at most
        (default [spawner] slow_spawn_timeout)."""
        if wait is None:
            wait = float(self.sp["slow_spawn_timeout"] if SLOW_SPAWN is None else SLOW_SPAWN)
        self.check_name(user, name)
        srv = self.get(user, name)
        if srv.status == "stopped":
            self._check_limits()
            self.spawner.check_options(user.name, dict(user_options or {}))
            srv.status, srv.error, srv.log_tail = "pending", "", ""
            srv.user_options = dict(user_options or {})
            srv.progress = ["Server requested"]
            srv.ready = asyncio.Event()
            srv.task = asyncio.create_task(self._start(user, srv), name=f"spawn-{srv.label}")
        if srv.status == "pending" and wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(srv.ready.wait()), wait)
        if srv.status == "stopped" and srv.error:
            raise SpawnError(srv.error, srv.log_tail, srv.error_status)
        return srv

    def check_name(self, user: User, name: str) -> None:
        """BadRequest when `user` may not have a server of this name (named servers off,
        a bad name, over the limit); the default server "" always passes."""
        if name:
            self._check_named(user, name)

    def _check_named(self, user: User, name: str) -> None:
        if not self.cfg.get("hub.allow_named_servers"):
            raise BadRequest(
                "Named servers are not enabled on this hub ([hub] allow_named_servers)."
            )
        check_server_name(name)
        limit = int(self.cfg.get("hub.named_server_limit_per_user"))
        named = [n for n in self.of_user(user.id) if n]
        if limit and name not in named and len(named) >= limit:
            raise BadRequest(
                f"{user.name} already has {len(named)} named servers, the limit "
                f"of [hub] named_server_limit_per_user; remove one first."
            )

    def _check_limits(self) -> None:
        pending = self.count("pending")
        limit = int(self.sp["concurrent_spawn_limit"])
        if limit and pending >= limit:
            raise TooManyRequests(
                f"Too many servers are starting ({pending}); try again in a few seconds. "
                "The admin can raise [spawner] concurrent_spawn_limit.",
                5,
            )
        active = int(self.sp["active_server_limit"])
        if active and pending + self.count("running") >= active:
            raise TooManyRequests(
                f"The hub is full: {active} servers are running. Try again later; the admin "
                "can raise [spawner] active_server_limit.",
                30,
            )

    async def _start(self, user: User, srv: Server) -> None:
        t0 = time.monotonic()
        try:
            await self._cleaned_up(srv)
            for attempt in range(1 + PORT_TAKEN_RETRIES):
                try:
                    launch = await self._launch(user, srv)
                    started = await self._run_start(launch, srv)
                    srv.endpoint, srv.state = started.endpoint, started.state
                    srv.started = srv.last_activity = time.time()
                    # Stored before it is ready: a hub killed now finds it at restart and
                    # stops it, instead of starting a second server for the user beside it.
                    await self.store.save_server(self._row(srv, "starting"))
                    srv.progress.append("Waiting for the server to answer")
                    await self._wait_ready(srv)
                    break
                except SpawnError as e:
                    # It may also have exited before start returned ("exited at once").
                    if not (isinstance(e, PortTaken) or _PORT_TAKEN.search(e.log_tail)):
                        raise
                    if attempt == PORT_TAKEN_RETRIES:
                        raise
                # A server that binds its own port (jupyterhub-singleuser) got one free when
                # handed out, which another process took before the server bound it.
                log.warning("%s: its port was taken before it bound it; again", srv.label)
                srv.progress.append("Its port was taken meanwhile: starting it on another")
                if srv.state:
                    await self.spawner.stop(srv.state, 2)
                await self._forget_run(srv)
                srv.status = "pending"
            await self.store.save_server(self._row(srv, "running"))
            srv.status = "running"
            srv.spawn_seconds = time.monotonic() - t0
            srv.progress.append("Server ready")
            if self.on_spawned:
                self.on_spawned(srv.spawn_seconds)
            log.info("spawned %s at %s in %.2fs", srv.label, srv.endpoint, srv.spawn_seconds)
        except SpawnError as e:
            await self._fail(srv, e.message, e.log_tail, e.status)
        except asyncio.CancelledError:
            if srv.state and srv.status == "pending":
                await self.spawner.stop(srv.state, 2)
            srv.status = "stopped"
            raise
        except Exception as e:
            log.exception("spawn of %s failed", srv.label)
            await self._fail(srv, f"Server failed to start: {type(e).__name__}: {e}", "", 500)
        finally:
            srv.ready.set()

    async def _run_start(self, launch: Launch, srv: Server) -> Any:
        """spawner.start, with its progress messages copied to the server as they come."""

        async def follow() -> None:
            async for message in self.spawner.progress(launch):
                srv.progress.append(str(message)[:500])

        follower = asyncio.create_task(follow(), name=f"progress-{srv.label}")
        try:
            return await self.spawner.start(launch)
        finally:
            try:
                # A message said right before start returned has woken the follower, which
                # has not run yet: a few turns of the loop let it copy what was said.
                for _ in range(_DRAIN_TURNS):
                    await asyncio.sleep(0)
            finally:
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)

    async def _fail(self, srv: Server, message: str, tail: str, status: int = 502) -> None:
        log.warning("spawn of %s failed: %s", srv.label, message)
        if srv.state:
            tail = tail or await self.spawner.log_tail(srv.state)
            await self.spawner.stop(srv.state, 2)
        await self._forget_run(srv)
        srv.error, srv.log_tail, srv.error_status = message, tail, status
        srv.progress.append("Failed: " + message)

    async def _launch(self, user: User, srv: Server) -> Launch:
        srv.nonce = pysecrets.token_hex(16)
        self._derive(srv)
        prefix = self.prefix(srv)
        prepared = await self.protocol.prepare(user, srv.name, prefix, srv.secret, srv.proof)
        return Launch(
            user=user.name,
            server_name=srv.name,
            protocol=self.protocol.name,
            cmd=self.protocol.cmd(),
            env=prepared.env,
            config=prepared.config,
            prefix=prefix,
            user_options=dict(srv.user_options),
            owner=f"{user.id}-{user.created:.6f}",
        )

    def _derive(self, srv: Server) -> None:
        """The secret and proof from the nonce (named servers: from user/server)."""
        who = f"{srv.user}/{srv.name}" if srv.name else srv.user
        srv.secret = S.server_secret(self.key, who, srv.nonce)
        srv.proof = S.server_proof(self.key, who, srv.nonce) if self.protocol.answers_back else ""

    async def _wait_ready(self, srv: Server) -> None:
        assert srv.endpoint is not None
        url = f"{srv.endpoint.origin}{self.prefix(srv)}{self.protocol.ready_path}"
        deadline = time.monotonic() + float(self.sp["start_timeout"])
        interval = PROBE_INTERVAL
        while time.monotonic() < deadline:
            status = await self.spawner.poll(srv.state)
            if status is not None:
                tail = await self.spawner.log_tail(srv.state)
                error = PortTaken if _PORT_TAKEN.search(tail) else SpawnError
                raise error(f"Server exited during start ({_exit_text(status)}).", tail)
            if await self._answers(url, srv):
                return
            await asyncio.sleep(interval)
            interval = min(interval * PROBE_BACKOFF, PROBE_MAX_INTERVAL)
        raise SpawnError(
            f"Server did not answer within {self.sp['start_timeout']} seconds. The admin can "
            "raise [spawner] start_timeout.",
            await self.spawner.log_tail(srv.state),
        )

    async def _answers(self, url: str, srv: Server) -> bool:
        assert self._http is not None
        try:
            async with self._http.get(
                url,
                headers={SECRET_HEADER: srv.secret},
                timeout=aiohttp.ClientTimeout(total=2),
                ssl=self._tls(url),
            ) as r:
                return self.protocol.ready(r.status, r.headers, srv.proof)
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    def _tls(self, url: str) -> ssl.SSLContext | bool:
        """Probes verify an https server as the proxy does: against the system's CAs, or
        [hub] server_ca_file."""
        if url.startswith("https:"):
            return trust.client_context(str(self.cfg.get("hub.server_ca_file")))
        return True

    def _row(self, srv: Server, state: str) -> ServerRow:
        e = srv.endpoint
        return ServerRow(
            srv.user_id,
            srv.name,
            state,
            srv.state,
            e.scheme if e else "",
            e.host if e else "",
            e.port if e else 0,
            srv.nonce,
            S.hash_token(srv.secret) if srv.secret else "",
            srv.started,
            srv.last_activity,
            srv.user_options,
        )

    # --- stop and poll ----------------------------------------------------------------
    async def stop(self, user_id: int, name: str = "") -> None:
        srv = self._servers.get((user_id, name))
        if srv is None or srv.status == "stopped":
            return
        if srv.task and not srv.task.done():
            srv.task.cancel()
            await asyncio.gather(srv.task, return_exceptions=True)
        state, srv.status = srv.state, "stopping"
        try:
            if state:
                await self.spawner.stop(state, float(self.sp["stop_timeout"]))
        finally:
            await self._forget_run(srv)
            srv.error = ""
            log.info("stopped server %s", srv.label)

    async def remove(self, user_id: int, name: str) -> None:
        """Stop a named server and forget it (DELETE with {"remove": true})."""
        await self.stop(user_id, name)
        self._servers.pop((user_id, name), None)
        await self.store.delete_server(user_id, name)

    async def forget_user(self, user_id: int) -> None:
        """The user is being deleted: stop and forget all of their servers."""
        for name in list(self.of_user(user_id)):
            await self.remove(user_id, name)
        self._servers.pop((user_id, ""), None)

    async def _forget_run(self, srv: Server) -> None:
        """The server is no longer running: clear what this run had, in memory and stored
        (a named server keeps its row, stopped, until it is removed)."""
        srv.status, srv.endpoint, srv.state = "stopped", None, {}
        if srv.name:
            await self.store.save_server(self._row(srv, "stopped"))
        else:
            await self.store.delete_server(srv.user_id, srv.name)
        user = await self.store.get_user_by_id(srv.user_id)
        if user is not None:
            await self.protocol.forget(user, srv.name)  # its API token dies too

    async def poll_all(self) -> None:
        # A local spawner's poll is a few system calls that do not wait: a pass over 300
        # servers held the loop ~15 ms every POLL_EVERY, the p99 of requests meanwhile (a
        # page of users 16 ms). Every POLL_SLICE servers, the requests waiting go first.
        for i, srv in enumerate(list(self.all()), 1):
            if srv.status == "running":
                await self.check(srv)
            if i % POLL_SLICE == 0:
                await asyncio.sleep(0)

    def _exited(self, reported: State) -> None:
        """The spawner saw a server exit: mark it stopped and clean up what it left now."""
        for srv in self.all():
            if srv.status == "running" and all(srv.state.get(k) == v for k, v in reported.items()):
                task = asyncio.create_task(self.check(srv), name=f"exited-{srv.label}")
                self._checks.add(task)
                task.add_done_callback(self._checks.discard)

    async def check(self, srv: Server) -> bool:
        """True if alive; otherwise mark it stopped and keep why for the user."""
        state = srv.state
        if not state or srv.status != "running":
            return srv.status == "running"
        status = await self.spawner.poll(state)
        if status is None or srv.state is not state:
            return status is None  # alive, or another check (or a stop) dealt with it
        srv.status = "stopped"
        why = _exit_text(status)
        if self.spawner.oom_killed(state):
            limit = self.sp["mem_limit"]  # a remote spawner's own limit is not ours to name
            why += "; it ran out of memory" + (f" (limit {limit})" if limit else "")
        log.warning("server %s died: %s", srv.label, why)
        srv.error = f"Your server stopped ({why})."
        srv.log_tail = await self.spawner.log_tail(state)
        await self._forget_run(srv)
        # Its kernels and whatever else it started would run on, unseen by the culler. The
        # user may start the server again meanwhile: that start waits for this (_cleaned_up).
        srv.cleanup = asyncio.create_task(self.spawner.stop(state, 0), name=f"clean-{srv.label}")
        await asyncio.shield(srv.cleanup)
        return False

    async def _cleaned_up(self, srv: Server) -> None:
        """Wait until what the server's last run left behind is gone: the same server's
        next run reuses its cgroup, which that clean-up removes (the new server then could
        not join it and failed to start)."""
        cleanup, srv.cleanup = srv.cleanup, None
        if cleanup is not None and not cleanup.done():
            srv.progress.append("Cleaning up after the server that stopped")
            with contextlib.suppress(Exception):  # check() reports its failure
                await asyncio.shield(cleanup)

    async def refresh_activity(self, srv: Server) -> None:
        """Fold the server's own view of activity (kernel executions, API use) into ours."""
        if (
            srv.status != "running"
            or srv.endpoint is None
            or self._http is None
            or not self.protocol.reports_activity
        ):
            return
        url = f"{srv.endpoint.origin}{self.prefix(srv)}api/"
        hdr = {SECRET_HEADER: srv.secret}
        try:
            async with self._http.get(url + "status", headers=hdr, ssl=self._tls(url)) as r:
                genuine = self.protocol.ready(r.status, r.headers, srv.proof)
                status = await r.json() if genuine else {}
            last = parse_time(status.get("last_activity"))
            if status.get("kernels"):
                async with self._http.get(url + "kernels", headers=hdr, ssl=self._tls(url)) as r:
                    kernels = await r.json() if r.status == 200 else []
                if any(k.get("execution_state") == "busy" for k in kernels):
                    last = time.time()
            srv.last_activity = max(srv.last_activity, last)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError, AttributeError) as e:
            log.debug("activity of %s unknown: %s", srv.label, e)

    async def _poll_loop(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(POLL_EVERY)
            n += 1
            try:
                await self.poll_all()
                if n % 6 == 0:
                    for srv in self.all():
                        await self.refresh_activity(srv)
                    await self.flush_activity()
            except Exception:
                log.exception("polling servers failed")

    async def flush_activity(self) -> None:
        """Write the servers' activity since the last flush, all in one statement each for
        servers and users: one write (and one commit) per server and per user, 600 with 300
        servers every 30 s, queued page queries behind them; idle servers need none."""
        moved = [
            srv
            for srv in self.all()
            if srv.status == "running" and srv.last_activity > srv.flushed_activity
        ]
        if not moved:
            return
        await self.store.touch_activity([(s.user_id, s.name, s.last_activity) for s in moved])
        for srv in moved:
            srv.flushed_activity = max(srv.flushed_activity, srv.last_activity)

    # --- re-adoption ------------------------------------------------------------------
    async def adopt(self) -> None:
        """Take over the servers an earlier hub left running; stop the ones it was still
        starting when it died (it never told anyone where they are, and the user will get a
        new one), so each (user, server name) has at most one server."""
        rows = await self.store.list_servers()
        users = await self.store.users_by_ids(row.user_id for row in rows)
        for row in rows:
            user = users.get(row.user_id)
            if user is None:
                await self.store.delete_server(row.user_id, row.name)
                continue
            srv = self.get(user, row.name)
            srv.user_options = row.user_options
            if row.status == "stopped":
                continue
            if row.status != "running" or await self.spawner.poll(row.state) is not None:
                await self.spawner.stop(row.state, 0)  # a no-op for a server that is gone
                await self._forget_run(srv)
                log.info(
                    "forgot %s server %s",
                    "unfinished" if row.status != "running" else "dead",
                    srv.label,
                )
                continue
            srv.endpoint = Endpoint(row.host, row.port, row.scheme or "http")
            srv.state, srv.nonce, srv.started = row.state, row.nonce, row.started
            self._derive(srv)
            srv.last_activity = row.last_activity or row.started
            srv.status = "running"
            srv.ready.set()
            log.info("re-adopted server %s at %s", srv.label, srv.endpoint)
        await self._tidy()

    async def _tidy(self) -> None:
        """Let the spawner remove what killed hubs and servers left (cgroups, kernel dirs)
        for users with no server now. Before serving, so no spawn runs meanwhile."""
        try:
            names = await asyncio.to_thread(self.spawner.leftovers)
            busy = {s.user for s in self._servers.values() if s.status != "stopped"}
            names -= busy  # their groups are in use
            known = await self.store.existing_names(names)
            await self.spawner.tidy(known, names - known)
        except Exception:  # tidying is never worth failing start-up for
            log.exception("tidying what stopped servers left failed")


def parse_time(text: object) -> float:
    """An ISO time from a server's status, or 0 if it is missing or malformed."""
    if not isinstance(text, str):
        return 0.0
    try:
        return parse_iso(text)
    except ValueError:
        return 0.0


def _exit_text(status: int) -> str:
    if status == UNKNOWN_EXIT:
        return "exit status unknown"
    if status < 0:
        return f"killed by signal {-status}"
    return f"exit code {status}"
