"""The kernel template: one process per hub and user environment, root, in that
environment's python, that has imported ipykernel once and forks every user server's kernels.

Without it every server exec'd a zygote that imported ipykernel again: about a second of CPU
per spawn and 20-30 MiB of private pages per user. Forked from here, every user's kernels
share those pages (copy-on-write). Until issue 18 it forked a zygote per server, which forked
that server's kernels; each zygote cost its user ~4 MiB (its own private pages and a share of
every page its kernels had written), so the template now forks the kernels itself.

The hub (root) starts it (spawner/kernel_template.py) and, for each server it forks, hands
it a channel: a request naming whom to become (uid, gid, groups), which cgroups to join, the
process limit and umask, with one fd, the template's end of a socket pair whose other end the
server gets. On a channel the server speaks the zygote protocol (zygote.py): one byte carrying
its stdout and stderr, answered {"ready": pid}; one JSON line per kernel, {id, argv, env,
cwd}, answered {id, pid}; {exit, status} for each kernel that ends.

Root never parses what a server sends. When a channel is readable the template forks; the
child joins the server's cgroups, sets the process limit, umask, groups, gid and uid (and
refuses to go on as root), and only then reads one request, tells the template its id over a
pipe and runs the kernel. A server's kernels beyond MAX_KERNELS wait for one to end. A channel
that closes (its server is gone) takes its kernels with it; a channel whose server sends what
is not a request, or does not read its answers, is closed (its next kernels are exec'd). The
template holds nothing secret: its environment is the few variables the hub gives it, and it
imports only the standard library, ipykernel and zygote.py's modules. It is not the hub's
child (it leaves its launcher at once) and it outlives the hub while servers hold channels:
a hub restart stops no kernel.

Runs as `python -E -s -c COMMAND fd hub_pid` (no PYTHON* variables, no user site: it is
root; the hub's pid only says, in ps, whose template it is).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import selectors
import signal
import site
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import forkloop
from . import zygote

MSG_MAX = 1 << 16
LINE_MAX = 1 << 20  # one kernel request (argv, env, cwd)
MAX_KERNELS = 64  # one server's kernels alive at once
READ_TIMEOUT = 10.0  # for a request's line, once its first byte is there
# Beyond zygote.PRELOAD: what a kernel goes on to import when it starts (its debugger,
# debugpy's ~110 modules, the completer, tornado's loop): measured in a running kernel, not
# in the template (+151 modules); imported here they are shared too. Optional each.
KERNEL_START = (
    "ipykernel.debugger",
    "debugpy.server.api",
    "IPython.core.completer",
    "IPython.core.completerlib",
    "IPython.core.debugger",
    "IPython.core.oinspect",
    "IPython.core.logger",
    "IPython.extensions.storemagic",
    "tornado.platform.asyncio",
    "tornado.queues",
    "tornado.locks",
    "tornado.gen",
    "sqlite3",
    "pdb",
    "pydoc",
    "faulthandler",
)
COMMAND = zygote.COMMAND.replace(
    "from minihub.kernels import zygote", "from minihub.kernels import template, zygote"
).replace("zygote.main()", "template.main()")
PR_SET_DUMPABLE = 4


def main() -> None:
    serve(int(sys.argv[1]))


def serve(fd: int) -> None:
    """Leave the launcher, import, then serve the hub and the servers' channels until the
    hub and every channel have gone (the kernels of a closed channel are gone with it)."""
    if os.fork() > 0:
        os._exit(0)  # the hub reaps the launcher; the template is nobody's child of the hub
    sock = socket.socket(fileno=fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        zygote.preload()
    except Exception as e:  # noqa: BLE001 - servers exec their own zygote instead
        sock.send(json.dumps({"error": f"cannot import ipykernel: {e}"}).encode())
        return
    for name in KERNEL_START:
        with contextlib.suppress(Exception):
            __import__(name)
    forkloop.settle()
    exits = forkloop.ChildExits()
    try:
        sock.send(json.dumps({"ready": os.getpid()}).encode())
    except OSError:
        return  # the hub gave up waiting
    forked = Template(sock, exits).run()
    if forked is not None:
        _kernel(exits, *forked)


@dataclass(eq=False)
class Channel:
    """One server's channel: whom its kernels become, and what of theirs is under way."""

    sock: socket.socket
    account: dict[str, Any]
    stdio: tuple[int, int] | None = None  # the server's stdout and stderr, once handed over
    kernels: set[int] = field(default_factory=set)
    reader: int = 0  # the child reading a request (it becomes that kernel)
    done: int = -1  # the pipe it writes the request's id to
    watched: bool = False
    closed: bool = False


class Template:
    """The loop: the hub's requests, the channels, the children's exits."""

    def __init__(self, hub: socket.socket, exits: forkloop.ChildExits) -> None:
        self.hub: socket.socket | None = hub
        self.exits = exits
        self.channels: set[Channel] = set()
        self.owner: dict[int, Channel] = {}  # a forked child's pid -> its channel
        self.sel = selectors.DefaultSelector()  # epoll: hundreds of channels
        self.sel.register(hub, selectors.EVENT_READ, self._on_hub)
        self.sel.register(exits.r, selectors.EVENT_READ, self._on_exits)

    def run(self) -> tuple[Channel, int] | None:
        """Serve; returns only in a forked child: its channel and the pipe for its id."""
        while self.hub is not None or self.channels:
            for key, _ in self.sel.select():
                handler: Callable[[], tuple[Channel, int] | None] = key.data
                got = handler()
                if got is not None:
                    return got
        return None

    # -- the hub ----------------------------------------------------------------------------

    def _on_hub(self) -> None:
        assert self.hub is not None
        try:
            msg, fds, _, _ = socket.recv_fds(self.hub, MSG_MAX, 2)
        except OSError:
            msg, fds = b"", []
        if not msg:
            self._hub_gone()
            return
        req = json.loads(msg)
        if len(fds) != 1:
            for f in fds:
                os.close(f)
            self._tell_hub({"id": req.get("id"), "error": "one fd expected"})
            return
        ch = Channel(socket.socket(fileno=fds[0]), req)
        ch.sock.setblocking(False)
        self.channels.add(ch)
        self._rewatch(ch)
        self._tell_hub({"id": req["id"], "pid": os.getpid()})

    def _tell_hub(self, msg: dict[str, Any]) -> None:
        try:
            assert self.hub is not None
            self.hub.send(json.dumps(msg).encode())
        except OSError:
            self._hub_gone()

    def _hub_gone(self) -> None:
        if self.hub is not None:
            self.sel.unregister(self.hub)
            self.hub.close()
            self.hub = None

    # -- channels ---------------------------------------------------------------------------

    def _rewatch(self, ch: Channel) -> None:
        """Read a channel while it is open, no request is being read and it is under cap."""
        want = not ch.closed and not ch.reader and len(ch.kernels) < MAX_KERNELS
        if want and not ch.watched:
            self.sel.register(ch.sock, selectors.EVENT_READ, lambda: self._on_channel(ch))
        elif ch.watched and not want:
            self.sel.unregister(ch.sock)
        ch.watched = want

    def _on_channel(self, ch: Channel) -> tuple[Channel, int] | None:
        if ch.closed:
            return None
        if ch.stdio is None:
            self._hand_over(ch)
            return None
        try:
            first = ch.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return None
        except OSError:
            first = b""
        if not first:
            self._close(ch, kill=True)  # the server is gone
            return None
        return self._fork_reader(ch)

    def _hand_over(self, ch: Channel) -> None:
        """The server's first byte carries its stdout and stderr, for its kernels."""
        try:
            data, fds, _, _ = socket.recv_fds(ch.sock, 1, 2)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        if not data or len(fds) != 2:
            for f in fds:
                os.close(f)
            self._close(ch, kill=True)
            return
        ch.stdio = (fds[0], fds[1])
        self._send(ch, {"ready": os.getpid()})

    def _fork_reader(self, ch: Channel) -> tuple[Channel, int] | None:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            return ch, w
        os.close(w)
        ch.reader, ch.done = pid, r
        self.owner[pid] = ch
        self.sel.register(r, selectors.EVENT_READ, lambda: self._on_done(ch))
        self._rewatch(ch)
        return None

    def _on_done(self, ch: Channel) -> None:
        """The reader wrote its request's id (it is that kernel now) or died without one."""
        if ch.done < 0:
            return
        try:
            data = os.read(ch.done, 32)
        except OSError:
            data = b""
        self.sel.unregister(ch.done)
        os.close(ch.done)
        pid, ch.done, ch.reader = ch.reader, -1, 0
        if data.isdigit() and len(data) <= 18:
            ch.kernels.add(pid)
            self._send(ch, {"id": int(data), "pid": pid})
        else:
            self._close(ch, kill=False)  # not a request: no more from this server
        self._rewatch(ch)

    def _send(self, ch: Channel, msg: dict[str, Any]) -> None:
        if ch.closed:
            return
        data = json.dumps(msg).encode() + b"\n"
        try:
            sent = ch.sock.send(data)
        except OSError:
            sent = -1
        if sent != len(data):
            self._close(ch, kill=False)  # a server that does not read what it is told

    def _close(self, ch: Channel, kill: bool) -> None:
        if ch.closed:
            return
        ch.closed = True
        self._rewatch(ch)
        ch.sock.close()
        for f in ch.stdio or ():
            os.close(f)
        self.channels.discard(ch)
        if kill:  # as a zygote's kernels went when it did: at once
            for pid in (*ch.kernels, ch.reader):
                if pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

    # -- children ---------------------------------------------------------------------------

    def _on_exits(self) -> None:
        self.exits.reap(self._exited)

    def _exited(self, msg: dict[str, Any]) -> None:
        pid = int(msg["exit"])
        ch = self.owner.pop(pid, None)
        if ch is None:
            return
        if ch.reader == pid:
            self._on_done(ch)  # what it wrote before it died, if anything
        if pid in ch.kernels:
            ch.kernels.discard(pid)
            self._send(ch, msg)
            self._rewatch(ch)


# --- a forked child: becomes one kernel ---------------------------------------------------


def _kernel(exits: forkloop.ChildExits, ch: Channel, done: int) -> None:
    """Become the server's user, then read its request and run it (never returns)."""
    try:
        exits.close_in_child()
        assert ch.stdio is not None
        zygote.close_fds_but(ch.sock.fileno(), done, *ch.stdio)  # the hub's, other servers'
        _become(ch.account)
        request = _read_request(ch.sock)
        os.write(done, str(request["id"]).encode())
        os.close(done)
        ch.sock.close()
        devnull = os.open(os.devnull, os.O_RDONLY)
        for src, dst in ((devnull, 0), (ch.stdio[0], 1), (ch.stdio[1], 2)):
            os.dup2(src, dst)
            os.close(src)
        # no parent poller: a kernel outlives the template (its channel's end kills it)
        request["env"].pop("JPY_PARENT_PID", None)
        zygote.run_child(request)  # never returns
    except BaseException:  # noqa: BLE001 - a forked child must never return into the loop
        import traceback

        traceback.print_exc()
    os._exit(1)


def _read_request(sock: socket.socket) -> dict[str, Any]:
    """One request line, exactly (what follows is the next kernel's), as the user."""
    sock.setblocking(True)
    sock.settimeout(READ_TIMEOUT)
    deadline = time.monotonic() + READ_TIMEOUT
    while True:
        seen = sock.recv(LINE_MAX, socket.MSG_PEEK)
        end = seen.find(b"\n")
        if end >= 0:
            break
        if not seen or len(seen) >= LINE_MAX or time.monotonic() > deadline:
            raise ValueError("no request line")
        time.sleep(0.01)  # the rest of the line is on its way
    request = json.loads(sock.recv(end + 1))
    if not (
        isinstance(request, dict)
        and type(request.get("id")) is int
        and isinstance(request.get("cwd"), str)
        and isinstance(request.get("env"), dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in request["env"].items())
        and isinstance(request.get("argv"), list)
        and len(request["argv"]) >= 3
        and all(isinstance(a, str) for a in request["argv"])
    ):
        raise ValueError("not a kernel request")
    return request


def _become(req: dict[str, Any]) -> None:
    """As root, in a forked child: the server's cgroups, process limit, umask, groups, gid,
    uid; dumpable again (it holds nothing of the hub's, so the user may debug their
    kernels), the user's site."""
    for d in req["cgroup"]:
        with open(os.path.join(d, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write(str(int(req["oom_score_adj"])))
    os.umask(int(req["umask"]))
    if req["nproc"]:
        resource.setrlimit(resource.RLIMIT_NPROC, (int(req["nproc"]), int(req["nproc"])))
    os.setgroups([int(g) for g in req["groups"]])
    os.setgid(int(req["gid"]))
    os.setuid(int(req["uid"]))
    if os.getuid() == 0 or os.geteuid() == 0:
        raise PermissionError("a kernel may not run as root")
    _set_dumpable()
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update({k: str(v) for k, v in req["env"].items()})
    site.ENABLE_USER_SITE = True  # -s was for the root template; kernels get the user's site


def _set_dumpable() -> None:
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
