"""The hub's handle on the kernel template (minihub/kernels/template.py): started once per
user environment, it forks every server's kernels as the server's user, so that ipykernel's
pages are shared by every user's kernels and a spawn imports nothing.

Used by the fork spawner as root. Each server gets a channel to it at its spawn, also while
the template is still importing (the channel is handed over once it serves: the server's
first kernel waits for that, never a spawn). Any failure (no user environment, no ipykernel
in it, the template gone) leaves the server to exec its own zygote, as before.
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import subprocess
import threading
from typing import Any

from ..kernels import template, zygote

log = logging.getLogger("minihub.spawner")
READY_TIMEOUT = 30.0  # importing ipykernel, on a slow disk
REPLY_TIMEOUT = 10.0
# The template's environment: nothing of the hub's (its children's is set per kernel).
# debugpy's import-time note on frozen modules would go to the hub's log, once per start.
TEMPLATE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYDEVD_DISABLE_FILE_VALIDATION": "1",
}


class KernelTemplate:
    """One template process for one python; `channel_for` is called from worker threads."""

    def __init__(self, python: str) -> None:
        self.python = python
        self.pid = 0  # the template's, from its "ready" (it is not the hub's child)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._ids = 0
        self._broken = False  # it could not import ipykernel: do not try again
        self._pending: list[tuple[dict[str, Any], socket.socket]] = []  # until it serves
        self._starting: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def channel_for(self, req: dict[str, Any]) -> int | None:
        """A channel for a server's kernels: the server's end (an fd the caller owns), or
        None. `req`: uid, gid, groups, cgroup, nproc, umask, oom_score_adj, cwd, env.

        Never waits for the template's imports (a second or two): while it starts, in the
        background, channels wait in the hub and are handed over once it serves."""
        if self._broken:
            return None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with self._lock:
            serving = self._serving()
            if not serving:
                self._pending.append((req, theirs))
            elif not self._hand(req, theirs):
                ours.close()
                return None
        if not serving:
            self._start_in_background()
        return ours.detach()

    def _hand(self, req: dict[str, Any], theirs: socket.socket) -> bool:
        """Under the lock: give the template a channel's end (closed here either way)."""
        with theirs:
            reply = self._ask(req, theirs.fileno()) if self._sock is not None else None
        if reply is not None and "pid" not in reply:
            log.warning("kernel template refused: %s", reply.get("error"))
        return reply is not None and "pid" in reply

    def _serving(self) -> bool:
        """Under the lock: a template answers (a closed socket reads as EOF at once)."""
        if self._sock is None:
            return False
        try:
            gone = self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return True
        except OSError:
            gone = True
        if gone:
            self._close_sock()
        return not gone

    def _start_in_background(self) -> None:
        with self._start_lock:
            if self._starting is None or not self._starting.is_alive():
                starting = threading.Thread(
                    target=self._start, name="minihub-kernel-template", daemon=True
                )
                starting.start()  # before close() can see it: it joins what it finds
                self._starting = starting

    def _start(self) -> None:
        ours = self._launch()
        with self._lock:
            pending, self._pending = self._pending, []
            self._sock = ours
            for req, theirs in pending:  # a failed start closes them: those servers exec
                self._hand(req, theirs)

    def _launch(self) -> socket.socket | None:
        """Start a template and wait for its imports: the hub's end of its socket, or None."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            try:
                launcher = subprocess.Popen(
                    [
                        self.python,
                        "-E",
                        "-s",
                        "-c",
                        zygote.command(template.COMMAND),
                        str(theirs.fileno()),
                        str(os.getpid()),  # whose it is, for ps: it is not the hub's child
                    ],
                    stdin=subprocess.DEVNULL,
                    cwd="/",
                    env=TEMPLATE_ENV,
                    pass_fds=(theirs.fileno(),),
                    start_new_session=True,  # a Ctrl-C at the hub's terminal is not for it
                )
            except OSError as e:
                log.warning("kernel template did not start: %s", e)
                self._broken = True
                ours.close()
                return None
        msg = _recv(ours, READY_TIMEOUT)
        try:
            launcher.wait(READY_TIMEOUT)  # it forks the template and exits at once
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait(5)
        if msg is None or "ready" not in msg:
            log.warning("kernel template is not ready: %s", (msg or {}).get("error", "no answer"))
            self._broken = msg is not None  # an import error will not go away
            ours.close()  # a template still importing exits on EOF once it is done
            return None
        self.pid = int(msg["ready"])
        log.info("kernel template started: pid %d (%s)", self.pid, self.python)
        return ours

    def _ask(self, req: dict[str, Any], fd: int) -> dict[str, Any] | None:
        assert self._sock is not None
        self._ids += 1
        try:
            socket.send_fds(self._sock, [json.dumps({**req, "id": self._ids}).encode()], [fd])
        except OSError as e:
            log.warning("kernel template is gone: %s", e)
            self._close_sock()
            return None
        while True:
            msg = _recv(self._sock, REPLY_TIMEOUT)
            if msg is None:
                self._close_sock()
                return None
            if msg.get("id") == self._ids:
                return msg

    def _close_sock(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        """The template goes on while servers hold channels (their kernels with it) and
        ends with the last; servers still waiting for one exec their own zygote."""
        with self._start_lock:
            starting = self._starting
        if starting is not None:
            starting.join(READY_TIMEOUT)
        with self._lock:
            self._close_sock()
            for _, theirs in self._pending:
                theirs.close()
            self._pending.clear()


def _recv(sock: socket.socket, timeout: float) -> dict[str, Any] | None:
    if not select.select([sock], [], [], timeout)[0]:
        return None
    try:
        data = sock.recv(1 << 16)
    except OSError:
        return None
    if not data:
        return None
    msg = json.loads(data)
    return msg if isinstance(msg, dict) else None


def zygote_env(home: str, name: str, shell: str, path: str) -> dict[str, str]:
    """A zygote's own environment (each kernel gets its own from the server)."""
    return {"HOME": home, "USER": name, "LOGNAME": name, "SHELL": shell, "PATH": path}


def user_python(env_dir: str) -> str:
    python = os.path.join(env_dir, "bin", "python")
    return python if env_dir and os.path.isfile(python) else ""
