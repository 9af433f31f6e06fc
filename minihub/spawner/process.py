"""The local spawners' view of a server: a process of a Unix account on this machine.

These types never leave minihub.spawner.local and minihub.spawner.forkserver: the hub sees
only the seam in minihub.spawner.base (an endpoint and the spawner's state).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Account:
    """A Unix account a server runs as."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str


def isolated(cmd: list[str]) -> list[str]:
    """minihub's own server (`<python> -m minihub.singleuser`) with python's -I: run with
    the user's home as its working directory, `-m` would put that first on sys.path (and
    the user's site-packages after it), so a ~/minihub/ of the user's would be the server,
    holding its secret and proof. Other commands are the operator's, run as given."""
    if len(cmd) == 3 and cmd[1:] == ["-m", "minihub.singleuser"]:
        return [cmd[0], "-I", *cmd[1:]]
    return cmd


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
    server_name: str = ""  # "" for the user's default server
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
