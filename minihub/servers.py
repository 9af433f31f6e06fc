"""The life of each user's server as the hub sees it: start, readiness, stop, poll, re-adopt.

Processes are run by a Spawner (minihub.spawner); this module owns state (memory + SQLite),
limits, readiness probing and progress. Only "running" servers are stored, so a restarted
hub re-adopts exactly the servers that were up, and forgets ones that died meanwhile.

Where servers listen, and why: on 127.0.0.1, on a port the hub binds and hands over (no race
for the port), and every request must carry the server's secret. A unix socket in a
root-only directory would keep other local users from even connecting, but it would need a
second proxy transport and would not work for jupyterhub-singleuser or configurable-http-proxy
(which the benchmarks put in front of the same servers); a 256-bit secret, compared in
constant time, makes a connection from another local user useless. The secret is an HMAC of
the cookie secret and a per-start nonce, so SQLite stores only the nonce and the secret's
hash, and a restarted hub derives it again to re-adopt the server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import secrets as pysecrets
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from . import oauth2
from .auth import secrets as S
from .config import Config, parse_bytes
from .errors import SpawnError, TooManyRequests
from .models import parse_iso
from .proxy import Upstream
from .singleuser import PROOF_HEADER, SECRET_HEADER
from .spawner import accounts
from .spawner.base import UNKNOWN_EXIT, Account, LaunchSpec, Proc, Spawner
from .spawner.local import tail_log
from .store import ServerRow, Store, User

log = logging.getLogger("minihub.servers")
PROBE_INTERVAL = 0.05
POLL_EVERY = 5.0
SLOW_SPAWN = 10.0
SKEL = "/etc/skel"  # POST /server answers 202 (pending) after this long


@dataclass
class Server:
    """One user's server, as this hub process knows it."""

    user_id: int
    name: str
    status: str = "stopped"  # stopped | pending | running | stopping
    proc: Proc | None = None
    nonce: str = ""
    secret: str = ""
    proof: str = ""  # what the server answers back; "" for jupyterhub-singleuser
    started: float = 0.0
    last_activity: float = 0.0
    progress: list[str] = field(default_factory=list)
    error: str = ""
    error_status: int = 500  # a refusal's own status (403 for root), kept for the answer
    log_tail: str = ""
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    spawn_seconds: float = 0.0

    @property
    def pending(self) -> str | None:
        return {"pending": "spawn", "stopping": "stop"}.get(self.status)

    @property
    def upstream(self) -> Upstream | None:
        if self.status != "running" or self.proc is None:
            return None
        return Upstream(self.proc.host, self.proc.port, self.secret, self.proof)


class Servers:
    def __init__(self, cfg: Config, store: Store, key: bytes, spawner: Spawner,
                 on_spawned: Callable[[float], None] | None = None) -> None:
        self.cfg = cfg
        self.sp = cfg.section("spawner")
        self.store = store
        self.key = key
        self.spawner = spawner
        self.on_spawned = on_spawned
        self._servers: dict[int, Server] = {}
        self._http: aiohttp.ClientSession | None = None
        self._poller: asyncio.Task[None] | None = None
        self._checks: set[asyncio.Task[bool]] = set()
        self.log_dir = cfg.data_dir / "logs"
        spawner.on_exit = self._exited

    # --- lifetime ---------------------------------------------------------------------
    async def open(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        self.log_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        os.chmod(self.log_dir, 0o711)
        await self.adopt()
        self._poller = asyncio.create_task(self._poll_loop(), name="minihub-poll-servers")

    async def close(self, stop_all: bool = False) -> None:
        if self._poller:
            self._poller.cancel()
        self.spawner.on_exit = None
        await asyncio.gather(*self._checks, return_exceptions=True)
        tasks = [s.task for s in self._servers.values() if s.task and not s.task.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if stop_all:
            await asyncio.gather(*(self.stop(s.name, s.user_id) for s in list(self._servers.values())
                                   if s.status == "running"), return_exceptions=True)
        else:
            await self.flush_activity()
        if self._http:
            await self._http.close()
        await self.spawner.close()

    # --- queries ----------------------------------------------------------------------
    def get(self, user: User) -> Server:
        srv = self._servers.get(user.id)
        if srv is None:
            srv = self._servers[user.id] = Server(user.id, user.name)
        srv.name = user.name
        return srv

    def peek(self, user_id: int) -> Server | None:
        return self._servers.get(user_id)

    def count(self, status: str) -> int:
        return sum(1 for s in self._servers.values() if s.status == status)

    def all(self) -> list[Server]:
        return list(self._servers.values())

    def touch(self, user_id: int) -> None:
        srv = self._servers.get(user_id)
        if srv is not None:
            srv.last_activity = time.time()

    # --- start ------------------------------------------------------------------------
    async def spawn(self, user: User, wait: float = SLOW_SPAWN) -> Server:
        """Start `user`'s server (if not already up); return after `wait` seconds at most."""
        srv = self.get(user)
        if srv.status in ("stopped",):
            self._check_limits()
            srv.status, srv.error, srv.log_tail = "pending", "", ""
            srv.progress = ["Server requested"]
            srv.ready = asyncio.Event()
            srv.task = asyncio.create_task(self._start(user, srv), name=f"spawn-{user.name}")
        if srv.status == "pending" and wait > 0:
            try:
                await asyncio.wait_for(asyncio.shield(srv.ready.wait()), wait)
            except TimeoutError:
                pass
        if srv.status == "stopped" and srv.error:
            raise SpawnError(srv.error, srv.log_tail, srv.error_status)
        return srv

    def _check_limits(self) -> None:
        pending = self.count("pending")
        limit = int(self.sp["concurrent_spawn_limit"])
        if limit and pending >= limit:
            raise TooManyRequests(
                f"Too many servers are starting ({pending}); try again in a few seconds. "
                "The admin can raise [spawner] concurrent_spawn_limit.", 5)
        active = int(self.sp["active_server_limit"])
        if active and pending + self.count("running") >= active:
            raise TooManyRequests(
                f"The hub is full: {active} servers are running. Try again later; the admin "
                "can raise [spawner] active_server_limit.", 30)

    async def _start(self, user: User, srv: Server) -> None:
        t0 = time.monotonic()
        try:
            spec = await self._launch_spec(user, srv)
            srv.progress.append("Starting the server process")
            srv.proc = await self.spawner.start(spec)
            srv.started = time.time()
            srv.last_activity = srv.started
            # Stored before it is ready: a hub killed now finds it at restart and stops it,
            # instead of starting a second server for the same user beside it.
            await self.store.save_server(self._row(srv, "starting"))
            srv.progress.append("Waiting for the server to answer")
            await self._wait_ready(srv, spec.log_path)
            await self.store.save_server(self._row(srv))
            srv.status = "running"
            srv.spawn_seconds = time.monotonic() - t0
            srv.progress.append("Server ready")
            if self.on_spawned:
                self.on_spawned(srv.spawn_seconds)
            log.info("spawned %s pid=%s port=%s in %.2fs", user.name, srv.proc.pid,
                     srv.proc.port, srv.spawn_seconds)
        except SpawnError as e:
            await self._fail(srv, e.message, e.log_tail, e.status)
        except asyncio.CancelledError:
            if srv.proc is not None and srv.status == "pending":
                await self.spawner.stop(srv.proc, 2)
            srv.status = "stopped"
            raise
        except Exception as e:
            log.exception("spawn of %s failed", user.name)
            await self._fail(srv, f"Server failed to start: {type(e).__name__}: {e}", "")
        finally:
            srv.ready.set()

    async def _fail(self, srv: Server, message: str, tail: str, status: int = 500) -> None:
        log.warning("spawn of %s failed: %s", srv.name, message)
        if srv.proc is not None:
            await self.spawner.stop(srv.proc, 2)
            tail = tail or await asyncio.to_thread(tail_log, self.log_path(srv.name))
        srv.status, srv.proc = "stopped", None
        srv.error, srv.log_tail, srv.error_status = message, tail, status
        srv.progress.append("Failed: " + message)

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    async def _launch_spec(self, user: User, srv: Server) -> LaunchSpec:
        account = await self._account(user.name)
        srv.nonce = pysecrets.token_hex(16)
        srv.secret = S.server_secret(self.key, user.name, srv.nonce)
        srv.proof = "" if self.sp["cmd"] else S.server_proof(self.key, user.name, srv.nonce)
        notebook_dir = (self.sp["notebook_dir"] or account.home).replace("{username}", user.name)
        if os.geteuid() == 0 and self.cfg.get("users.shared_dirs"):
            srv.progress.append("Linking shared folders")
            await accounts.link_shared_dirs(account, self.cfg.get("users.shared_dirs"))
        prefix = f"{self.cfg.base_url}user/{user.name}/"
        mem = (parse_bytes(self.sp["mem_limit"]) or 0) if self.sp["mem_limit"] else 0
        spec = LaunchSpec(
            username=user.name, account=account, cmd=self._cmd(), env=self._env(account, prefix),
            cwd=notebook_dir, log_path=self.log_path(user.name),
            stdin_config={"secret": srv.secret, "proof": srv.proof, "base_url": prefix, "user": user.name,
                          "notebook_dir": notebook_dir,
                          **{f"ws_{k}": self.sp[f"kernel_ws_{k}"] for k in ("max_message", "max_json", "max_buffers")},
                          "kernel_idle_timeout": int(self.sp["kernel_idle_timeout"]),
                          "shared_dirs": await asyncio.to_thread(self._shared_roots),
                          "mem_limit": mem, "kernel_zygote": bool(self.sp["kernel_fork"])},
            umask=int(self.sp["umask"]),
            mem_limit=mem,
            cpu_limit=float(self.sp["cpu_limit"]),
            max_processes=int(self.sp["max_processes"]),
            disk_quota=parse_bytes(self.cfg.get("users.disk_quota") or "0") or 0,
            log_max_bytes=int(self.sp["log_max_bytes"]))
        if self.sp["cmd"]:
            await self._as_jupyterhub_singleuser(user, spec)
        return spec

    async def _as_jupyterhub_singleuser(self, user: User, spec: LaunchSpec) -> None:
        """Launch as JupyterHub's LocalProcessSpawner does: the JUPYTERHUB_* environment with
        a fresh API token, a free loopback port of its own, nothing it reads on stdin."""
        client = await oauth2.register_server(self.store, user, self.cfg.base_url)
        port = await asyncio.to_thread(free_port, spec.listen_host)
        spec.pass_listen_socket = False
        spec.stdin_config = {"port": port}
        env = oauth2.server_env(self.cfg, user, client, spec.listen_host, port,
                                bool(self.cfg.get("hub.admin_access")))
        if self.sp["notebook_dir"]:
            env["JUPYTERHUB_ROOT_DIR"] = spec.cwd
        spec.env = {**spec.env, **env, **self.sp["environment"]}  # the operator's env wins

    def _shared_roots(self) -> list[str]:
        """Where links in a home may lead: [users] shared_dirs and what /etc/skel links to.

        Both are chosen by the operator; a link a user makes elsewhere stays refused.
        """
        roots = [os.path.realpath(d) for d in self.cfg.get("users.shared_dirs")]
        try:
            for entry in os.scandir(SKEL):
                if entry.is_symlink():
                    roots.append(os.path.realpath(entry.path))
        except OSError:
            pass
        return sorted(set(roots))

    async def _account(self, name: str) -> Account:
        if os.geteuid() != 0:
            return await asyncio.to_thread(accounts.unprivileged_account, self.cfg.data_dir, name)
        try:
            await asyncio.to_thread(pwd.getpwnam, name)
        except KeyError:
            if not self.cfg.get("users.create_system_users"):
                raise SpawnError(
                    f"There is no system account named {name!r}. An admin can create it "
                    "(useradd -m) or set [users] create_system_users = true.", status=400)
            await accounts.create_system_user(
                name, home_mode=int(self.cfg.get("users.home_mode")))
        return await asyncio.to_thread(accounts.lookup_account, name,
                                       uid_min=int(self.sp["uid_min"]))

    def _cmd(self) -> list[str]:
        if self.sp["cmd"]:
            return list(self.sp["cmd"])
        return [self.sp["python"] or sys.executable, "-m", "minihub.singleuser"]

    def _env(self, account: Account, prefix: str) -> dict[str, str]:
        python = self.sp["python"] or sys.executable
        path = f"{os.path.dirname(python)}:/usr/local/bin:/usr/bin:/bin"
        env = {"HOME": account.home, "USER": account.name, "LOGNAME": account.name,
               "SHELL": account.shell, "PATH": path, "LANG": os.environ.get("LANG", "C.UTF-8"),
               "MINIHUB_USER": account.name, "MINIHUB_BASE_URL": prefix}
        env.update(self.sp["environment"])
        return env

    async def _wait_ready(self, srv: Server, log_path: Path) -> None:
        assert srv.proc is not None and self._http is not None
        # minihub's server answers its status to the secret; jupyterhub-singleuser is ready
        # when {server_url}api answers below 500, as JupyterHub checks.
        tail = "api" if self.sp["cmd"] else "api/status"
        url = f"http://{srv.proc.host}:{srv.proc.port}{self.cfg.base_url}user/{srv.name}/{tail}"
        deadline = time.monotonic() + float(self.sp["start_timeout"])
        while time.monotonic() < deadline:
            status = await self.spawner.poll(srv.proc)
            if status is not None:
                raise SpawnError(f"Server exited during start ({_exit_text(status)}).",
                                 await asyncio.to_thread(tail_log, log_path))
            if await self._answers(url, srv.secret, srv.proof):
                return
            await asyncio.sleep(PROBE_INTERVAL)
        raise SpawnError(
            f"Server did not answer within {self.sp['start_timeout']} seconds. The admin can "
            "raise [spawner] start_timeout.", await asyncio.to_thread(tail_log, log_path))

    async def _answers(self, url: str, secret: str, proof: str) -> bool:
        assert self._http is not None
        try:
            async with self._http.get(url, headers={SECRET_HEADER: secret},
                                      timeout=aiohttp.ClientTimeout(total=2)) as r:
                if self.sp["cmd"]:
                    return r.status < 500
                return r.status == 200 and S.equal(r.headers.get(PROOF_HEADER, ""), proof)
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    def _row(self, srv: Server, state: str = "running") -> ServerRow:
        assert srv.proc is not None
        return ServerRow(srv.user_id, state, srv.proc.pid, srv.proc.start_ticks,
                         srv.proc.host, srv.proc.port, srv.nonce, S.hash_token(srv.secret),
                         srv.started, srv.last_activity, srv.proc.extra)

    # --- stop and poll ----------------------------------------------------------------
    async def stop(self, name: str, user_id: int) -> None:
        srv = self._servers.get(user_id)
        if srv is None or srv.status == "stopped":
            return
        if srv.task and not srv.task.done():
            srv.task.cancel()
            await asyncio.gather(srv.task, return_exceptions=True)
        proc, srv.status = srv.proc, "stopping"
        try:
            if proc is not None:
                await self.spawner.stop(proc, float(self.sp["stop_timeout"]))
        finally:
            srv.status, srv.proc, srv.error = "stopped", None, ""
            await self.store.delete_server(user_id)
            await self.store.delete_kind_tokens(user_id, "server")  # its API token dies too
            log.info("stopped server of %s", name)

    def _exited(self, pid: int) -> None:
        """A server process exited: mark it stopped and clean up what it left now."""
        for srv in self._servers.values():
            if srv.status == "running" and srv.proc is not None and srv.proc.pid == pid:
                task = asyncio.create_task(self.check(srv), name=f"exited-{srv.name}")
                self._checks.add(task)
                task.add_done_callback(self._checks.discard)

    async def poll_all(self) -> None:
        for srv in list(self._servers.values()):
            if srv.status == "running":
                await self.check(srv)

    async def check(self, srv: Server) -> bool:
        """True if alive; otherwise mark it stopped and keep why for the user."""
        proc = srv.proc
        if proc is None or srv.status != "running":
            return srv.status == "running"
        status = await self.spawner.poll(proc)
        if status is None or srv.proc is not proc:
            return status is None  # alive, or another check (or a stop) dealt with it
        srv.status, srv.proc = "stopped", None
        why = _exit_text(status)
        if self.spawner.oom_killed(proc):
            why += f"; it ran out of memory (limit {self.sp['mem_limit']})"
        log.warning("server of %s died: %s", srv.name, why)
        srv.error = f"Your server stopped ({why})."
        srv.log_tail = await asyncio.to_thread(tail_log, self.log_path(srv.name))
        await self.store.delete_server(srv.user_id)
        await self.store.delete_kind_tokens(srv.user_id, "server")
        # Its kernels and whatever else it started would run on, unseen by the culler.
        await self.spawner.stop(proc, 0)
        return False

    async def refresh_activity(self, srv: Server) -> None:
        """Fold the server's own view of activity (kernel executions, API use) into ours."""
        if srv.status != "running" or srv.proc is None or self._http is None or self.sp["cmd"]:
            return
        url = (f"http://{srv.proc.host}:{srv.proc.port}{self.cfg.base_url}user/{srv.name}/api/")
        hdr = {SECRET_HEADER: srv.secret}
        try:
            async with self._http.get(url + "status", headers=hdr) as r:
                genuine = S.equal(r.headers.get(PROOF_HEADER, ""), srv.proof)
                status = await r.json() if r.status == 200 and genuine else {}
            last = parse_time(status.get("last_activity"))
            if status.get("kernels"):
                async with self._http.get(url + "kernels", headers=hdr) as r:
                    kernels = await r.json() if r.status == 200 else []
                if any(k.get("execution_state") == "busy" for k in kernels):
                    last = time.time()
            srv.last_activity = max(srv.last_activity, last)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
            log.debug("activity of %s unknown: %s", srv.name, e)

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
        for srv in self._servers.values():
            if srv.status == "running" and srv.last_activity:
                await self.store.touch_server(srv.user_id, srv.last_activity)
                await self.store.touch_user(srv.user_id, srv.last_activity)

    # --- re-adoption ------------------------------------------------------------------
    async def adopt(self) -> None:
        """Take over the servers an earlier hub left running; stop the ones it was still
        starting when it died (it never told anyone where they are, and the user will get a
        new one), so each user ends up with at most one server."""
        for row in await self.store.list_servers():
            user = await self.store.get_user_by_id(row.user_id)
            proc = Proc(row.pid, row.start_ticks, row.host, row.port, row.extra)
            if user is None or row.state != "running" or await self.spawner.poll(proc) is not None:
                await self.spawner.stop(proc, 0)  # a no-op for a server that is gone
                await self.store.delete_server(row.user_id)
                await self.store.delete_kind_tokens(row.user_id, "server")
                log.info("forgot %s server of user id %s",
                         "unfinished" if row.state != "running" else "dead", row.user_id)
                continue
            srv = self.get(user)
            srv.proc, srv.nonce, srv.started = proc, row.nonce, row.started
            srv.secret = S.server_secret(self.key, user.name, row.nonce)
            srv.proof = "" if self.sp["cmd"] else S.server_proof(self.key, user.name, row.nonce)
            srv.last_activity = row.last_activity or row.started
            srv.status = "running"
            srv.ready.set()
            log.info("re-adopted server of %s (pid %s)", user.name, row.pid)


def parse_time(text: object) -> float:
    """An ISO time from a server's status, or 0 if it is missing or malformed."""
    if not isinstance(text, str):
        return 0.0
    try:
        return parse_iso(text)
    except ValueError:
        return 0.0


def free_port(host: str) -> int:
    """A port nobody listens on now (the server binds it itself, moments later)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _exit_text(status: int) -> str:
    if status == UNKNOWN_EXIT:
        return "exit status unknown"
    if status < 0:
        return f"killed by signal {-status}"
    return f"exit code {status}"
