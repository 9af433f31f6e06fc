"""The capped log pump inside a user's server: its output and its kernels' go through a pipe
into the log fds the hub opened, which never grow past the cap, even while the hub is down.

The hub opens <data_dir>/logs/<name>.log (append) and <name>.log.1 and hands both over; past
`max_bytes` the log is copied into .1 and emptied. The server keeps the raw fds to itself
(close-on-exec, and closed in its kernel zygote), so neither it nor a kernel writes them
except through the pump.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import threading
from typing import Any

_CHUNK = 1 << 16
MIN_BYTES = 1 << 16


class LogPump:
    def __init__(self, log_fd: int, read_fd: int) -> None:
        self.log_fd, self.read_fd = log_fd, read_fd
        self.old_fd = -1  # until cap(): the server's own start-up lines only, uncapped
        self.max_bytes = 0
        self._thread: threading.Thread | None = None

    @staticmethod
    def wanted() -> bool:
        """stdout and stderr are one regular file: a log the hub opened for this server."""
        try:
            out, err = os.fstat(1), os.fstat(2)
        except OSError:
            return False
        return stat.S_ISREG(out.st_mode) and (out.st_dev, out.st_ino) == (err.st_dev, err.st_ino)

    @classmethod
    def take_over(cls) -> LogPump:
        """Move stdout/stderr (the raw log) to a private fd and point 1 and 2 at a pipe the
        pump drains. Call before forking anything that will inherit 1 and 2."""
        sys.stdout.flush()
        sys.stderr.flush()
        log_fd = os.dup(1)  # os.dup: not inheritable
        r, w = os.pipe()
        os.dup2(w, 1)
        os.dup2(w, 2)
        os.close(w)
        return cls(log_fd, r)

    def cap(self, spec: Any) -> None:
        """Apply the hub's {"rotate_fd": fd of <name>.log.1, "max_bytes": N} from the launch
        config; without it the log is not capped (a server not started by a hub)."""
        if not isinstance(spec, dict) or not isinstance(spec.get("rotate_fd"), int):
            return
        fd = int(spec["rotate_fd"])
        try:
            os.set_inheritable(fd, False)
            os.fstat(fd)
        except OSError:
            return
        self.max_bytes = max(MIN_BYTES, int(spec.get("max_bytes") or 0))
        self.old_fd = fd

    def start(self) -> None:
        """Start draining, in a thread: only once nothing is forked any more that has to
        start without threads (the kernel zygote)."""
        self._thread = threading.Thread(target=self.run, name="log-pump", daemon=True)
        self._thread.start()

    def run(self) -> None:
        size = os.fstat(self.log_fd).st_size
        while data := os.read(self.read_fd, _CHUNK):
            limit = self.max_bytes
            if limit and size + len(data) > limit:
                size = self._rotate() if size > 0 else 0
                data = data[:limit]
            # A failing disk must not stop the draining: writers would block on the pipe.
            with contextlib.suppress(OSError):
                size += _write_all(self.log_fd, data)

    def _rotate(self) -> int:
        """Copy the log into the old copy, then empty it (the fds stay; no rename needed,
        nor possible: the user may not write the hub's log dir)."""
        with contextlib.suppress(OSError):
            os.ftruncate(self.old_fd, 0)
            offset = 0
            while chunk := os.pread(self.log_fd, 1 << 20, offset):
                os.pwrite(self.old_fd, chunk, offset)
                offset += len(chunk)
        with contextlib.suppress(OSError):
            os.ftruncate(self.log_fd, 0)
        return 0

    def stop(self, timeout: float = 1.0) -> None:
        """Let the pump write what the server itself still has in the pipe, briefly: kernels
        that outlive the server may hold the pipe open, so this does not wait for its end."""
        for fd in (1, 2):
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, fd)
                os.close(devnull)
        if self._thread is not None:
            self._thread.join(timeout)


def _write_all(fd: int, data: bytes) -> int:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    return len(data)
