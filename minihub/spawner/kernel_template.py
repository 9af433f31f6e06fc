"""The hub's handle on the kernel template (minihub/kernels/template.py): started once per
user environment, it forks each server's kernel zygote as the server's user, so that
ipykernel's pages are shared by every user's kernels and a spawn imports nothing.

Used by the fork spawner as root; any failure (no user environment, no ipykernel in it, the
template gone) leaves the server to exec its own zygote, as before.
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
# The template's environment: nothing of the hub's (its children's is set per zygote).
# debugpy's import-time note on frozen modules would go to the hub's log, once per start.
TEMPLATE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYDEVD_DISABLE_FILE_VALIDATION": "1",
}


class KernelTemplate:
    """One template process for one python; `zygote_for` is called from worker threads."""

    def __init__(self, python: str) -> None:
        self.python = python
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._ids = 0
        self._broken = False  # it could not import ipykernel: do not try again
        self._starting: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def zygote_for(self, req: dict[str, Any]) -> int | None:
        """A new zygote for a server: the server's end of its socket (an fd the caller
        owns), or None. `req`: uid, gid, groups, cgroup, nproc, umask, oom_score_adj, cwd, env.

        Never waits for the template's imports (a second or two): while it starts, in the
        background, servers exec their own zygote, as without it."""
        if not self._ready():
            return None
        with self._lock:
            if not self._ensure():
                return None
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                reply = self._ask(req, theirs.fileno())
            finally:
                theirs.close()
            if reply is None or "pid" not in reply:
                ours.close()
                if reply is not None:
                    log.warning("kernel template refused: %s", reply.get("error"))
                return None
            return ours.detach()

    def _ready(self) -> bool:
        """Whether a template serves now; if none does (first use, or it died), start one
        in a thread, for the next servers. Never blocks on a start under way."""
        if self._broken:
            return False
        if self._sock is not None and self._proc is not None and self._proc.poll() is None:
            return True
        with self._start_lock:
            if self._starting is None or not self._starting.is_alive():
                starting = threading.Thread(
                    target=self._restart, name="minihub-kernel-template", daemon=True
                )
                starting.start()  # before close() can see it: it joins what it finds
                self._starting = starting
        return False

    def _restart(self) -> None:
        with self._lock:
            self._close_sock()
        self._start()

    def _ensure(self) -> bool:
        """Under the lock: the template serves (else the next _ready starts one)."""
        alive = self._proc is not None and self._proc.poll() is None
        return not self._broken and alive and self._sock is not None

    def _start(self) -> bool:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            try:
                self._proc = subprocess.Popen(
                    [
                        self.python,
                        "-E",
                        "-s",
                        "-c",
                        zygote.command(template.COMMAND),
                        str(theirs.fileno()),
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
                return False
        msg = _recv(ours, READY_TIMEOUT)
        if msg is None or "ready" not in msg:
            log.warning("kernel template is not ready: %s", (msg or {}).get("error", "no answer"))
            self._broken = msg is not None  # an import error will not go away
            ours.close()
            self._stop_proc()
            return False
        with self._lock:
            self._sock = ours
        log.info("kernel template started: pid %d (%s)", self._proc.pid, self.python)
        return True

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

    def _stop_proc(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5)

    def close(self) -> None:
        """The template ends on EOF; the zygotes it forked go on with their servers."""
        with self._start_lock:
            starting = self._starting
        if starting is not None:
            starting.join(READY_TIMEOUT)
        with self._lock:
            self._close_sock()
            if self._proc is not None:
                try:
                    self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._stop_proc()


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
