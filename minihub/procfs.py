"""What minihub reads of processes from the kernel's pseudo files (/proc/PID/stat, a memory
cgroup's OOM count), and signalling a process group. Hub, spawners and user servers share
it, so it imports nothing else."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple


class ProcStat(NamedTuple):
    state: str  # R, S, D, Z (zombie), X (dead), ...
    pgrp: int
    start_ticks: int  # field 22: with the pid, tells a reused pid apart
    uid: int  # the owner of /proc/PID (the real uid)
    ppid: int


def proc_stat(pid: int) -> ProcStat | None:
    """A process's /proc/PID/stat fields (and owner), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode(errors="replace")
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = text[text.rfind(")") + 2 :].split()
    return ProcStat(fields[0], int(fields[2]), int(fields[19]), uid, int(fields[1]))


def start_ticks(pid: int) -> int | None:
    info = proc_stat(pid)
    return info.start_ticks if info else None


def alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    info = proc_stat(pid)
    return info is not None and info.state not in ("Z", "X")


def oom_kills(path: Path) -> int | None:
    """The OOM killer's count in a memory cgroup's memory.events (v2) or memory.oom_control
    (v1): both have an `oom_kill N` line. None if the file is unreadable or has none."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def signal_group(pgid: int, sig: int) -> None:
    """Signal a process group that may be gone already, or (re-adopted) not ours to signal."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def tcp_rows() -> Iterator[list[str]]:
    """The columns of each TCP socket of this machine's network namespace (IPv4 and IPv6),
    as /proc/net/tcp and tcp6 give them: [1] local and [2] remote address:port in hex,
    [3] the state, [7] the owner's uid."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 7:
                yield cols


def tcp_socket_uid(local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    """The owner (uid) of this machine's TCP socket from `local` to `remote`, from
    /proc/net/tcp and tcp6: for a connection the hub accepted from loopback, pass the
    peer's address as `local` and the hub's as `remote` to learn who connected. None if
    there is no such socket (it closed meanwhile)."""
    import ipaddress

    def norm(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        try:
            a = ipaddress.ip_address(addr.split("%", 1)[0])
        except ValueError:
            return None
        return a.ipv4_mapped or a if isinstance(a, ipaddress.IPv6Address) else a

    def parse(col: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
        hexaddr, _, hexport = col.partition(":")
        raw = bytes.fromhex(hexaddr)  # 32-bit words in host (little-endian) order
        if len(raw) == 4:
            return ipaddress.IPv4Address(raw[::-1]), int(hexport, 16)
        a = ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
        return a.ipv4_mapped or a, int(hexport, 16)

    want = ((norm(local[0]), local[1]), (norm(remote[0]), remote[1]))
    if None in (want[0][0], want[1][0]):
        return None
    port = f":{local[1]:04X}"
    for cols in tcp_rows():
        if not cols[1].endswith(port):  # the cheap test first: most rows are other ports
            continue
        try:
            if (parse(cols[1]), parse(cols[2])) == want:
                return int(cols[7])
        except ValueError:
            continue
    return None
