"""One running kernel: its process (via jupyter_client), its iopub fan-out and its health.

A watcher restarts a kernel that dies (telling clients `restarting`, then `dead` if it keeps
dying) and says when the kernel was killed by the memory cgroup's OOM killer (v1 or v2).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.session import DELIM, Session

from ..isotime import isoformat
from ..procfs import oom_kills
from .transport import all_bound, endpoint, socket_paths
from .wire import Parts, msg_type

log = logging.getLogger("minihub.kernels")

Listener = Callable[[str, Parts], None]
WATCH_INTERVAL = 1.0
READY_TIMEOUT = 60.0
DEATHS_BEFORE_DEAD = 5  # deaths within DEATH_WINDOW after which we stop restarting
DEATH_WINDOW = 60.0
SOCKET_TYPES = {"shell": zmq.DEALER, "stdin": zmq.DEALER, "control": zmq.DEALER, "iopub": zmq.SUB}
# zmq retries a connect to a socket that is not bound yet (a starting or restarting kernel)
# every reconnect_ivl; short, so clients' sockets rejoin a restarted kernel at once.
RECONNECT_MS = 10
BIND_POLL = 0.02


class Kernel:
    """A kernel process plus the state clients see: execution_state, last_activity."""

    def __init__(
        self,
        kernel_id: str,
        name: str,
        path: str,
        km: AsyncKernelManager,
        context: zmq.asyncio.Context,
    ) -> None:
        self.id = kernel_id
        self.name = name
        self.path = path
        self.km = km
        self.context = context
        self.execution_state = "starting"
        self.last_activity = time.time()
        self.connections = 0
        self.reason = ""
        self.listeners: set[Listener] = set()
        self.on_dead: list[Callable[[Kernel], None]] = []
        self.session = Session(
            key=km.session.key,
            signature_scheme=km.session.signature_scheme,
            username=os.environ.get("USER", "minihub"),
        )
        self._lock = asyncio.Lock()
        self._iopub: zmq.asyncio.Socket | None = None
        self._iopub_seen = asyncio.Event()
        self._probe_ids: set[str] = set()
        # Set once iopub is known to reach us: before that the kernel's PUB socket would drop
        # a client's outputs (zmq's slow joiner), so clients' requests wait for it.
        self.ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._deaths: list[float] = []
        self._closed = False

    def model(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "last_activity": isoformat(self.last_activity),
            "execution_state": self.execution_state,
            "connections": self.connections,
        }

    def touch(self) -> None:
        self.last_activity = time.time()

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, cwd: str, env: dict[str, str]) -> None:
        await self.km.start_kernel(cwd=cwd, env=env)
        self._iopub = self.connect("iopub")
        self._tasks = [
            asyncio.create_task(self._iopub_loop()),
            asyncio.create_task(self._watch_loop()),
            asyncio.create_task(self._first_ready()),
        ]

    async def _first_ready(self) -> None:
        try:
            await self.wait_ready()
        except (TimeoutError, RuntimeError) as e:
            log.warning("kernel %s did not become ready: %s", self.id, e)

    async def interrupt(self) -> None:
        await self.km.interrupt_kernel()

    async def restart(self) -> None:
        """A restart the user asked for (no `restarting` broadcast: clients expect it)."""
        async with self._lock:
            self.execution_state = "restarting"
            self.ready.clear()
            await self.km.restart_kernel(now=False)
        await self.wait_ready()

    async def shutdown(self, now: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        async with self._lock:
            try:
                await self.km.shutdown_kernel(now=now)
            except Exception:
                log.exception("kernel %s: shutdown failed; killing it", self.id)
                await self.km.shutdown_kernel(now=True)
        if self._iopub is not None:
            self._iopub.close(linger=0)
        self.execution_state = "dead"

    # --- zmq -------------------------------------------------------------------------------

    def connect(self, channel: str, identity: bytes | None = None) -> zmq.asyncio.Socket:
        """A new socket connected to one of the kernel's channels."""
        info: dict[str, Any] = dict(self.km.get_connection_info())
        sock = self.context.socket(SOCKET_TYPES[channel])
        sock.linger = 0
        sock.reconnect_ivl = RECONNECT_MS
        if channel == "iopub":
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        elif identity:
            sock.setsockopt(zmq.IDENTITY, identity)
        sock.connect(endpoint(info, channel))
        return sock

    def bound(self) -> bool:
        """True once the kernel has bound all its sockets (always true over tcp)."""
        return all_bound(socket_paths(dict(self.km.get_connection_info())))

    async def until_bound(self) -> None:
        """Wait until the kernel's socket files exist, so connects complete at once."""
        while not self.bound():
            if not await self.km.is_alive():
                raise RuntimeError("the kernel process exited")
            await asyncio.sleep(BIND_POLL)

    def signed(self, parts: Parts) -> list[bytes]:
        return [DELIM, self.session.sign(parts[:4]), *parts]

    def verify(self, frames: list[bytes]) -> Parts | None:
        """Parts of a message from the kernel, or None if it is not signed with our key."""
        try:
            idx = frames.index(DELIM)
        except ValueError:
            return None
        sig, parts = frames[idx + 1], frames[idx + 2 :]
        if len(parts) < 4 or not hmac.compare_digest(sig, self.session.sign(parts[:4])):
            return None
        return parts

    def make_message(self, kind: str, content: dict[str, Any]) -> Parts:
        msg = self.session.msg(kind, content)
        return [
            self.session.pack(msg["header"]),
            self.session.pack(msg["parent_header"]),
            self.session.pack(msg["metadata"]),
            self.session.pack(msg["content"]),
        ]

    def broadcast(self, channel: str, parts: Parts) -> None:
        for listener in list(self.listeners):
            try:
                listener(channel, parts)
            except Exception:
                log.exception("kernel %s: listener failed", self.id)

    def broadcast_status(self, state: str, reason: str = "") -> None:
        content: dict[str, Any] = {"execution_state": state}
        if reason:
            content["reason"] = reason
        self.broadcast("iopub", self.make_message("status", content))

    async def _iopub_loop(self) -> None:
        assert self._iopub is not None
        while True:
            frames = await self._iopub.recv_multipart()
            parts = self.verify(frames)
            if parts is None:
                log.warning("kernel %s: dropped an unsigned iopub message", self.id)
                continue
            if not self._iopub_seen.is_set() and self._from_this_kernel(parts):
                self._iopub_seen.set()
            self.touch()
            if msg_type(parts) == "status":
                self._track_status(parts[3])
            self.broadcast("iopub", parts)

    def _from_this_kernel(self, parts: Parts) -> bool:
        """A welcome or an answer to our probe: not an old kernel's message still queued."""
        if msg_type(parts) == "iopub_welcome":
            return True
        try:
            return json.loads(parts[1]).get("msg_id") in self._probe_ids
        except (ValueError, AttributeError):
            return False

    def _track_status(self, content: bytes) -> None:
        try:
            state = json.loads(content).get("execution_state")
        except (ValueError, AttributeError):
            return
        if isinstance(state, str) and self.execution_state not in ("restarting", "dead"):
            self.execution_state = state
        elif state == "idle" and self.execution_state == "restarting":
            self.execution_state = "idle"

    # --- readiness -------------------------------------------------------------------------

    async def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Nudge with kernel_info until the kernel answers and its iopub reaches us."""
        self._iopub_seen.clear()
        self._probe_ids.clear()
        await asyncio.wait_for(self._probe(), timeout)
        if self.execution_state in ("starting", "restarting"):
            self.execution_state = "idle"
        self.ready.set()

    async def until_ready(self) -> None:
        """Wait (bounded) until iopub flows; a client's request sent sooner could lose output."""
        if not self.ready.is_set():
            try:
                await asyncio.wait_for(self.ready.wait(), READY_TIMEOUT)
            except TimeoutError:
                log.warning("kernel %s: not ready; sending the request anyway", self.id)

    async def _probe(self) -> None:
        # Connecting before the kernel has bound would only cost zmq's retry; waiting for its
        # socket files first makes the probe's connect (and the iopub reconnect) immediate.
        await self.until_bound()
        probe = self.connect("shell", os.urandom(16))
        try:
            await self._nudge(probe)
        finally:
            probe.close(linger=0)

    async def _nudge(self, probe: zmq.asyncio.Socket) -> None:
        answered = False
        while not (answered and self._iopub_seen.is_set()):
            if not await self.km.is_alive():
                raise RuntimeError("the kernel process exited")
            request = self.make_message("kernel_info_request", {})
            self._probe_ids.add(json.loads(request[0])["msg_id"])
            await probe.send_multipart(self.signed(request))
            try:
                await asyncio.wait_for(probe.recv_multipart(), 0.5)
                answered = True
                await asyncio.wait_for(self._iopub_seen.wait(), 0.5)
            except TimeoutError:
                continue

    # --- death and restart -----------------------------------------------------------------

    async def _watch_loop(self) -> None:
        oom = OomCounter()
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            if self._lock.locked() or await self.km.is_alive():
                oom.refresh()
                continue
            async with self._lock:
                await self._revive(oom)

    async def _revive(self, oom: OomCounter) -> None:
        status = await self.km.provisioner.poll() if self.km.provisioner else None
        why = describe_exit(status, oom.increased())
        now = time.time()
        self._deaths = [t for t in self._deaths if now - t < DEATH_WINDOW] + [now]
        if len(self._deaths) >= DEATHS_BEFORE_DEAD:
            return self._give_up(f"{why}; it died {len(self._deaths)} times in a minute")
        log.warning("kernel %s (%s) died (%s); restarting it", self.id, self.name, why)
        self.reason = why
        self.execution_state = "restarting"
        self.ready.clear()
        self.broadcast_status("restarting", why)
        for attempt in range(1, 4):
            try:
                await self.km.restart_kernel(now=True)
                await self.wait_ready()
                oom.refresh()
                return None
            except Exception as e:  # noqa: BLE001 - any failure is one failed attempt
                log.warning("kernel %s: restart attempt %d failed: %s", self.id, attempt, e)
        return self._give_up(f"{why}; restarting it failed")

    def _give_up(self, why: str) -> None:
        log.error("kernel %s (%s) is dead: %s", self.id, self.name, why)
        self.reason = why
        self.execution_state = "dead"
        self.broadcast_status("dead", why)
        for hook in list(self.on_dead):
            hook(self)


def describe_exit(status: int | None, oom_killed: bool) -> str:
    # The OOM killer sends SIGKILL; an exit with a status of its own was not its doing even
    # if it struck another process of the server meanwhile.
    if oom_killed and status in (None, -signal.SIGKILL):
        return "killed: out of memory"
    if status is not None and status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exited with status {status}"


class OomCounter:
    """The OOM-kill count of this server's memory cgroup (cgroup v2), to explain deaths.

    The count goes up when the OOM killer picks its victim, but the victim is seen dead only
    once it has exited, which for a process that held hundreds of MB can take longer than a
    watch interval: a reading taken meanwhile (the kernel still alive) must not become the
    baseline, or the kill that ended it would not count. So the baseline is the newest
    reading at least SETTLE seconds old.
    """

    SETTLE = 10.0

    def __init__(self) -> None:
        self.path = _memory_events_path()
        self.readings: deque[tuple[float, int]] = deque([(time.monotonic(), self._read())])

    def _read(self) -> int:
        return (oom_kills(self.path) if self.path else None) or 0

    def refresh(self) -> None:
        now = time.monotonic()
        self.readings.append((now, self._read()))
        while len(self.readings) > 1 and self.readings[1][0] <= now - self.SETTLE:
            self.readings.popleft()

    def increased(self) -> bool:
        """True if the count grew since the baseline; the count now becomes the baseline."""
        now = self._read()
        grew = now > self.readings[0][1]
        self.readings = deque([(time.monotonic(), now)])
        return grew


def _memory_events_path() -> Path | None:
    """memory.events (cgroup v2) or memory.oom_control (v1) of this process's memory cgroup."""
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        _, controllers, rel = line.split(":", 2)
        if controllers == "":
            found = _existing(Path("/sys/fs/cgroup"), rel, "memory.events")
        elif "memory" in controllers.split(","):
            found = _existing(Path("/sys/fs/cgroup/memory"), rel, "memory.oom_control")
        else:
            continue
        if found is not None:
            return found
    return None


def _existing(mount: Path, rel: str, name: str) -> Path | None:
    # A mount rooted below the hierarchy's top (containers) shows fewer leading components.
    parts = [p for p in rel.split("/") if p]
    for i in range(len(parts) + 1):
        candidate = mount.joinpath(*parts[i:], name)
        if candidate.is_file():
            return candidate if parts[i:] else None  # the root group has no useful limit
    return None
