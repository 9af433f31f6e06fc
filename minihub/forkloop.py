"""The loop both of minihub's fork servers run: spawner/forkserver.py (user servers, as root)
and kernels/zygote.py (kernels, in a user server). Each waits on its request socket and for
its children's exits, reports every exit as {"exit": pid, "status": code}, and undoes this
set-up in each child it forks. How requests are framed and what a child runs stay theirs.

It runs in processes that fork: it starts no thread and imports nothing of minihub.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def settle() -> None:
    """Once a process's start-up is done (just before it forks the children that are to
    share its pages, or before the hub serves): collect its imports' garbage, hand the free pages of glibc's heap back to the kernel (malloc_trim:
    else every child maps them and counts a share in its PSS, though none needs their
    contents), and freeze what is left, so that the children's collections never write to
    those objects' headers."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    gc.freeze()


class ChildExits:
    """SIGCHLD through a wakeup pipe, so that a select loop wakes when a child exits."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, False)
        signal.set_wakeup_fd(self.w)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def reap(self, report: Callable[[dict[str, Any]], object]) -> None:
        """Collect every child that has exited and report its status (negative: a signal)."""
        _drain(self.r)
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            report({"exit": pid, "status": os.waitstatus_to_exitcode(status)})

    def close_in_child(self) -> None:
        """In a forked child: no wakeup fd (first, so no signal writes to a closed fd number
        that may be reused), default SIGCHLD, and neither end of the pipe."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(self.r)
        os.close(self.w)


def serve(
    sock: socket.socket,
    exits: ChildExits,
    report: Callable[[dict[str, Any]], object],
    on_request: Callable[[], T | None],
) -> T:
    """Reap and report children, and call `on_request` whenever `sock` is readable, until it
    returns something other than None (in a forked child: what to run; or: stop serving)."""
    while True:
        ready = select.select([sock.fileno(), exits.r], [], [])[0]
        if exits.r in ready:
            exits.reap(report)
        if sock.fileno() in ready:
            result = on_request()
            if result is not None:
                return result


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
