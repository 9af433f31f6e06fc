"""A pre-imported kernel "zygote": one per user server, forking ipykernel kernels on request.

It imports ipykernel and IPython once and, for each kernel, forks; the child runs the same
`python -c BOOT ...` command an exec'd kernel would, with the kernel's environment and cwd.
The server forks it at start-up, before its event loop, zmq context or any thread exists
(fork_early), so its pages, and the hub's fork server's (which may have imported ipykernel
already), stay shared; without that it is exec'd when the server starts. With a user
environment (MINIHUB_USER_ENV, docs/environments.md) it runs that environment's python, so
that kernels import its packages, never the hub's: as root with the fork spawner, the hub's
kernel template (template.py) forks the kernels itself and speaks this protocol to the server
(`Zygote` is the server's side of both); otherwise it is exec'd.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from typing import Any

from .. import forkloop
from ..procfs import proc_stat

log = logging.getLogger("minihub.kernels")

# What the zygote imports before it forks: what `import ipykernel.kernelapp` and a kernel's
# start would import anyway. No zmq context or thread may exist before a fork.
PRELOAD = ("ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell", "ipykernel.iostream")
# Run with `python -c`: sys.path[0] ('' = the cwd, a notebook dir) goes before any import. A
# user environment's python has no minihub: it imports this module (and forkloop, procfs: no
# other dependency) from the hub's install, then takes that directory out of its sys.path.
COMMAND = """import sys
del sys.path[0]
root = {root!r}
extra = root not in sys.path
if extra:
    sys.path.append(root)
from minihub.kernels import zygote
if extra:
    sys.path.remove(root)
zygote.main()
"""
USER_ENV_VAR = "MINIHUB_USER_ENV"  # set by the hub: the venv kernels run in ("": the server's)
READY_TIMEOUT = 30.0
REPORT_WAIT = 2.0  # seconds for the zygote to report a child that has died
UNKNOWN_EXIT = 1  # a kernel whose exit the zygote could not report (the zygote died)


# --- the zygote process -------------------------------------------------------------------


def user_env() -> str:
    """The user environment kernels run in, if the hub named one that exists here."""
    env = os.environ.get(USER_ENV_VAR, "")
    return env if env and os.path.isfile(os.path.join(env, "bin", "python")) else ""


def kernel_python() -> str:
    """The python the zygote runs and python3 kernels are launched with."""
    env = user_env()
    return os.path.join(env, "bin", "python") if env else sys.executable


def command(code: str = COMMAND) -> str:
    hub_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return code.format(root=hub_root)


def preload() -> None:
    """Import what every kernel imports (also called by the hub's fork server, so that these
    pages are shared by all users' kernels)."""
    for name in PRELOAD:
        __import__(name)


_early: socket.socket | None = None  # the server's end, when it forked its zygote early
_early_pid = 0
_given: socket.socket | None = None  # the server's end of its channel to the kernel template


def adopt(fd: int) -> None:
    """In the server: the hub gave it a channel to its kernel template (template.py), which
    forks this server's kernels and speaks to it as a zygote (launch config
    kernel_zygote_fd)."""
    global _given
    os.set_inheritable(fd, False)  # never into a kernel or terminal exec'd
    _given = socket.socket(fileno=fd)


def fork_early() -> None:
    """In the server, before its event loop starts: fork the zygote (never returns in it)."""
    global _early, _early_pid
    if kernel_python() != sys.executable:
        return  # another python: Zygote.start execs it once the server is up
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        ours.close()
        if sys.path and sys.path[0] in ("", os.getcwd()):
            del sys.path[0]  # the server's start dir, which an exec'd kernel would not have
        close_fds_but(theirs.fileno())  # e.g. the server's listening socket
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        try:
            _zygote(theirs)
        finally:
            os._exit(1)
    theirs.close()
    _early, _early_pid = ours, pid


def discard_early() -> None:
    """The server will not fork kernels after all: the early zygote exits on EOF."""
    global _early
    if _early is not None:
        _early.close()
        _early = None


def close_fds_but(*keep: int) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def main() -> None:
    """Entry of an exec'd zygote: fd argv[1] talks to the server."""
    _zygote(socket.socket(fileno=int(sys.argv[1])))


def _zygote(sock: socket.socket) -> None:
    """Import, then serve fork requests; returns only in a forked kernel, which it runs."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        preload()
    except Exception as e:  # noqa: BLE001 - a kernel exec'd instead will say what is wrong
        _send(sock, {"error": f"cannot import ipykernel: {e}"})
        os._exit(1)
    forkloop.settle()
    request = _serve(sock)
    run_child(request)


def _send(sock: socket.socket, msg: dict[str, Any]) -> None:
    sock.sendall(json.dumps(msg).encode() + b"\n")


def _serve(sock: socket.socket) -> dict[str, Any]:
    """Answer fork requests and report children's exits until the server goes away; returns
    in a forked child, with its request."""
    exits = forkloop.ChildExits()
    _send(sock, {"ready": os.getpid()})
    buf = b""

    def on_request() -> dict[str, Any] | None:
        nonlocal buf
        data = sock.recv(1 << 16)
        if not data:
            os._exit(0)  # the server is gone; kernels notice their parent left and exit
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                exits.close_in_child()
                sock.close()
                return dict(request)
            _send(sock, {"id": request["id"], "pid": pid})
        return None

    return forkloop.serve(sock, exits, lambda msg: _send(sock, msg), on_request)


def run_child(request: dict[str, Any]) -> None:
    """In the child: run `python -c <code> args...` in a new session, then exit (never return
    into the server's frames it was forked from)."""
    code = 1
    try:
        _become(request)
        argv: list[str] = request["argv"]
        exec(compile(argv[2], "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - as python would: print it, exit 1
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            import atexit

            atexit._run_exitfuncs()
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _become(request: dict[str, Any]) -> None:
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.setsid()  # as jupyter_client's launcher: interrupts go to the kernel's process group
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["-c", *request["argv"][3:]]
    _user_site()


def _user_site() -> None:
    """sys.path as this user's python would have it (a zygote forked from the hub's fork
    server has root's user site, if any)."""
    import site

    old = site.USER_SITE
    site.USER_BASE = site.USER_SITE = None
    new = site.getusersitepackages()  # from $HOME, now the user's
    if old and old != new and old in sys.path:
        sys.path.remove(old)
    if site.ENABLE_USER_SITE and os.path.isdir(new) and new not in sys.path:
        site.addsitedir(new)


# --- the server's side --------------------------------------------------------------------


def forkable(cmd: list[str], env: dict[str, str], python: str) -> bool:
    """A `python -c ...` of the zygote's interpreter whose environment imports as its does."""
    if len(cmd) < 3 or cmd[0] != python or cmd[1] != "-c":
        return False
    keys = {k for k in (*env, *os.environ) if k.startswith("PYTHON")}
    return all(env.get(k) == os.environ.get(k) for k in keys)


class Zygote:
    """The server's handle on its zygote: start it, ask for forks, learn children's exits."""

    def __init__(self, cwd: str, python: str) -> None:
        self.cwd = cwd
        self.python = python
        self.pid = 0
        self.exits: dict[int, int] = {}
        self.forked: set[int] = set()
        self._proc: subprocess.Popen[bytes] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ready: asyncio.Future[bool] | None = None
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next = 0
        self._reader_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the zygote in the background (idempotent); forks wait for its imports."""
        if self._ready is not None:
            return
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._reader_task = loop.create_task(self._run())

    async def _run(self) -> None:
        global _early, _given
        assert self._ready is not None
        stream = None
        if _early is not None:
            ours, self.pid, _early = _early, _early_pid, None
            stream = await asyncio.open_unix_connection(sock=ours, limit=1 << 20)
        elif _given is not None:
            ours, _given = _given, None
            stream = await self._from_template(ours)
        if stream is None:
            own = self._exec()
            if own is None:
                self._ready.set_result(False)
                return
            stream = await asyncio.open_unix_connection(sock=own, limit=1 << 20)
        reader, self._writer = stream
        try:
            while line := await reader.readline():
                self._dispatch(json.loads(line))
        finally:
            self._gone()

    async def _from_template(
        self, ours: socket.socket
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The hub's kernel template forks this server's kernels over `ours` once it
        answers "ready" (with its pid; it may still be importing); None if it never will."""
        try:
            socket.send_fds(ours, [b"F"], [1, 2])  # the kernels' stdout and stderr
        except OSError as e:
            log.warning("kernel template is gone: %s", e)
            ours.close()
            return None
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=1 << 20)
        try:
            line = await asyncio.wait_for(reader.readline(), READY_TIMEOUT)
        except (TimeoutError, ValueError):
            line = b""
        if not line:
            log.warning("kernel template did not answer: this server starts its own zygote")
            writer.close()
            return None
        self._dispatch(json.loads(line))
        return reader, writer

    def _exec(self) -> socket.socket | None:
        """Start a zygote of this server's own: our end of its socket, or None."""
        ours, theirs = socket.socketpair()
        try:
            self._proc = subprocess.Popen(
                [self.python, "-c", command(), str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
            )
        except OSError as e:
            log.warning("kernel zygote did not start: %s", e)
            ours.close()
            return None
        finally:
            theirs.close()
        self.pid = self._proc.pid
        return ours

    def _dispatch(self, msg: dict[str, Any]) -> None:
        assert self._ready is not None
        if "ready" in msg and not self._ready.done():
            self.pid = self.pid or int(msg["ready"])
            log.info("kernel zygote %d ready", self.pid)
            self._ready.set_result(True)
        elif "error" in msg:
            log.warning("kernel zygote failed: %s", msg["error"])
        elif "exit" in msg:
            self.exits[int(msg["exit"])] = int(msg["status"])
        elif "id" in msg:
            fut = self._replies.pop(int(msg["id"]), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    def _gone(self) -> None:
        """The zygote exited: forks fail over to exec; its children's exits are unknown."""
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(False)
        for fut in self._replies.values():
            if not fut.done():
                fut.set_exception(OSError("the kernel zygote exited"))
        self._replies.clear()
        self._writer = None
        if self._proc is not None:
            self._proc.poll()  # reap it if it is already gone
        else:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, os.WNOHANG)
        log.info("kernel zygote %d exited", self.pid)

    async def fork(self, argv: list[str], env: dict[str, str], cwd: str) -> int | None:
        """The pid of a forked child running argv, or None (no zygote: exec instead)."""
        self.start()
        assert self._ready is not None
        try:
            ok = await asyncio.wait_for(asyncio.shield(self._ready), READY_TIMEOUT)
        except TimeoutError:
            ok = False
        if not ok or self._writer is None:
            return None
        self._next += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[self._next] = fut
        msg = {"id": self._next, "argv": argv, "env": env, "cwd": cwd}
        self._writer.write(json.dumps(msg).encode() + b"\n")
        try:
            reply = await asyncio.wait_for(fut, READY_TIMEOUT)
        except (OSError, TimeoutError) as e:
            log.warning("kernel zygote did not fork: %s", e)
            return None
        if "pid" not in reply:
            log.warning("kernel zygote did not fork: %s", reply.get("error", reply))
            return None
        pid = int(reply["pid"])
        self.forked.add(pid)
        return pid

    def status(self, pid: int) -> int | None:
        """None while a forked kernel runs, else its exit status (negative: a signal)."""
        if pid in self.exits:
            return self.exits[pid]
        if self._writer is not None:
            return None
        # The zygote died: its children were handed to init, which reaps them.
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return UNKNOWN_EXIT
        return None

    def running(self, pid: int) -> bool:
        """Whether our child pid still runs (not a zombie waiting for the zygote's report)."""
        info = proc_stat(pid)
        return info is not None and info.state not in ("Z", "X") and info.ppid == self.pid

    async def exit_status(self, pid: int) -> int:
        """The status of a child that has exited, once the zygote has reported it."""
        for _ in range(int(REPORT_WAIT / 0.01)):
            status = self.status(pid)
            if status is not None:
                return status
            await asyncio.sleep(0.01)
        return UNKNOWN_EXIT

    def forget(self, pid: int) -> None:
        self.exits.pop(pid, None)
        self.forked.discard(pid)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._reader_task, 5)
