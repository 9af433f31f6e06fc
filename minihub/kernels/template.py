"""The kernel template: one process per hub, in the user environment's python, that has
imported ipykernel once and forks each user server's kernel zygote (zygote.py).

Without it every server exec'd its own zygote, which imported ipykernel again: about a
second of CPU per spawn and 20-30 MiB of private pages per user. Forked from here, every
user's zygote and kernels share those pages (copy-on-write), across users.

The hub (root) starts it (spawner/kernel_template.py) and asks it, for each server it
forks, for a zygote: a request says whom to become (uid, gid, groups), which cgroups to
join, the process limit and umask; it carries one fd, the zygote's end of a socket pair whose
other end the server gets. The child joins the cgroups, drops privileges (the server's
steps, as spawner/forkserver.py's), and serves the zygote protocol on that fd. The template
holds nothing secret: its environment is the few variables the hub gives it, and it
imports only the standard library, ipykernel and zygote.py's modules.

Runs as `python -E -s -c COMMAND fd` (no PYTHON* variables, no user site: it is root).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import site
import socket
import sys
from typing import Any

from .. import forkloop
from . import zygote

MSG_MAX = 1 << 16
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
    """Import, then fork a zygote per request until the hub goes away (the zygotes forked
    go on: each ends when its server does)."""
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
    sock.send(json.dumps({"ready": os.getpid()}).encode())

    def on_request() -> tuple[dict[str, Any], int] | bool | None:
        msg, fds, _, _ = socket.recv_fds(sock, MSG_MAX, 2)
        if not msg:
            return True  # the hub is gone
        req = json.loads(msg)
        if len(fds) != 1:
            for f in fds:
                os.close(f)
            return send({"id": req.get("id"), "error": "one fd expected"})
        pid = os.fork()
        if pid == 0:
            exits.close_in_child()
            sock.close()
            return req, fds[0]
        os.close(fds[0])
        return send({"id": req["id"], "pid": pid})

    def send(msg: dict[str, Any]) -> bool | None:
        try:
            sock.send(json.dumps(msg).encode())
        except (BrokenPipeError, ConnectionResetError):
            return True
        return None

    # zygotes' exits are reaped here; the hub does not need them (their servers see EOF)
    got = forkloop.serve(sock, exits, lambda _msg: None, on_request)
    if isinstance(got, tuple):
        _child(*got)


def _child(req: dict[str, Any], fd: int) -> None:
    """A new zygote: become the server's user, then serve its server (never returns)."""
    try:
        _become(req)
        zsock = socket.socket(fileno=fd)
        zygote._close_fds_but(fd)
        zygote.serve_preloaded(zsock)  # returns only in a forked kernel, which it runs
    except BaseException:  # noqa: BLE001 - a forked child must never return into the loop
        import traceback

        traceback.print_exc()
    os._exit(1)


def _become(req: dict[str, Any]) -> None:
    """The server's cgroups, process limit, umask, groups, gid, uid; dumpable again (it
    holds nothing of the hub's, so the user may debug their kernels), the user's site."""
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
        raise PermissionError("a kernel zygote may not run as root")
    _set_dumpable()
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update({k: str(v) for k, v in req["env"].items()})
    site.ENABLE_USER_SITE = True  # -s was for the root template; kernels get the user's site


def _set_dumpable() -> None:
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
