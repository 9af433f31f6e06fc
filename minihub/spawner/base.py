"""The spawner seam: what the hub needs to run one user's server process.

The hub (minihub.servers) owns state, limits and readiness; a Spawner only runs processes.
Contract:
- `start(spec)` starts the process and returns as soon as it is running (not ready: the
  hub probes readiness itself). It raises SpawnError with a message for the user if the
  process cannot be started (no such account, uid below uid_min, bad python...).
- `poll(proc)` returns None while the process is alive, else its exit status (negative:
  killed by that signal; None-able for re-adopted processes whose status is unknown: then
  returns -1000). It must work for processes started by an earlier hub (re-adoption): it
  checks the pid *and* the process start time so a reused pid is never mistaken.
- `stop(proc, timeout)` sends SIGTERM to the process group, waits up to `timeout`, then
  SIGKILLs the whole group (kernels included) and returns once it is gone.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

UNKNOWN_EXIT = -1000


@dataclass(frozen=True)
class Account:
    """A Unix account a server runs as."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str


@dataclass
class LaunchSpec:
    username: str  # the hub's name for the user
    account: Account
    cmd: list[str]
    env: dict[str, str]
    cwd: str
    stdin_config: dict[str, Any]  # written to the process's stdin as one JSON line, then EOF
    log_path: Path
    umask: int = 0o077
    mem_limit: int = 0  # bytes, 0 = none
    cpu_limit: float = 0.0  # CPUs, 0 = none
    max_processes: int = 0  # processes and threads of the user at once, 0 = none
    disk_quota: int = 0  # bytes on the home's filesystem, 0 = none (needs quotas there)
    log_max_bytes: int = 4 << 20  # the server's log is rotated past this (one old copy)
    listen_host: str = "127.0.0.1"
    pass_listen_socket: bool = True  # bind in the hub, hand over as fd 3


@dataclass
class Proc:
    """A running server process, as stored in SQLite so a restarted hub can re-adopt it."""

    pid: int
    start_ticks: int  # field 22 of /proc/PID/stat: tells a reused pid apart
    host: str
    port: int
    extra: dict[str, Any] = field(default_factory=dict)


class Spawner(abc.ABC):
    # Called with the pid of a server this spawner saw exit (from the event loop), so the hub
    # can react at once instead of at its next poll; poll() stays the authority.
    on_exit: Callable[[int], None] | None = None

    @abc.abstractmethod
    async def start(self, spec: LaunchSpec) -> Proc: ...

    @abc.abstractmethod
    async def poll(self, proc: Proc) -> int | None: ...

    @abc.abstractmethod
    async def stop(self, proc: Proc, timeout: float) -> None: ...

    def oom_killed(self, proc: Proc) -> bool:
        """True if the kernel killed part of this server (e.g. a kernel) for lack of memory
        under the user's mem_limit, so the user can be told why. Default: unknown, False."""
        return False

    async def close(self) -> None:
        """Release watchers; never stops servers (they outlive the hub)."""
