"""Where kernels listen: unix (zmq ipc) sockets in a private 0700 directory of the user.

Over loopback TCP any local account could subscribe to a kernel's iopub and read its outputs
(iopub needs no key); a socket file inside a directory only the user can enter cannot be reached.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("minihub.kernels")

DIR_PREFIX = "minihub-kernels-"
PID_FILE = "server.pid"
# sun_path holds 108 bytes with its NUL; "-<n>" (the channel number) still follows a prefix.
MAX_PREFIX = 100
SOCKET_WAIT = 0.02  # poll interval while a kernel has not yet bound its sockets


class RuntimeDir:
    """This server's private directory for kernels' connection files and sockets.

    Made with mkdtemp (mode 0700, owner the user) under $XDG_RUNTIME_DIR when that is the
    user's own private dir, else under the temp dir. Removed on close(); directories left by a
    server that died are swept when the next one starts.
    """

    def __init__(self, base: str | None = None) -> None:
        base = base or _pick_base()
        _sweep_stale(base)
        self.path = tempfile.mkdtemp(prefix=DIR_PREFIX, dir=base)
        _check_private(self.path)
        Path(self.path, PID_FILE).write_text(str(os.getpid()))
        if len(self.prefix("x" * 8)) > MAX_PREFIX:
            raise RuntimeError(f"kernel socket dir path is too long for unix sockets: {self.path}")

    def prefix(self, kernel_id: str) -> str:
        """The ipc path prefix of one kernel: its sockets are <prefix>-1 ... <prefix>-5."""
        return os.path.join(self.path, kernel_id[:8])

    def kernel_args(self, kernel_id: str) -> dict[str, Any]:
        """AsyncKernelManager arguments that put this kernel's sockets and file in the dir."""
        return {
            "transport": "ipc",
            "ip": self.prefix(kernel_id),
            "connection_file": os.path.join(self.path, f"kernel-{kernel_id}.json"),
        }

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def socket_paths(info: dict[str, Any]) -> list[str]:
    """The socket files an ipc kernel binds (empty for tcp)."""
    if info.get("transport") != "ipc":
        return []
    names = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
    return [f"{info['ip']}-{info[n]}" for n in names]


def endpoint(info: dict[str, Any], channel: str) -> str:
    port = info[f"{channel}_port"]
    if info["transport"] == "ipc":
        return f"ipc://{info['ip']}-{port}"
    return f"tcp://{info['ip']}:{port}"


def all_bound(paths: list[str]) -> bool:
    """True once every path is a socket file (the kernel has bound all its channels)."""
    for p in paths:
        try:
            if not stat.S_ISSOCK(os.stat(p).st_mode):
                return False
        except OSError:
            return False
    return True


def _pick_base() -> str:
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg and os.path.isabs(xdg):
        try:
            _check_private(xdg)
            return xdg
        except (OSError, RuntimeError) as e:
            log.info("not using XDG_RUNTIME_DIR for kernel sockets: %s", e)
    return tempfile.gettempdir()


def _check_private(path: str) -> None:
    """Refuse a dir that is not ours alone (another user could reach the sockets in it)."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeError(f"{path} is not a directory")
    if st.st_uid != os.getuid():
        raise RuntimeError(f"{path} belongs to uid {st.st_uid}, not to us")
    if st.st_mode & 0o077:
        raise RuntimeError(f"{path} is open to others (mode {stat.S_IMODE(st.st_mode):o})")


def _sweep_stale(base: str) -> None:
    """Remove kernel dirs of ours whose server process is gone (it was killed)."""
    try:
        entries = list(os.scandir(base))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(DIR_PREFIX):
            continue
        with contextlib.suppress(OSError, ValueError):
            if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            pid_file = Path(entry.path, PID_FILE)
            # A dir younger than a minute may be a starting server that has no pid file yet.
            if not pid_file.exists() and time.time() - entry.stat().st_mtime < 60:
                continue
            if pid_file.exists():
                pid = read_pid(pid_file)
                if pid is None or _alive(pid):
                    continue
            shutil.rmtree(entry.path, ignore_errors=True)
            log.info("removed the kernel dir of a server that is gone: %s", entry.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another account's process reuses the pid: ours is gone
    return True


def sweep_dead_dirs(uids: set[int], base: str | None = None) -> int:
    """The hub's (root's) sweep: remove kernel dirs owned by `uids`, or by a uid that no
    longer has an account, whose server is gone. A server sweeps its own at start, but
    nothing else removes a stopped user's or a deleted account's, and a later account given
    the same uid would own them. Returns how many were removed."""
    base = base or tempfile.gettempdir()
    removed = 0
    try:
        entries = list(os.scandir(base))
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.startswith(DIR_PREFIX):
            continue
        with contextlib.suppress(OSError, ValueError):
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid == 0:
                continue
            if st.st_uid not in uids:
                try:
                    pwd.getpwuid(st.st_uid)
                    continue  # someone else's, with an account: theirs to sweep
                except KeyError:
                    pass
            pid_file = Path(entry.path, PID_FILE)
            if not os.path.lexists(pid_file) and time.time() - st.st_mtime < 60:
                continue  # a server starting now has not written its pid yet
            if os.path.lexists(pid_file):
                pid = read_pid(pid_file)
                if pid is None or _owned_by(pid, st.st_uid):
                    continue  # not a pid (the user's doing: left as it is), or alive
            shutil.rmtree(entry.path, ignore_errors=True)
            removed += 1
    return removed


def read_pid(path: Path) -> int | None:
    """The pid in a user's pid file, read by root: never through a link, never from a FIFO
    or a device (a link to /dev/zero would read until memory ran out, a FIFO would block a
    hub thread for good), at most 32 bytes. None if it is not a regular file with a pid."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, 32)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        pid = int(data)
    except ValueError:
        return None
    return pid if pid > 0 else None


def _owned_by(pid: int, uid: int) -> bool:
    """The process is alive and runs as uid (root can signal anyone's, so look at /proc)."""
    try:
        return os.stat(f"/proc/{pid}").st_uid == uid
    except OSError:
        return False
