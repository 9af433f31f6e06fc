"""ForkSpawner: user servers forked from a pre-imported root "zygote" instead of exec'd anew.

The zygote imports the user server's modules once; each spawn forks it, drops privileges as
LocalSpawner does and runs the server, so start-up skips the imports and their pages stay shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import logging
import os
import resource
import runpy
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

from .. import forkloop
from ..config import Config
from ..errors import SpawnError
from ..kernels.zygote import USER_ENV_VAR
from ..procfs import start_ticks
from ..setting import Setting
from .accounts import drop_to
from .base import UNKNOWN_EXIT
from .kernel_template import KernelTemplate, user_python, zygote_env
from .local import (
    USER_OOM_SCORE_ADJ,
    LocalSpawner,
    _listen_socket,
    _refuse_root,
    _start_error,
    apply_quota,
    launch_env,
    oom_first,
    open_server_logs,
    server_cgroup,
)
from .process import LaunchSpec, Proc

log = logging.getLogger("minihub.spawner")

SERVER_MODULE = "minihub.singleuser"
_MSG_MAX = 1 << 20
_REPLY_TIMEOUT = 30.0
_LISTEN_FD = 3  # where the server finds its listening socket, as with LocalSpawner
_OLD_LOG_FD = 4  # the log's rotated copy, which the server's log pump writes to
_ZYGOTE_FD = 5  # its end of its channel to the kernel template (kernel_template.py)
_PIPE_BUF = 60_000  # fits a pipe's default buffer (64 KiB); more: the buffer is grown


class ForkSpawner(LocalSpawner):
    """LocalSpawner whose default server (`<hub python> -m minihub.singleuser`) is forked
    from the zygote; any other command, and poll/stop/re-adoption, work as in LocalSpawner."""

    name = "fork"
    settings: ClassVar[list[Setting]] = [
        *LocalSpawner.settings,
        Setting(
            "spawner",
            "fork_server",
            bool,
            True,
            "With class = \"fork\": start minihub's own server (empty cmd, the hub's python) "
            "by forking a process that has imported it already: faster spawns, memory "
            'shared between users. false: exec each, as class = "local".',
        ),
        Setting(
            "spawner",
            "kernel_template",
            bool,
            True,
            'With class = "fork", as root, and a user environment: fork every server\'s '
            "kernels from one process that has imported ipykernel, so kernels share its "
            "pages across users and a spawn imports nothing. false: each server execs its "
            "own kernel zygote.",
        ),
    ]

    def __init__(self, cfg: Config | None = None) -> None:
        super().__init__(cfg)
        self._zygote: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._lock = asyncio.Lock()
        self._send_lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._forked: dict[int, int] = {}  # pid -> start ticks, until its exit is reported
        self._early: dict[int, int] = {}  # exits reported before start() recorded the pid
        self._templates: dict[str, KernelTemplate] = {}  # by user environment python

    async def start_process(self, spec: LaunchSpec) -> Proc:
        if not forkable(spec.cmd):
            return await super().start_process(spec)
        _refuse_root(spec)
        await self._ensure_zygote()
        prepared = asyncio.ensure_future(asyncio.to_thread(self._prepare, spec))
        try:
            fds, sock, port, req, extra = await asyncio.shield(prepared)
        except asyncio.CancelledError:  # the thread goes on: close what it hands back
            prepared.add_done_callback(_discard_prepared)
            raise
        try:
            reply = await self._ask(req, fds + ([sock.fileno()] if sock else []))
        finally:
            for fd in fds:
                os.close(fd)
            if sock is not None:
                sock.close()
        if "error" in reply:
            err = reply["error"]
            raise _start_error(spec, OSError(err["errno"], err["strerror"], err["filename"]))
        pid = int(reply["pid"])
        ticks = start_ticks(pid) or 0
        self._remember(pid, ticks)
        log.info("forked server for %s: pid %d, port %d", spec.username, pid, port)
        return Proc(pid, ticks, spec.listen_host, port, extra)

    def _prepare(
        self, spec: LaunchSpec
    ) -> tuple[list[int], socket.socket | None, int, dict[str, Any], dict[str, Any]]:
        """The fds the child gets ([log, rotated log, private pipe]), its socket and port,
        the request for the fork server (nothing secret in it) and the Proc's extra."""
        config = dict(spec.stdin_config)
        apply_quota(spec)
        # The child joins these groups itself, while still root and before any user code.
        extra, join, counted = server_cgroup(spec)
        uid, gid, groups = drop_to(spec.account)  # all None for an unprivileged hub
        nproc = 0 if counted else spec.max_processes
        fds = list(open_server_logs(spec.log_path, spec.log_max_bytes))
        sock = None
        zygote_fd = None
        try:
            sock, port = _listen_socket(spec, config)
            if sock is not None:
                config["listen_fd"] = _LISTEN_FD
            config["log"] = {"rotate_fd": _OLD_LOG_FD, "max_bytes": spec.log_max_bytes}
            zygote_fd = self._kernel_zygote(spec, config, join, nproc)
            if zygote_fd is not None:
                config["kernel_zygote_fd"] = _ZYGOTE_FD
            fds.append(private_pipe(launch_env(spec), config))
            if zygote_fd is not None:  # the fourth: _arrange_fds finds it there
                fds.append(zygote_fd)
        except BaseException:
            for fd in fds:
                os.close(fd)
            if zygote_fd is not None and zygote_fd not in fds:
                os.close(zygote_fd)
            if sock is not None:
                sock.close()
            raise
        req = {
            "argv": spec.cmd[1:],
            "uid": uid,
            "gid": gid,
            "groups": groups,
            "cwd": spec.cwd,
            "umask": spec.umask,
            "nproc": nproc,
            "cgroup": join,
            "listen": sock is not None,
            "zygote": zygote_fd is not None,
        }
        return fds, sock, port, req, extra

    def _kernel_zygote(
        self, spec: LaunchSpec, config: dict[str, Any], join: list[str], nproc: int
    ) -> int | None:
        """The server's end of its channel to the kernel template, which forks its kernels,
        when they run a user environment (root hubs only); else None: it execs its own
        zygote."""
        python = user_python(spec.env.get(USER_ENV_VAR, ""))
        uid, gid, groups = drop_to(spec.account)
        if not python or uid is None or not config.get("kernel_zygote", True):
            return None
        if not (self.cfg is None or self.cfg.get("spawner.kernel_template")):
            return None
        tpl = self._templates.get(python)
        if tpl is None:
            tpl = self._templates[python] = KernelTemplate(python)
        acct = spec.account
        env = launch_env(spec)
        return tpl.channel_for(
            {
                "uid": uid,
                "gid": gid,
                "groups": groups,
                "cgroup": join,
                "nproc": nproc,
                "umask": spec.umask,
                "oom_score_adj": USER_OOM_SCORE_ADJ,
                "cwd": spec.cwd,
                "env": zygote_env(acct.home, acct.name, acct.shell, env["PATH"]),
            }
        )

    # -- talking to the zygote -------------------------------------------------------------

    async def _ensure_zygote(self) -> None:
        async with self._lock:
            if self._sock is not None and self._zygote and self._zygote.poll() is None:
                return
            self._drop_sock()
            zygote, ours = await asyncio.to_thread(_start_zygote, self._kernels_from_hub())
            self._zygote, self._sock = zygote, ours
            asyncio.get_running_loop().add_reader(ours.fileno(), self._on_message, ours)
            log.info("fork server started: pid %d", zygote.pid)

    def _kernels_from_hub(self) -> bool:
        """Do servers' kernels run the hub's Python (then preloading ipykernel here shares its
        pages with every kernel zygote), not a user environment's (docs/environments.md)?"""
        env = str(self.cfg.get("spawner.user_env")) if self.cfg is not None else ""
        return not (env and os.path.isfile(os.path.join(env, "bin", "python")))

    async def _ask(self, req: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        assert self._sock is not None
        req["id"] = rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[rid] = fut
        try:
            async with asyncio.timeout(_REPLY_TIMEOUT):
                await self._send(self._sock, json.dumps(req).encode(), fds)
                return await fut
        except (OSError, TimeoutError) as e:
            raise SpawnError(f"The fork server did not start the server: {e}") from None
        finally:
            self._replies.pop(rid, None)

    async def _send(self, sock: socket.socket, data: bytes, fds: list[int]) -> None:
        """Send one request, waiting while the socket is full (many spawns at once: the
        zygote forks one at a time). One sender at a time: a loop has one writer per fd."""
        loop = asyncio.get_running_loop()
        async with self._send_lock:
            while True:
                try:
                    socket.send_fds(sock, [data], fds)
                    return
                except BlockingIOError:
                    writable: asyncio.Future[None] = loop.create_future()
                    loop.add_writer(sock.fileno(), _settle, writable)
                    try:
                        await writable
                    finally:
                        loop.remove_writer(sock.fileno())

    def _on_message(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(_MSG_MAX)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the zygote died: fail waiting starts, start a new one next time
            self._drop_sock()
            for fut in self._replies.values():
                if not fut.done():
                    fut.set_exception(OSError("the fork server exited"))
            return
        msg = json.loads(data)
        if "exit" in msg:
            self._record_exit(int(msg["exit"]), int(msg["status"]))
        else:
            waiting = self._replies.get(int(msg.get("id", 0)))
            if waiting is not None and not waiting.done():
                waiting.set_result(msg)

    def _drop_sock(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _poll(self, pid: int, ticks: int) -> int | None:
        status = super()._poll(pid, ticks)
        if status == UNKNOWN_EXIT and self._forked.get(pid) == ticks and self._zygote_alive():
            return None  # gone, and its real exit status is on its way from the zygote
        return status

    def _zygote_alive(self) -> bool:
        return self._sock is not None and self._zygote is not None and self._zygote.poll() is None

    def _remember(self, pid: int, ticks: int) -> None:
        if pid in self._early:
            self._exited[(pid, ticks)] = self._early.pop(pid)
        else:
            self._forked[pid] = ticks

    def _record_exit(self, pid: int, status: int) -> None:
        ticks = self._forked.pop(pid, None)
        if ticks is None:
            self._early[pid] = status
            return
        self._exited[(pid, ticks)] = status
        log.info("server pid %d exited with status %d", pid, status)
        self._exited_now(pid, ticks)

    async def close(self) -> None:
        """The zygote exits when its socket closes; servers it forked keep running."""
        for tpl in self._templates.values():
            await asyncio.to_thread(tpl.close)
        self._drop_sock()
        if self._zygote is not None:
            try:
                await asyncio.to_thread(self._zygote.wait, 5)
            except subprocess.TimeoutExpired:
                self._zygote.kill()
                await asyncio.to_thread(self._zygote.wait, 5)
        await super().close()


def _discard_prepared(fut: asyncio.Future[Any]) -> None:
    """The fds and socket `_prepare` made for a start that was cancelled meanwhile."""
    if fut.cancelled() or fut.exception() is not None:
        return
    fds, sock = fut.result()[:2]
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    if sock is not None:
        sock.close()


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def private_pipe(env: dict[str, str], config: dict[str, Any]) -> int:
    """The read end of a pipe holding what only this server may see: its environment (a
    length-prefixed JSON object) and then its launch config (one JSON line, its secret in it).

    The fork server hands the read end to the child as its stdin without reading it, so no
    secret ever enters the fork server's memory, which every later server is a copy of.
    """
    head = json.dumps(env).encode()
    data = b"%08d" % len(head) + head + (json.dumps(config) + "\n").encode()
    r, w = os.pipe()
    try:
        if len(data) > _PIPE_BUF:
            _grow_pipe(w, len(data))
        os.write(w, data)  # all of it at once: it fits the pipe's buffer
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    return r


def _grow_pipe(fd: int, size: int) -> None:
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
    except OSError as e:
        raise SpawnError(
            f"The server's environment and launch config are too large ({size} "
            f"bytes: {e.strerror}); shorten [spawner] environment."
        ) from None


# What the fork server starts with: every server is a copy of its memory, and clearing
# os.environ later does not erase the environment block on its stack, which a user's code
# can read there (/proc/self/stat gives its addresses). So not the hub's own environment
# (an operator's Environment= may hold a cloud key or a bind password), only this.
FORK_SERVER_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
_FORK_SERVER_PASSED = (
    "PYTHONPATH",
    "PYTHONDONTWRITEBYTECODE",
)  # how the hub's python finds minihub


def fork_server_env() -> dict[str, str]:
    return {**FORK_SERVER_ENV, **{k: os.environ[k] for k in _FORK_SERVER_PASSED if k in os.environ}}


def _start_zygote(preload_kernels: bool = True) -> tuple[subprocess.Popen[bytes], socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    flag = [] if preload_kernels else ["--no-kernel-preload"]
    with theirs:
        # Its own session: a Ctrl-C meant for the hub's terminal does not reach it.
        proc = subprocess.Popen(
            [sys.executable, "-m", "minihub.spawner.forkserver", str(theirs.fileno()), *flag],
            stdin=subprocess.DEVNULL,
            cwd="/",
            env=fork_server_env(),
            pass_fds=(theirs.fileno(),),
            start_new_session=True,
            close_fds=True,
        )
    ours.setblocking(False)
    return proc, ours


def forkable(cmd: list[str]) -> bool:
    """`<the hub's python> -m MODULE` or `-c CODE`: what a fork of the zygote can run (the
    default server, minihub.singleuser, is the one it has imported already)."""
    return (
        len(cmd) == 3
        and cmd[1] in ("-m", "-c")
        and os.path.realpath(cmd[0]) == os.path.realpath(sys.executable)
    )


# -- the zygote process ---------------------------------------------------------------------


def zygote(fd: int, preload_kernels: bool = True) -> None:
    """Import the server once, then fork one child per request until the hub goes away.
    `preload_kernels`: also import ipykernel, for kernels that run the hub's Python."""
    from minihub.kernels import zygote as kernel_zygote
    from minihub.singleuser import preload

    preload.warm()

    if preload_kernels:
        with contextlib.suppress(Exception):  # servers' kernel zygotes share ipykernel's pages
            kernel_zygote.preload()

    sock = socket.socket(fileno=fd)
    exits = forkloop.ChildExits()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    forkloop.settle()

    def on_request() -> bool | None:
        msg, fds, _, _ = socket.recv_fds(sock, _MSG_MAX, 5)
        if not msg:
            return True  # the hub is gone: stop serving (the servers forked keep running)
        try:
            reply = _fork_one(json.loads(msg), fds, sock, exits)
        finally:
            for f in fds:
                os.close(f)
        return send(reply)

    def send(msg: dict[str, Any]) -> bool | None:
        try:
            sock.send(json.dumps(msg).encode())
        except (BrokenPipeError, ConnectionResetError):
            return True  # the hub went away while it waited for this answer: stop serving
        return None

    forkloop.serve(sock, exits, send, on_request)


def _fork_one(
    req: dict[str, Any], fds: list[int], sock: socket.socket, exits: forkloop.ChildExits
) -> dict[str, Any]:
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(err_r)
        sock.close()
        exits.close_in_child()
        _child(req, fds, err_w)  # never returns
    os.close(err_w)
    with os.fdopen(err_r, "rb") as f:
        failure = f.read()  # EOF once the child has dropped privileges (or failed to)
    if failure:
        return {"id": req["id"], "error": json.loads(failure)}
    return {"id": req["id"], "pid": pid}


def _child(req: dict[str, Any], fds: list[int], err_w: int) -> None:
    code = 1
    try:
        _become_user(req, fds, err_w)
        code = _run(req["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - a forked child must never return into the zygote
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _run(argv: list[str]) -> int:
    """What `python -m MODULE` or `python -c CODE` would do, in this already warm process."""
    sys.argv = [argv[0]] if argv[0] == "-c" else [sys.executable]
    if argv[0] == "-m":
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        # What `python -c` runs: the code the operator configured as the server command.
        exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102
    return 0


def _become_user(req: dict[str, Any], fds: list[int], err_w: int) -> None:
    """Same steps and order as LocalSpawner's Popen: session, cgroup, fds, umask, limits,
    groups, gid, uid, cwd, environment; the first failure goes back to the hub as an OSError."""
    try:
        os.setsid()
        oom_first("self")
        for d in req["cgroup"]:
            Path(d, "cgroup.procs").write_text(str(os.getpid()))
        _arrange_fds(req, fds, err_w)
        os.umask(int(req["umask"]))
        if req["nproc"]:  # no pids cgroup: the per-uid process limit instead
            resource.setrlimit(resource.RLIMIT_NPROC, (int(req["nproc"]), int(req["nproc"])))
        if req["uid"] is not None:
            os.setgroups(req["groups"])
            os.setgid(int(req["gid"]))
            os.setuid(int(req["uid"]))
        os.chdir(req["cwd"])
        env = _read_env(0)
        os.environ.clear()
        os.environ.update(env)
    except (OSError, ValueError, TypeError) as e:
        err = e if isinstance(e, OSError) else OSError(0, f"bad launch data: {e}")
        os.write(
            err_w,
            json.dumps(
                {"errno": err.errno, "strerror": err.strerror, "filename": err.filename}
            ).encode(),
        )
        os._exit(127)
    os.close(err_w)


def _read_env(fd: int) -> dict[str, str]:
    """The environment at the head of the private pipe; the launch config stays behind it
    for the server to read as its stdin."""
    size = int(_read_exactly(fd, 8))
    env = json.loads(_read_exactly(fd, size))
    if not isinstance(env, dict):
        raise TypeError("the environment is not a JSON object")
    return {str(k): str(v) for k, v in env.items()}


def _read_exactly(fd: int, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            raise ValueError("the launch data ended early")
        data += chunk
    return data


def _arrange_fds(req: dict[str, Any], fds: list[int], err_w: int) -> None:
    """stdin: the private pipe; stdout/stderr: the log; fd 3: the socket; fd 4: the rotated
    log; nothing else (the server's log pump takes 1, 2 and 4 over before any kernel runs)."""
    # Out of the way first: a received fd may sit on a number another one is moved to.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds]
    log, old_log, private = high[0], high[1], high[2]
    os.dup2(private, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    if req["listen"]:  # sent after the fds _prepare made
        os.dup2(high[-1], _LISTEN_FD)
    if req.get("zygote"):
        os.dup2(high[3], _ZYGOTE_FD)
    os.dup2(old_log, _OLD_LOG_FD)
    keep = {0, 1, 2, err_w, _OLD_LOG_FD} | ({_LISTEN_FD} if req["listen"] else set())
    keep |= {_ZYGOTE_FD} if req.get("zygote") else set()
    for fd in map(int, os.listdir("/proc/self/fd")):
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


if __name__ == "__main__":
    zygote(int(sys.argv[1]), "--no-kernel-preload" not in sys.argv[2:])
