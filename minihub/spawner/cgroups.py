"""Per-user memory, CPU and process limits with cgroups (v2, or the v1 memory, cpu and pids
controllers).

Each user gets a "minihub/<user>" group below the hub's own cgroup; its processes (server and
kernels) share the limits, the kernel's OOM killer picks a victim inside it, and stopping a
server kills everything left in it. Without usable cgroups, spawning works, unlimited.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from ..procfs import oom_kills

log = logging.getLogger("minihub.spawner")

ROOT = Path("/sys/fs/cgroup")
_PERIOD_US = 100_000
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.@-]")
DEFAULT_SERVER_GROUP = "_default"  # not a valid server name, so it names no named server
# Held while a user's groups are made (the user's, then the server's below it) and while an
# unused user's group is removed, so a removal never falls between the two mkdirs.
SETUP_LOCK = threading.Lock()


def _read(path: Path) -> str:
    with open(path) as f:
        return f.read()


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _own_cgroup(controller: str) -> str:
    """This process's path in the hierarchy holding `controller` ("" selects cgroup v2)."""
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        _, names, path = line.split(":", 2)
        if (controller == "" and names == "") or controller in names.split(","):
            return path.strip("/")
    return ""


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fs type, options) of every mount."""
    found = []
    for line in _read(Path("/proc/self/mounts")).splitlines():
        parts = line.split()
        if len(parts) > 3:
            found.append((parts[1], parts[2], set(parts[3].split(","))))
    return found


def _is_mount(path: Path, fstype: str) -> bool:
    return any(point == str(path) and typ == fstype for point, typ, _ in _mounts())


def _v1_mount(root: Path, controller: str) -> Path | None:
    """Where the v1 `controller` is mounted under root (often co-mounted, "cpu,cpuacct")."""
    for point, typ, options in _mounts():
        if typ == "cgroup" and controller in options and point.startswith(str(root) + "/"):
            return Path(point)
    return None


@dataclass
class Mode:
    """Where user groups live: v2 `base`, or v1 `memory`, `cpu` and/or `pids` bases."""

    version: int  # 2, 1, or 0 for none
    base: Path | None = None
    memory: Path | None = None
    cpu: Path | None = None
    pids: Path | None = None


_mode: Mode | None = None


def detect(root: Path = ROOT) -> Mode:
    """Find usable cgroups once per process; log one line when there are none."""
    global _mode
    if _mode is None:
        _mode = _detect(root)
    return _mode


def _detect(root: Path) -> Mode:
    try:
        mode = _detect_v2(root) or _detect_v1(root)
    except OSError as e:
        log.warning("cgroups: cannot be used (%s)", e)
        mode = None
    if mode is None:
        log.warning(
            "cgroups: no usable cgroup v2 or v1 memory/cpu/pids controller (or no "
            "permission); mem_limit and cpu_limit are not enforced, max_processes "
            "falls back to RLIMIT_NPROC"
        )
        return Mode(0)
    log.info("cgroups: using v%d for per-user limits", mode.version)
    return mode


def _detect_v2(root: Path) -> Mode | None:
    if not _is_mount(root, "cgroup2"):
        return None
    if not {"memory", "cpu"} <= set(_read(root / "cgroup.controllers").split()):
        return None
    wanted = "+memory +cpu"
    if "pids" in _read(root / "cgroup.controllers").split():
        wanted += " +pids"
    own = root / _own_cgroup("")
    base = own / "minihub"
    try:
        _enable_v2(own, base, wanted)
    except OSError as e:
        log.warning("cgroups: v2 present but not delegated to minihub (%s)", e)
        return None
    return Mode(2, base=base)


def _enable_v2(own: Path, base: Path, wanted: str) -> None:
    try:
        _write(own / "cgroup.subtree_control", wanted)
    except OSError as e:
        if e.errno != errno.EBUSY:
            raise
        # v2 forbids controllers below a group that holds processes ("no internal
        # processes"): move the hub into a leaf of its own group, as systemd's delegation
        # docs prescribe, then enable them.
        (own / "hub").mkdir(exist_ok=True)
        _write(own / "hub" / "cgroup.procs", str(os.getpid()))
        _write(own / "cgroup.subtree_control", wanted)
    base.mkdir(exist_ok=True)
    _write(base / "cgroup.subtree_control", wanted)
    if not os.access(base, os.W_OK):
        raise PermissionError(f"{base} is not writable")


def _detect_v1(root: Path) -> Mode | None:
    mode = Mode(1)
    for controller in ("memory", "cpu", "pids"):
        mount = _v1_mount(root, controller)
        if mount is None:
            continue
        base = mount / _own_cgroup(controller) / "minihub"
        try:
            base.mkdir(exist_ok=True)
        except OSError as e:
            log.warning("cgroups: cannot create %s (%s)", base, e)
            continue
        if os.access(base, os.W_OK):  # made by an earlier hub running as root, maybe
            setattr(mode, controller, base)
    return mode if (mode.memory or mode.cpu or mode.pids) else None


def safe_name(name: str) -> str:
    """A directory name for the user (cgroup names cannot hold '/' and some others)."""
    cleaned = _SAFE_NAME.sub("_", name)[:100]
    return cleaned if cleaned.strip(".") else "_" + cleaned


class UserCgroup:
    """The cgroup(s) of one user; all methods are cheap sysfs writes and never raise."""

    def __init__(self, dirs: list[Path], version: int) -> None:
        self.dirs = dirs
        self.version = version
        self._oom_base = 0

    @classmethod
    def for_user(cls, name: str, mode: Mode | None = None) -> UserCgroup:
        mode = mode or detect()
        bases = [b for b in (mode.base, mode.memory, mode.cpu, mode.pids) if b is not None]
        return cls([b / safe_name(name) for b in bases], mode.version)

    @classmethod
    def for_server(
        cls, user: str, server: str, mode: Mode | None = None
    ) -> tuple[UserCgroup, UserCgroup]:
        """The user's groups (which hold the limits, shared by all of the user's servers)
        and, below them, this server's (which holds its processes)."""
        parent = cls.for_user(user, mode)
        leaf = DEFAULT_SERVER_GROUP if not server else safe_name(server)
        return parent, cls([d / leaf for d in parent.dirs], parent.version)

    @classmethod
    def from_paths(cls, paths: list[str]) -> UserCgroup:
        """Re-adopt groups recorded by an earlier hub (only paths under /sys/fs/cgroup)."""
        dirs = [Path(p) for p in paths if _under_root(p)]
        version = 2 if any((d / "cgroup.controllers").exists() for d in dirs) else 1
        return cls(dirs, version if dirs else 0)

    @property
    def enabled(self) -> bool:
        return bool(self.dirs)

    def paths(self) -> list[str]:
        return [str(d) for d in self.dirs]

    @property
    def limits_processes(self) -> bool:
        """Whether these groups can hold a process limit (a pids controller is among them)."""
        return any((d / "pids.max").exists() for d in self.dirs)

    def setup(self, mem_limit: int, cpu_limit: float, max_processes: int = 0) -> bool:
        """Create the groups and set the limits (0: none). False if that failed."""
        try:
            for d in self.dirs:
                d.mkdir(exist_ok=True)
            if self.version == 2:
                self._limits_v2(mem_limit, cpu_limit)
            else:
                self._limits_v1(mem_limit, cpu_limit)
            for d in self.dirs:
                # Processes and threads of the user at once: a fork bomb stops here.
                if (d / "pids.max").exists():
                    _write(d / "pids.max", str(max_processes) if max_processes else "max")
            self._oom_base = self.oom_kills()
            return True
        except OSError as e:
            log.warning("cgroups: cannot set limits in %s: %s", self.paths(), e)
            return False

    def _limits_v2(self, mem: int, cpu: float) -> None:
        d = self.dirs[0]
        _write(d / "memory.max", str(mem) if mem else "max")
        if (d / "memory.swap.max").exists():
            _write(d / "memory.swap.max", "0" if mem else "max")
        quota = int(cpu * _PERIOD_US) if cpu > 0 else "max"
        _write(d / "cpu.max", f"{quota} {_PERIOD_US}")

    def _limits_v1(self, mem: int, cpu: float) -> None:
        for d in self.dirs:
            if (d / "memory.limit_in_bytes").exists():
                _limit_memory_v1(d, mem)
            if (d / "cpu.cfs_quota_us").exists():
                _write(d / "cpu.cfs_period_us", str(_PERIOD_US))
                _write(d / "cpu.cfs_quota_us", str(int(cpu * _PERIOD_US) if cpu > 0 else -1))

    def add(self, pid: int) -> bool:
        """Move `pid` (and so its future children) into the user's groups."""
        ok = True
        for d in self.dirs:
            try:
                _write(d / "cgroup.procs", str(pid))
            except OSError as e:
                log.warning("cgroups: cannot add pid %d to %s: %s", pid, d, e)
                ok = False
        return ok

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs:
            try:
                found.update(int(x) for x in _read(d / "cgroup.procs").split())
            except (OSError, ValueError):
                pass
        return found

    def kill_all(self) -> set[int]:
        """SIGKILL everything in the groups (kernels that left the process group too)."""
        if self.version == 2 and self.dirs and (self.dirs[0] / "cgroup.kill").exists():
            try:
                _write(self.dirs[0] / "cgroup.kill", "1")
            except OSError as e:
                log.warning("cgroups: cgroup.kill failed: %s", e)
        killed = set()
        # A process forking while we read could slip past once; a few rounds catch it.
        for _ in range(5):
            pids = self.pids() - {os.getpid()}
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
                except ProcessLookupError:
                    pass
        return killed

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer has killed in this group, ever."""
        for d in self.dirs:
            for name in ("memory.events", "memory.oom_control"):
                count = oom_kills(d / name)
                if count is not None:
                    return count
        return 0

    def oom_killed_recently(self, since: int | None = None) -> bool:
        """True if the OOM killer struck since `setup()` (or since the count `since`)."""
        return self.oom_kills() > (self._oom_base if since is None else since)

    def memory_current(self) -> int | None:
        """Bytes the group's processes use now (v2 memory.current, v1 usage_in_bytes)."""
        return _first_number(self.dirs, ("memory.current", "memory.usage_in_bytes"))

    def memory_limit(self) -> int | None:
        """The group's memory limit in bytes; None if it has none (or no memory group)."""
        value = _first_number(self.dirs, ("memory.max", "memory.limit_in_bytes"))
        return value if value is not None and value < _UNLIMITED else None

    def cpu_seconds(self) -> float | None:
        """CPU time the group's processes used, the exited ones too (v2 cpu.stat)."""
        for d in self.dirs:
            try:
                for line in _read(d / "cpu.stat").splitlines():
                    key, _, value = line.partition(" ")
                    if key == "usage_usec":
                        return int(value) / 1e6
            except (OSError, ValueError):
                continue
        return None

    def remove(self) -> None:
        """Delete the (empty) groups; a no-op while processes remain."""
        for d in self.dirs:
            try:
                d.rmdir()
            except OSError:
                pass

    def remove_unused(self) -> None:
        """Delete a user's groups once none of the user's servers has one below it (rmdir
        refuses a group holding groups or processes), under SETUP_LOCK."""
        with SETUP_LOCK:
            self.remove()


def leftover_users(mode: Mode | None = None) -> set[str]:
    """Names of the user groups that exist (safe_name's, as made by for_user)."""
    mode = mode or detect()
    names: set[str] = set()
    for base in (mode.base, mode.memory, mode.cpu, mode.pids):
        if base is None:
            continue
        with contextlib.suppress(OSError):
            names.update(e.name for e in os.scandir(base) if e.is_dir(follow_symlinks=False))
    return names


def remove_leftovers(name: str, leaves: bool, mode: Mode | None = None) -> None:
    """Remove the empty groups of a user (a directory name from leftover_users) who has no
    server: what a killed hub, a server that outlived its stop or an older hub left. With
    `leaves` false only the user's group itself when nothing is below it (a name this hub
    does not know may be another hub's user, whose server's group exists before its process
    joins it)."""
    parent = UserCgroup.for_user(name, mode)
    with SETUP_LOCK:
        if leaves:
            for d in parent.dirs:
                with contextlib.suppress(OSError):
                    for leaf in os.scandir(d):
                        if leaf.is_dir(follow_symlinks=False):
                            with contextlib.suppress(OSError):
                                os.rmdir(leaf.path)
        parent.remove()


def _limit_memory_v1(d: Path, mem: int) -> None:
    limit = str(mem) if mem else "-1"
    memsw = d / "memory.memsw.limit_in_bytes"
    # memsw (memory+swap) must stay >= the memory limit, so open it up first; capping it to
    # the same value afterwards stops a user from escaping the limit into swap.
    if memsw.exists():
        _write(memsw, "-1")
    _write(d / "memory.limit_in_bytes", limit)
    if memsw.exists() and mem:
        _write(memsw, limit)
    # Let the kernel OOM-kill inside the group instead of freezing the group's tasks.
    _write(d / "memory.oom_control", "0")


def _under_root(path: str) -> bool:
    p = os.path.normpath(path)
    return p.startswith(str(ROOT) + "/") and "/minihub/" in p


_UNLIMITED = 1 << 60  # v1 says "no limit" with a huge number (PAGE_COUNTER_MAX pages)


def _first_number(dirs: list[Path], names: tuple[str, ...]) -> int | None:
    """The first of these files that exists in these dirs, as a number ("max": none)."""
    for d in dirs:
        for name in names:
            try:
                text = _read(d / name).strip()
            except OSError:
                continue
            return None if text == "max" else int(text)
    return None


def hub_memory(root: Path = ROOT) -> tuple[int, int]:
    """(bytes in use, limit) for the hub's line on the admin page: the hub's own memory
    cgroup when it has a limit (a container, a systemd MemoryMax), else the machine's."""
    try:
        for controller, names in (
            ("", ("memory.current", "memory.max")),
            ("memory", ("memory.usage_in_bytes", "memory.limit_in_bytes")),
        ):
            mount = root if controller == "" else _v1_mount(root, "memory")
            if mount is None:
                continue
            d = mount / _own_cgroup(controller)
            used, limit = _first_number([d], names[:1]), _first_number([d], names[1:])
            if used is not None and limit is not None and limit < _UNLIMITED:
                return used, limit
    except (OSError, ValueError):
        pass
    return _machine_memory()


def _machine_memory() -> tuple[int, int]:
    info: dict[str, int] = {}
    for line in _read(Path("/proc/meminfo")).splitlines():
        key, _, value = line.partition(":")
        info[key] = int(value.split()[0]) * 1024
    total = info.get("MemTotal", 0)
    return total - info.get("MemAvailable", info.get("MemFree", 0)), total
