"""The spawner seam: how the hub gets one server of one user running, wherever it runs.

The hub (minihub.servers) owns everything about a server that is the same everywhere: its
secret and proof, its URL prefix, readiness, limits on how many run, activity and culling.
A Spawner only makes the server run somewhere and tells the hub where it listens.

Contract (see docs/spawners.md for a worked example):
- `start(launch)` starts the server and returns `Started(endpoint, state)` as soon as it
  runs (not when it is ready: the hub probes readiness itself through the endpoint). It
  delivers `launch.config` to the server as it sees fit (stdin for a local process, an
  environment variable or a file elsewhere) and tells the server where to listen with
  `launch.listen_on(host, port)` before the server starts. It raises SpawnError with a
  message for the user when the server cannot start; a server it started before failing
  must be gone when it raises.
- `state` is the spawner's own JSON-serialisable dict. The hub stores it in SQLite and
  hands it back to `poll`, `stop`, `log_tail` and `oom_killed` — also in a later hub process
  after a restart, so it must hold everything needed to find the server again (a pid and
  its start time, a pod name and uid, a job id) and nothing secret.
- `poll(state)` returns None while the server runs, else its exit status (negative: killed
  by that signal; UNKNOWN_EXIT when it is gone but the status is not known). A reused pid or
  name must never be mistaken for the server.
- `stop(state, timeout)` asks the server to stop, waits up to `timeout` seconds, then
  forces it, and returns once it and everything it started are gone. It is also called
  for servers that already died, to clean up what they left behind; it must not fail then.
- `progress(launch)` yields messages for the user while `start(launch)` runs (the hub runs
  both at once and shows the messages on the pending page and the progress API).
- `log_tail(state, lines)` returns the last lines of the server's output, "" if unknown.
- `on_exit`, if the hub sets it, is called with `state` (from the event loop) as soon as
  the spawner sees a server exit, so the hub can react before its next poll.
- `options_form(user)` is the HTML of the spawn page's form (JupyterHub's options_form;
  "" for none), `options_from_form(form)` turns its fields into `user_options`, and
  `check_options(user, options)` raises SpawnError (400) for options it would refuse, so a
  bad choice is refused before anything starts.
- `close()` releases watchers and connections; it never stops servers (they outlive the
  hub by design).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..setting import Setting

UNKNOWN_EXIT = -1000
State = dict[str, Any]


@dataclass(frozen=True)
class Endpoint:
    """Where the hub reaches a server."""

    host: str
    port: int
    scheme: str = "http"  # or "https"

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass
class Launch:
    """One server for the spawner to start: who it is for and what to run.

    `protocol` is "minihub" (the server reads `config`) or "jupyterhub-singleuser" (the
    server reads the JUPYTERHUB_* variables in `env`); `listen_on` writes the address into
    whichever of the two the server reads.
    """

    user: str  # the hub's name for the user
    server_name: str  # "" for the default server
    protocol: str
    cmd: list[str]
    env: dict[str, str]
    config: dict[str, Any]
    prefix: str  # the server's URL prefix, e.g. /user/alice/ or /user/alice/work/
    user_options: dict[str, Any] = field(default_factory=dict)
    # The hub user's identity: a later user of the same name (after a removal) has another,
    # so what a spawner keeps for a user beyond a server (a volume) is not handed to them.
    owner: str = ""

    @property
    def key(self) -> str:
        """A name for this server that is unique on the hub: user, or user/server."""
        return f"{self.user}/{self.server_name}" if self.server_name else self.user

    def listen_on(self, host: str, port: int) -> None:
        if self.protocol == "jupyterhub-singleuser":
            url_host = f"[{host}]" if ":" in host else host
            self.env["JUPYTERHUB_SERVICE_URL"] = f"http://{url_host}:{port}{self.prefix}"
        else:
            self.config["port"] = port


class ProgressLog:
    """What a spawner's `start(launch)` says it is doing, for its `progress(launch)` to
    yield as it comes (the hub runs both at once, on the same Launch). A message wakes the
    follower at once, so one said right before `start` returns is copied by the hub's
    drain (minihub.servers) instead of lost in a poll interval."""

    def __init__(self) -> None:
        self._by_launch: dict[int, tuple[list[str], asyncio.Event]] = {}

    def say(self, launch: Launch, message: str) -> None:
        messages, said = self._of(launch)
        messages.append(message)
        said.set()

    async def follow(self, launch: Launch) -> AsyncIterator[str]:
        seen = 0
        entry = self._of(launch)
        messages, said = entry
        try:
            while True:
                while seen < len(messages):
                    seen += 1
                    yield messages[seen - 1]
                said.clear()
                await said.wait()
        finally:
            if self._by_launch.get(id(launch)) is entry:
                del self._by_launch[id(launch)]

    def _of(self, launch: Launch) -> tuple[list[str], asyncio.Event]:
        entry = self._by_launch.get(id(launch))
        if entry is None:
            entry = self._by_launch[id(launch)] = ([], asyncio.Event())
        return entry


@dataclass(frozen=True)
class Usage:
    memory: int  # bytes in use now (the cgroup's, else the processes' resident set)
    memory_limit: int | None  # bytes, None if unlimited
    cpu_seconds: float  # CPU time used since the server started, all its processes
    kernels: int | None = None  # kernels running in it now, None if this spawner cannot tell


@dataclass(frozen=True)
class Started:
    endpoint: Endpoint
    state: State


class Spawner(abc.ABC):
    """Base class of every spawner; see the module docstring for the contract."""

    name: ClassVar[str] = ""  # how [spawner] class names it
    # Settings of its own section (e.g. [kubernetes]), declared next to its code; they join
    # the settings table, so TOML, flags, --generate-config and docs know them.
    settings: ClassVar[list[Setting]] = []

    on_exit: Callable[[State], None] | None = None
    # The hub groups a user is in (the hub sets it from minihub.access), for spawners that
    # offer profiles or limits by group.
    groups_of: Callable[[str], list[str]] = staticmethod(lambda user: [])
    # Class folders admins shared from the admin page (hub settings), for spawners that link
    # folders into homes; the hub sets it.
    hub_shared_dirs: Callable[[], list[str]] = staticmethod(list)

    @abc.abstractmethod
    async def start(self, launch: Launch) -> Started: ...

    @abc.abstractmethod
    async def poll(self, state: State) -> int | None: ...

    @abc.abstractmethod
    async def stop(self, state: State, timeout: float) -> None: ...

    async def progress(self, launch: Launch) -> AsyncIterator[str]:
        """Messages while `launch` starts; default: none."""
        return
        yield  # pragma: no cover - makes this an async generator

    async def log_tail(self, state: State, lines: int = 20) -> str:
        return ""

    async def usage(self, state: State) -> Usage | None:
        """What a running server uses now (memory, CPU time), for the admin page; None if
        this spawner cannot tell. Cheap enough to ask for every running server a page shows
        (a cgroup's files, /proc), never a call per kernel."""
        return None

    def oom_killed(self, state: State) -> bool:
        """True if the kernel killed part of this server (e.g. a kernel) for lack of memory
        under its limit, so the user can be told why. Default: unknown, False."""
        return False

    def options_form(self, user: str) -> str:
        """HTML fields of the spawn page's form for `user`; "": no form, start at once."""
        return ""

    def options_from_form(self, form: dict[str, str]) -> dict[str, Any]:
        """user_options from the spawn form's fields."""
        return dict(form)

    def check_options(self, user: str, options: dict[str, Any]) -> None:
        """Raise SpawnError (a 4xx) if `options` would be refused; default: any are fine."""

    def leftovers(self) -> set[str]:
        """Names of users this spawner may still keep something for from servers that are
        gone (cgroups a killed hub left); the hub passes back the ones with no server to
        `tidy`. Default: nothing is kept."""
        return set()

    async def tidy(self, names: Collection[str], others: Collection[str] = ()) -> None:
        """Remove what is left of these users' servers (none of them has one now); of
        `others` (names that are not this hub's users) only what no one can be using."""

    async def close(self) -> None:
        """Release watchers; never stops servers (they outlive the hub)."""
