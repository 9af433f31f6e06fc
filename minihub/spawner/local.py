"""LocalSpawner: user servers as local processes running under the users' own accounts.

The seam's half (`start(launch)` and friends) turns a Launch into a LaunchSpec: the Unix
account (looked up, or created with [users] create_system_users), its shared-folder links,
the notebook dir, the log file, the cgroup. The process half (`start_process(spec)` and
friends) starts it with subprocess.Popen (privilege drop, own session, a clean
environment), reaps it through a pidfd on the event loop, and recognises it after a hub
restart by pid plus start time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import pwd
import random
import resource
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Collection
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from ..config import Config, parse_bytes
from ..errors import PortTaken, SpawnError
from ..kernels.transport import sweep_dead_dirs
from ..procfs import proc_stat, signal_group, start_ticks, tcp_rows
from ..setting import Setting, between
from . import accounts, cgroups
from .accounts import apply_disk_quota, drop_to
from .base import (
    UNKNOWN_EXIT,
    Endpoint,
    Launch,
    ProgressLog,
    Spawner,
    Started,
    State,
    Usage,
)
from .cgroups import UserCgroup
from .process import Account, LaunchSpec, Proc, isolated

log = logging.getLogger("minihub.spawner")

LOG_ROTATE_BYTES = 4 << 20
_TAIL_BYTES = 64 << 10
_POLL_INTERVAL = 0.05
_KILL_WAIT = 5.0
_MAX_EXITED = 1000  # exit statuses remembered for poll(); the hub reads each soon after
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
USER_OOM_SCORE_ADJ = 500


SKEL = "/etc/skel"
LISTEN_HOST = "127.0.0.1"


class LocalSpawner(Spawner):
    """Runs each server as a child process; any instance can poll/stop any Proc."""

    name = "local"
    # The local account, process and log file's settings; [users] and these [spawner] keys
    # keep their sections, so configurations written before the registry still work.
    settings: ClassVar[list[Setting]] = [
        Setting(
            "spawner", "uid_min", int, 1000, "Lowest uid that may run a server (root never may)."
        ),
        Setting(
            "spawner",
            "umask",
            int,
            0o077,
            "umask of user servers and their kernels: 0o077 keeps notebooks, checkpoints, "
            "uploads and kernels' files private to their owner; 0o022 lets every user read "
            "them.",
            check=between(0, 0o777),
        ),
        Setting(
            "spawner",
            "max_processes",
            int,
            512,
            "Processes and threads one user may run at once (server and kernels together), "
            "so a fork bomb stops there: the pids cgroup, else RLIMIT_NPROC. 0: no limit.",
            check=between(0, 1 << 22),
        ),
        Setting(
            "spawner",
            "log_max_bytes",
            int,
            4 << 20,
            "Largest a server's log in <data_dir>/logs/ grows; past it, it moves to "
            "<name>.log.1 (one old copy), while the server runs. Enforced by minihub's own "
            "server; a [spawner] cmd server's log is rotated only when it starts.",
            check=between(1 << 16, 1 << 40),
        ),
        Setting(
            "users",
            "create_system_users",
            bool,
            False,
            "Create a Unix account (useradd -m, so /etc/skel is copied) for a user who has none.",
        ),
        Setting(
            "users",
            "home_mode",
            int,
            0o700,
            "Mode of the home of an account minihub creates (create_system_users). At "
            "start-up the hub warns about hub users' existing homes that others can read.",
            check=between(0, 0o777),
        ),
        Setting(
            "users",
            "disk_quota",
            str,
            "",
            'Disk space per user on their home\'s filesystem, e.g. "2G" (setquota; needs '
            "quotas enabled there, else the log says why it is not applied). Empty: none.",
            check=lambda v: (
                f"{v!r} is not a size like 2G" if v and parse_bytes(v) is None else None
            ),
        ),
        Setting(
            "users",
            "shared_dirs",
            list,
            [],
            "Directories linked into every user's home at spawn (the link is named after the dir).",
        ),
    ]

    def __init__(self, cfg: Config | None = None) -> None:
        self.cfg = cfg
        self._children: dict[int, tuple[subprocess.Popen[bytes], int]] = {}
        self._pidfds: dict[int, int] = {}
        self._exited: dict[tuple[int, int], int] = {}  # (pid, start_ticks) -> status
        self._progress = ProgressLog()

    # -- the seam ------------------------------------------------------------------------

    async def start(self, launch: Launch) -> Started:
        spec = await self.spec_for(launch)
        self._say(launch, "Starting the server process")
        proc = await self.start_process(spec)
        state = {
            "pid": proc.pid,
            "start_ticks": proc.start_ticks,
            "log": str(spec.log_path),
            **proc.extra,
        }
        return Started(Endpoint(proc.host, proc.port), state)

    async def poll(self, state: State) -> int | None:
        return await self.poll_process(_proc(state))

    async def stop(self, state: State, timeout: float) -> None:
        await self.stop_process(_proc(state), timeout)

    async def log_tail(self, state: State, lines: int = 20) -> str:
        path = state.get("log")
        return await asyncio.to_thread(tail_log, path, lines) if path else ""

    def oom_killed(self, state: State) -> bool:
        return self.oom_killed_process(_proc(state))

    async def usage(self, state: State) -> Usage | None:
        if not state.get("pid"):
            return None
        return await asyncio.to_thread(process_usage, _proc(state))

    async def progress(self, launch: Launch) -> AsyncIterator[str]:
        async for message in self._progress.follow(launch):
            yield message

    def _say(self, launch: Launch, message: str) -> None:
        self._progress.say(launch, message)

    async def spec_for(self, launch: Launch) -> LaunchSpec:
        """What to run, as whom, where: the local facts about a Launch."""
        cfg = self._config()
        sp = cfg.section("spawner")
        account = await self._account(cfg, launch)
        shared = [*cfg.get("users.shared_dirs"), *self.hub_shared_dirs()]
        if os.geteuid() == 0 and shared:
            self._say(launch, "Linking shared folders")
            await accounts.link_shared_dirs(account, shared)
        cwd = (sp["notebook_dir"] or account.home).replace("{username}", launch.user)
        mem = (parse_bytes(sp["mem_limit"]) or 0) if sp["mem_limit"] else 0
        spec = LaunchSpec(
            username=launch.user,
            account=account,
            cmd=launch.cmd,
            env={
                "HOME": account.home,
                "USER": account.name,
                "LOGNAME": account.name,
                "SHELL": account.shell,
                **launch.env,
            },
            cwd=cwd,
            log_path=self.log_path(launch),
            stdin_config=dict(launch.config),
            umask=int(sp["umask"]),
            mem_limit=mem,
            cpu_limit=float(sp["cpu_limit"]),
            max_processes=int(sp["max_processes"]),
            disk_quota=parse_bytes(cfg.get("users.disk_quota") or "0") or 0,
            log_max_bytes=int(sp["log_max_bytes"]),
            server_name=launch.server_name,
        )
        if launch.protocol == "jupyterhub-singleuser":
            # It binds its own port (from JUPYTERHUB_SERVICE_URL) and reads nothing on stdin.
            port = await asyncio.to_thread(free_port, LISTEN_HOST)
            launch.listen_on(LISTEN_HOST, port)
            spec.env = {**spec.env, **launch.env}
            if sp["notebook_dir"]:
                spec.env["JUPYTERHUB_ROOT_DIR"] = cwd
            spec.pass_listen_socket, spec.stdin_config = False, {"port": port}
        else:
            spec.stdin_config.update(
                notebook_dir=cwd,
                mem_limit=mem,
                shared_dirs=await asyncio.to_thread(shared_roots, cfg, self.hub_shared_dirs()),
            )
        return spec

    def _config(self) -> Config:
        if self.cfg is None:
            raise SpawnError("This spawner was made without a configuration.")
        return self.cfg

    def log_path(self, launch: Launch) -> Path:
        logs = self._config().data_dir / "logs"
        if launch.server_name:
            return logs / launch.user / f"{launch.server_name}.log"
        return logs / f"{launch.user}.log"

    async def _account(self, cfg: Config, launch: Launch) -> Account:
        name = launch.user
        if os.geteuid() != 0:
            return await asyncio.to_thread(accounts.unprivileged_account, cfg.data_dir, name)
        await accounts.ensure_account(
            name,
            create=bool(cfg.get("users.create_system_users")),
            home_mode=int(cfg.get("users.home_mode")),
            creating=lambda: self._say(launch, "Creating the Unix account"),
        )
        return await asyncio.to_thread(
            accounts.lookup_account, name, uid_min=int(cfg.get("spawner.uid_min"))
        )

    # -- the process half ------------------------------------------------------------------

    async def start_process(self, spec: LaunchSpec) -> Proc:
        _refuse_root(spec)
        # Forking, exec and the log/cgroup file work can stall on a busy machine: off the loop.
        popen, port, config = await asyncio.to_thread(self._launch, spec)
        ticks = start_ticks(popen.pid) or 0
        self._watch(popen, ticks)
        extra = await asyncio.to_thread(_confine, spec, popen.pid)
        await self._send_config(popen, ticks, spec, config)
        log.info("started server for %s: pid %d, port %d", spec.username, popen.pid, port)
        return Proc(popen.pid, ticks, spec.listen_host, port, extra)

    def _launch(self, spec: LaunchSpec) -> tuple[subprocess.Popen[bytes], int, dict[str, Any]]:
        config = dict(spec.stdin_config)
        apply_quota(spec)
        logfd, oldfd = open_server_logs(spec.log_path, spec.log_max_bytes)
        sock = None
        try:
            sock, port = _listen_socket(spec, config)
            # minihub's server pumps its output into these, capped (singleuser/__main__.py)
            config["log"] = {"rotate_fd": oldfd, "max_bytes": spec.log_max_bytes}
            return self._popen(spec, logfd, oldfd, sock), port, config
        finally:
            os.close(logfd)
            os.close(oldfd)
            if sock is not None:
                sock.close()  # the child holds its own copy now

    def _popen(
        self, spec: LaunchSpec, logfd: int, oldfd: int, sock: socket.socket | None
    ) -> subprocess.Popen[bytes]:
        user, group, extra = drop_to(spec.account)
        try:
            return subprocess.Popen(
                isolated(spec.cmd),
                stdin=subprocess.PIPE,
                stdout=logfd,
                stderr=logfd,
                cwd=spec.cwd,
                env=launch_env(spec),
                umask=spec.umask,
                start_new_session=True,
                close_fds=True,
                pass_fds=(oldfd, sock.fileno()) if sock is not None else (oldfd,),
                user=user,
                group=group,
                extra_groups=extra,
            )
        except OSError as e:
            raise _start_error(spec, e) from None

    async def _send_config(
        self, popen: subprocess.Popen[bytes], ticks: int, spec: LaunchSpec, config: dict[str, Any]
    ) -> None:
        assert popen.stdin is not None
        data = (json.dumps(config) + "\n").encode()
        try:
            # Smaller than a pipe buffer, so this never blocks.
            popen.stdin.write(data)
            popen.stdin.close()
        except BrokenPipeError:
            popen.stdin = None
            status = await self._wait_exit(popen.pid, ticks, 2.0)
            raise SpawnError(
                f"The server for {spec.username} exited at once (status {status}).",
                log_tail=await asyncio.to_thread(tail_log, spec.log_path),
            ) from None

    # -- reaping -------------------------------------------------------------------------

    def _watch(self, popen: subprocess.Popen[bytes], ticks: int) -> None:
        """Reap the child as soon as it exits: the pidfd becomes readable then."""
        pid = popen.pid
        self._children[pid] = (popen, ticks)
        fd = os.pidfd_open(pid)
        self._pidfds[pid] = fd
        asyncio.get_running_loop().add_reader(fd, self._reap, pid)

    def _reap(self, pid: int) -> None:
        if pid not in self._children:
            return
        popen, ticks = self._children[pid]
        if popen.poll() is None:
            return
        if len(self._exited) >= _MAX_EXITED:
            del self._exited[next(iter(self._exited))]
        self._exited[(pid, ticks)] = popen.returncode
        del self._children[pid]
        self._unwatch(pid)
        log.info("server pid %d exited with status %d", pid, popen.returncode)
        self._exited_now(pid, ticks)

    def _exited_now(self, pid: int, ticks: int) -> None:
        if self.on_exit is not None:
            self.on_exit({"pid": pid, "start_ticks": ticks})

    def _unwatch(self, pid: int) -> None:
        fd = self._pidfds.pop(pid, None)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    # -- poll / stop ---------------------------------------------------------------------

    async def poll_process(self, proc: Proc) -> int | None:
        return self._poll(proc.pid, proc.start_ticks)

    def _poll(self, pid: int, ticks: int) -> int | None:
        self._reap(pid)  # an own child that just exited: collect its real status
        if (pid, ticks) in self._exited:
            return self._exited[(pid, ticks)]
        info = proc_stat(pid)
        if info is None or info.state == "Z" or info.start_ticks != ticks:
            return UNKNOWN_EXIT
        return None

    async def stop_process(self, proc: Proc, timeout: float) -> None:
        """SIGTERM the group, SIGKILL what is left after `timeout`, then empty the server's
        cgroup (kernels that left the group with setsid are still in it)."""
        alive = self._poll(proc.pid, proc.start_ticks) is None
        if alive:
            signal_group(proc.pid, signal.SIGTERM)
            await self._wait_exit(proc.pid, proc.start_ticks, timeout)
        # Whatever is left of the group (a kernel ignoring SIGTERM) and of the user's
        # cgroup (kernels that left the group with setsid) gets SIGKILL.
        if alive or await asyncio.to_thread(self._group_alive, proc):
            signal_group(proc.pid, signal.SIGKILL)
        cg = UserCgroup.from_paths(list(proc.extra.get("cgroup", [])))
        await asyncio.to_thread(cg.kill_all)
        await self._wait_exit(proc.pid, proc.start_ticks, _KILL_WAIT)
        await self._wait_group_gone(proc, _KILL_WAIT)
        await self._wait_cgroup_empty(cg, _KILL_WAIT)
        await asyncio.to_thread(self._tidy_after, proc, cg)
        log.info("stopped server pid %d", proc.pid)

    @staticmethod
    def _tidy_after(proc: Proc, cg: UserCgroup) -> None:
        """What a stopped server leaves: its own group, now empty; the user's group once no
        other server of the user has one below it; its kernels' dirs if it was killed."""
        cg.remove()
        UserCgroup.from_paths(list(proc.extra.get("user_cgroup", []))).remove_unused()
        uid = proc.extra.get("uid")
        if isinstance(uid, int) and uid > 0 and os.geteuid() == 0:
            sweep_dead_dirs({uid})

    def leftovers(self) -> set[str]:
        return cgroups.leftover_users()

    async def tidy(self, names: Collection[str], others: Collection[str] = ()) -> None:
        def work() -> None:
            for name in names:
                cgroups.remove_leftovers(name, leaves=True)
            for name in others:
                cgroups.remove_leftovers(name, leaves=False)
            if os.geteuid() == 0:
                uids = set()
                for name in names:
                    with contextlib.suppress(KeyError):
                        uids.add(pwd.getpwnam(name).pw_uid)
                n = sweep_dead_dirs(uids - {0})
                if n:
                    log.info("removed %d kernel dirs of servers that are gone", n)

        await asyncio.to_thread(work)

    def _group_alive(self, proc: Proc) -> bool:
        """Members of the dead leader's group remain (only ones that are provably ours)."""
        return bool(group_members(proc.pid, proc.start_ticks, proc.extra.get("uid")))

    async def _wait_exit(self, pid: int, ticks: int, timeout: float) -> int | None:
        """Wait (polling /proc, bounded) until the process is gone; its status if known."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            status = self._poll(pid, ticks)
            if status is not None or loop.time() >= deadline:
                return status
            await asyncio.sleep(_POLL_INTERVAL)

    async def _wait_cgroup_empty(self, cg: UserCgroup, timeout: float) -> None:
        """Until the SIGKILLed members of the server's cgroup (kernels in a session of their
        own) are gone: a stop returns with nothing of the server left (bounded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while cg.enabled and loop.time() < deadline:
            left: set[int] = await asyncio.to_thread(cg.pids)
            if not left:
                return
            await asyncio.to_thread(cg.kill_all)  # one that forked meanwhile
            await asyncio.sleep(_POLL_INTERVAL)

    async def _wait_group_gone(self, proc: Proc, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # Scanning /proc takes a while on a busy machine: in a thread.
        while await asyncio.to_thread(self._group_alive, proc) and loop.time() < deadline:
            await asyncio.sleep(_POLL_INTERVAL)

    def oom_killed_process(self, proc: Proc) -> bool:
        """True if the kernel killed something of this server's user for lack of memory."""
        # The victim's own group counts the kill (v1 does not count it in the parents).
        cg = UserCgroup.from_paths(list(proc.extra.get("cgroup", [])))
        return cg.enabled and cg.oom_killed_recently(int(proc.extra.get("oom_base", 0)))

    async def close(self) -> None:
        for pid in list(self._pidfds):
            self._unwatch(pid)
        for popen, _ in self._children.values():
            # The server outlives the hub by design. Mark the Popen as settled so it neither
            # warns about a running child nor reaps it behind a later hub's back.
            popen.returncode = UNKNOWN_EXIT
        self._children.clear()


# -- helpers ------------------------------------------------------------------------------


def _proc(state: State) -> Proc:
    """The process a stored state names (the extra keys are the cgroup and such)."""
    extra = {k: v for k, v in state.items() if k not in ("pid", "start_ticks", "log")}
    return Proc(
        int(state.get("pid") or 0), int(state.get("start_ticks") or 0), LISTEN_HOST, 0, extra
    )


def shared_roots(cfg: Config, extra: list[str] | None = None) -> list[str]:
    """Where links in a home may lead: [users] shared_dirs, the admin page's class folders
    (`extra`) and what /etc/skel links to.

    All are chosen by the operator; a link a user makes elsewhere stays refused.
    """
    roots = [os.path.realpath(d) for d in [*cfg.get("users.shared_dirs"), *(extra or [])]]
    try:
        for entry in os.scandir(SKEL):
            if entry.is_symlink():
                roots.append(os.path.realpath(entry.path))
    except OSError:
        pass
    return sorted(set(roots))


def free_port(host: str) -> int:
    """A port nobody listens on now, for a server that binds it itself moments later: one
    below the kernel's ephemeral range when it can, because the hub's own outgoing
    connections (hundreds, proxying) take their local ports from that range and one could
    take this port in between (seen with 300 servers: "Address already in use")."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    high = _ephemeral_low()
    low = max(1024, high - 16384)
    for port in random.sample(range(low, high), min(64, high - low)):
        # Reserved before it is tried: trying binds it for a moment, and one handed out
        # already must not be bound then (its server, binding it, got "Address already in
        # use" about once in 3,000 spawns, 20 at a time).
        if not _hand_out(port):
            continue
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                _take_back(port)
                continue
        return port
    with socket.socket(family, socket.SOCK_STREAM) as sock:  # all taken: any free one
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# Ports given out lately, not yet bound by their server: two spawns at once must not get the
# same one (20 at a time drew the same port about once in 3,000 spawns).
_HANDED: dict[int, float] = {}
_HANDED_LOCK = threading.Lock()
_HANDED_SECONDS = 120.0  # longer than a server takes to bind its port


def _hand_out(port: int) -> bool:
    now = time.monotonic()
    with _HANDED_LOCK:
        for old in [p for p, t in _HANDED.items() if now - t > _HANDED_SECONDS]:
            del _HANDED[old]
        if port in _HANDED:
            return False
        _HANDED[port] = now
        return True


def _take_back(port: int) -> None:
    with _HANDED_LOCK:
        _HANDED.pop(port, None)


_TCP_STATES = {"01": "ESTABLISHED", "06": "TIME_WAIT", "08": "CLOSE_WAIT", "0A": "LISTEN"}


def port_holders(port: int) -> str:
    """Who has a TCP socket on local `port` (from /proc/net/tcp and tcp6): "LISTEN by uid
    1001, ...": what an "Address already in use" was about."""
    found = [
        f"{_TCP_STATES.get(cols[3], 'state ' + cols[3])} by uid {cols[7]}"
        for cols in tcp_rows()
        if int(cols[1].rsplit(":", 1)[1], 16) == port
    ]
    return ", ".join(found[:8])


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return max(1025, int(f.read().split()[0]))
    except (OSError, ValueError, IndexError):
        return 32768


def _refuse_root(spec: LaunchSpec) -> None:
    if os.geteuid() == 0 and spec.account.uid == 0:
        raise SpawnError("minihub never runs a server as root.", status=403)


def launch_env(spec: LaunchSpec) -> dict[str, str]:
    """spec.env exactly, plus the login variables a shell would set if they are missing."""
    env = dict(spec.env)
    acct = spec.account
    env.setdefault("HOME", acct.home)
    env.setdefault("USER", acct.name)
    env.setdefault("LOGNAME", acct.name)
    env.setdefault("SHELL", acct.shell)
    env.setdefault("PATH", DEFAULT_PATH)
    return env


def _confine(spec: LaunchSpec, pid: int) -> dict[str, Any]:
    """Put the new process in its user's cgroup; what a later hub needs to find it again.

    Called before the process gets its config: until then it only waits on stdin, so
    nothing heavy runs unlimited.
    """
    oom_first(pid)
    extra, join, counted = server_cgroup(spec)
    if join:
        counted = UserCgroup.from_paths(join).add(pid) and counted
    if spec.max_processes and not counted:
        limit_nproc(pid, spec.max_processes)
    return extra


def server_cgroup(spec: LaunchSpec) -> tuple[dict[str, Any], list[str], bool]:
    """Set up the user's groups (the limits, shared by the user's servers) and the server's
    own below them: (what the state keeps, the groups to join, whether they count
    processes). Everything the server starts stays in its own group, so stopping one of a
    user's servers never touches another."""
    user_cg, cg = UserCgroup.for_server(spec.username, spec.server_name)
    extra: dict[str, Any] = {
        "uid": spec.account.uid,
        "cgroup": cg.paths(),
        "user_cgroup": user_cg.paths(),
    }
    limits = (spec.mem_limit, spec.cpu_limit, spec.max_processes)
    made = False
    for _ in range(3):  # another hub's tidying may remove the user's group between the mkdirs
        with cgroups.SETUP_LOCK:  # this hub's never does
            made = cg.enabled and user_cg.setup(*limits) and cg.setup(0, 0, 0)
        if made or not cg.enabled:
            break
    if not made:
        return extra, [], False
    extra["oom_base"] = cg.oom_kills()
    return extra, cg.paths(), user_cg.limits_processes


def limit_nproc(pid: int, limit: int) -> None:
    """Without a pids cgroup: RLIMIT_NPROC, which counts every process (and thread) of the
    user's uid, so a fork bomb stops there too (less precisely: a login shell counts)."""
    try:
        resource.prlimit(pid, resource.RLIMIT_NPROC, (limit, limit))
    except OSError as e:
        log.warning("cannot limit the processes of pid %d: %s", pid, e)


_quota_said: set[str] = set()


def apply_quota(spec: LaunchSpec) -> None:
    """Set the user's disk quota ([users] disk_quota) before the server starts; say once
    per reason, plainly, when the home's filesystem cannot have one."""
    if not spec.disk_quota or os.geteuid() != 0:
        return
    why = apply_disk_quota(spec.account, spec.disk_quota)
    if why and why not in _quota_said:
        _quota_said.add(why)
        log.warning("[users] disk_quota is not applied: %s", why)


def oom_first(pid: int | str) -> None:
    """Make a user's server (and the kernels it starts) the OOM killer's choice before the
    hub: when memory runs out a user's process goes, with a message, not the hub serving
    everyone. Raising the score needs no privilege, unlike protecting the hub."""
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write(str(USER_OOM_SCORE_ADJ))
    except OSError as e:
        log.warning("cannot set oom_score_adj of %s: %s", pid, e)


def _listen_socket(spec: LaunchSpec, config: dict[str, Any]) -> tuple[socket.socket | None, int]:
    """Bind the server's socket here so its port is known before it runs and nobody can
    grab it in between; without pass_listen_socket, only pick a free port."""
    family = socket.AF_INET6 if ":" in spec.listen_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((spec.listen_host, int(config.get("port") or 0)))
        port = int(sock.getsockname()[1])
        if not spec.pass_listen_socket:
            sock.close()
            config["port"] = port
            return None, port
        sock.listen(128)
    except OSError as e:
        sock.close()
        port = int(config.get("port") or 0)
        where = f"{spec.listen_host}:{port}" if port else spec.listen_host
        message = f"Cannot listen on {where} for the server: {e}"
        if e.errno == errno.EADDRINUSE and port:  # handed out free, taken since
            log.warning("port %d is taken: %s", port, port_holders(port) or "by nobody now")
            raise PortTaken(message) from None
        raise SpawnError(message) from None
    config["listen_fd"] = sock.fileno()
    return sock, port


def _start_error(spec: LaunchSpec, e: OSError) -> SpawnError:
    name = spec.account.name
    if e.filename == spec.cwd:
        return SpawnError(
            f"The server's directory {spec.cwd} does not exist or {name} cannot "
            "enter it (check [spawner] notebook_dir)."
        )
    if isinstance(e, PermissionError):
        return SpawnError(
            f"{name} may not run {spec.cmd[0]}: permission denied. Set "
            "[spawner] python to an interpreter every user can read and run."
        )
    if isinstance(e, FileNotFoundError) and e.filename not in (None, spec.cmd[0]):
        return SpawnError(f"Cannot start the server for {name}: {e.filename} does not exist.")
    if isinstance(e, FileNotFoundError):
        return SpawnError(
            f"Cannot run {spec.cmd[0]}: no such file (check [spawner] cmd and [spawner] python)."
        )
    return SpawnError(f"Cannot start the server for {name}: {e.strerror or e}")


def group_members(pgid: int, since_ticks: int, uid: int | None) -> list[int]:
    """Live processes in process group `pgid` that started no earlier than its leader and
    belong to `uid`: a later process reusing the number cannot match all three."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        info = proc_stat(int(entry))
        if (
            info
            and info.pgrp == pgid
            and info.state != "Z"
            and info.start_ticks >= since_ticks
            and (uid is None or info.uid == uid)
        ):
            found.append(int(entry))
    return found


class _Usage(NamedTuple):
    pid: int
    ppid: int
    session: int
    cpu_ticks: int  # its own and its reaped children's user + system time
    rss_pages: int


def _usage_of(pid: int) -> _Usage | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    f_ = text[text.rfind(")") + 2 :].split()
    if f_[0] in ("Z", "X"):
        return None
    ticks = sum(int(x) for x in f_[11:15])
    return _Usage(pid, int(f_[1]), int(f_[3]), ticks, int(f_[21]))


def _tree(root: int, since_ticks: int) -> list[int]:
    """The server process and its live descendants (without a cgroup to list them)."""
    info = proc_stat(root)
    if info is None or info.start_ticks != since_ticks:
        return []
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st is not None:
                children.setdefault(st.ppid, []).append(int(entry))
    found: list[int] = []
    todo = [root]
    while todo and len(found) < 100_000:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


_KERNEL_MARKS = (b"ipykernel", b"zygote")


def _is_kernel(u: _Usage, server: int) -> bool:
    """A kernel leads its own session (jupyter_client and the zygote start it so) and runs
    ipykernel or was forked from minihub's zygote (whose command line it keeps)."""
    if u.pid == server or u.session != u.pid:
        return False
    try:
        with open(f"/proc/{u.pid}/cmdline", "rb") as f:
            cmd = f.read(8192)
    except OSError:
        return False
    return any(m in cmd for m in _KERNEL_MARKS)


def process_usage(proc: Proc) -> Usage | None:
    """Memory, CPU time and kernels of a server: its cgroup's counters when it has one,
    else the resident set and times of its process tree, from /proc."""
    cg = UserCgroup.from_paths(list(proc.extra.get("cgroup", [])))
    pids = cg.pids() if cg.enabled else set()
    if proc.pid not in pids and not _tree(proc.pid, proc.start_ticks):
        return None  # not running (any more): nothing of it to count
    if not pids:
        pids = set(_tree(proc.pid, proc.start_ticks))
    procs = [u for u in map(_usage_of, sorted(pids)) if u is not None]
    memory = cg.memory_current() if cg.enabled else None
    if memory is None:
        memory = sum(u.rss_pages for u in procs) * os.sysconf("SC_PAGE_SIZE")
    cpu = cg.cpu_seconds() if cg.enabled else None
    if cpu is None:
        cpu = sum(u.cpu_ticks for u in procs) / os.sysconf("SC_CLK_TCK")
    limits = UserCgroup.from_paths(list(proc.extra.get("user_cgroup", [])))
    return Usage(
        memory=memory,
        memory_limit=limits.memory_limit() if limits.enabled else None,
        cpu_seconds=cpu,
        kernels=sum(1 for u in procs if _is_kernel(u, proc.pid)),
    )


def open_log(path: Path, uid: int, gid: int) -> int:
    """Open the server's log for appending, owned by the user, mode 0600; rotate if big.

    The directory belongs to the hub, so the user cannot plant a link there; O_NOFOLLOW and
    the regular-file check are a second line of defence.
    """
    path.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    try:
        if os.lstat(path).st_size > LOG_ROTATE_BYTES:
            os.replace(path, str(path) + ".1")
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise SpawnError(f"The server log {path} is not a plain file; remove it.")
        if os.geteuid() == 0:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_server_logs(path: Path, max_bytes: int) -> tuple[int, int]:
    """The server's log and its rotated copy (<path>.1), both owned by the hub, mode 0600:
    the server writes them only through these fds, through its capped log pump, and cannot
    open them by name to grow them. Rotated here first if the log is already past the cap."""
    path.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    old = Path(str(path) + ".1")
    try:
        if os.lstat(path).st_size >= max_bytes:
            os.replace(path, old)
    except FileNotFoundError:
        pass
    fds = []
    try:
        for p, flags in ((path, os.O_RDWR | os.O_APPEND), (old, os.O_RDWR)):
            fd = os.open(p, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            fds.append(fd)
            _own_log(fd, p)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds[0], fds[1]


def _own_log(fd: int, path: Path) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        raise SpawnError(f"The server log {path} is not a plain file; remove it.")
    if st.st_uid != os.geteuid():  # a log an earlier minihub let the user own
        os.fchown(fd, os.geteuid(), os.getegid())
    os.fchmod(fd, 0o600)


def tail_log(path: Path | str, lines: int = 20) -> str:
    """The last `lines` lines of a log (reads at most 64 KiB), "" if there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(fd).st_size
        f.seek(max(0, size - _TAIL_BYTES))
        data = f.read(_TAIL_BYTES)
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""
