"""The 0.6 GB machine, simulated: minihub and all it spawns in one 600 MiB memory cgroup.

Twelve users (MINIHUB_MEMCAP_USERS; eight before issue 18) each get a server and a live
kernel; the next one must get a clear refusal, and the hub must never be OOM-killed. cgroup v1 (memory controller) or v2, whichever is mounted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from client import Client
from common import PREFIX, Users, log, pss_kib, user_pss_mib
from hubs import Hub, start_minihub

LIMIT_MIB = 600
USERS = int(os.environ.get("MINIHUB_MEMCAP_USERS", "12"))
V1 = Path("/sys/fs/cgroup/memory")
V2 = Path("/sys/fs/cgroup")


def _group() -> tuple[Path, int]:
    if (V1 / "memory.limit_in_bytes").exists():
        return V1 / "mhbench", 1
    return V2 / "mhbench", 2


def _files(version: int) -> dict[str, str]:
    if version == 1:
        return {
            "limit": "memory.limit_in_bytes",
            "peak": "memory.max_usage_in_bytes",
            "now": "memory.usage_in_bytes",
            "events": "memory.oom_control",
        }
    return {
        "limit": "memory.max",
        "peak": "memory.peak",
        "now": "memory.current",
        "events": "memory.events",
    }


def _remove_tree(group: Path) -> None:
    """Kill whatever is left in the group and its children, then remove them bottom-up."""
    if not group.exists():
        return
    dirs = sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    for d in [*dirs, group]:
        for _ in range(50):
            pids = (d / "cgroup.procs").read_text().split()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        try:
            d.rmdir()
        except OSError as e:
            log(f"memcap: cannot remove {d}: {e}")


def _oom_kills(group: Path, files: dict[str, str], version: int) -> int:
    """OOM kills in the group and the per-user groups below it (v2 counts them together)."""
    found = {group / files["events"]}
    if version == 1:
        found |= set(group.rglob(files["events"]))
    total = 0
    for events in found:
        for line in events.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                total += int(value)
    return total


def simulate(users: Users) -> str:
    group, version = _group()
    files = _files(version)
    _remove_tree(group)
    group.mkdir()
    (group / files["limit"]).write_text(str(LIMIT_MIB * 1024 * 1024))
    procs = group / "cgroup.procs"

    def enter() -> None:  # runs in the hub's process before exec: it starts inside the group
        procs.write_text("0")

    who = [f"{PREFIX}{i:03d}" for i in range(USERS + 1)]
    users.ensure(who)
    log(f"memcap: minihub in a {LIMIT_MIB} MiB memory cgroup, active_server_limit={USERS}")
    hub = start_minihub(active_limit=USERS, preexec=enter)
    try:
        try:
            result = asyncio.run(_drive(hub, who))
        except Exception as e:  # noqa: BLE001 - e.g. the hub was killed: report what is known
            result = {"errors": [f"driver stopped: {e!r}"[:300]]}
        hub_alive = hub.proc.poll() is None
        peak = int((group / files["peak"]).read_text()) / 2**20
        kills = _oom_kills(group, files, version)
    finally:
        hub.stop()
        _remove_tree(group)
    return _summary(result, hub_alive, peak, kills)


async def _drive(hub: Hub, who: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    async with Client(hub.url, hub.token) as c:
        await c.create_users(who)
        kernels = {}
        for name in who[:USERS]:
            r = await c.spawn(name)
            if not r.ok:
                out.setdefault("errors", []).append(f"{name}: {r.status} {r.error}")  # type: ignore[union-attr]
                continue
            try:
                kid, _ = await c.start_kernel(name)
                await c.execute_latencies(name, kid, 1, 30)
            except Exception as e:  # noqa: BLE001 - e.g. killed for lack of memory: the finding
                out.setdefault("errors", []).append(f"{name}'s kernel: {e!r}"[:200])  # type: ignore[union-attr]
                continue
            kernels[name] = kid
        async with c.session.post(c.api(f"/users/{who[USERS]}/server")) as r:
            out["ninth"] = (r.status, (await r.text())[:200])
        await asyncio.sleep(3)
        live = 0
        for name, kid in kernels.items():  # every kernel still answers after the refusal
            try:
                live += bool(await c.execute_latencies(name, kid, 1, 30))
            except Exception as e:  # noqa: BLE001 - a dead kernel is the finding
                log(f"memcap: {name}'s kernel did not answer: {e!r}")
        out["live"] = live
        out["hub_pss"] = pss_kib(hub.proc.pid) / 1024
        out["user_pss"] = [round(user_pss_mib(n), 1) for n in kernels]
    return out


def _summary(r: dict[str, object], hub_alive: bool, peak: float, kills: int) -> str:
    status, body = r.get("ninth", (0, ""))  # type: ignore[misc]
    lines = [
        (
            f"**0.6 GB machine** (minihub and everything it spawns in one {LIMIT_MIB} MiB memory "
            f"cgroup, `[spawner] active_server_limit = {USERS}`):"
        ),
        f"- users with a live kernel answering `1+1`: {r.get('live')} of {USERS}",
        f"- user {USERS + 1}'s spawn: HTTP {status} {body}",
        (
            f"- hub alive at the end: {'yes' if hub_alive else 'NO'}; OOM kills in the group: "
            f"{kills}; peak usage {peak:.0f} MiB of {LIMIT_MIB}"
        ),
        (
            f"- hub PSS {r.get('hub_pss', 0):.0f} MiB; per-user PSS (server + kernel): "
            f"{r.get('user_pss')}"
        ),
    ]
    if r.get("errors"):
        lines.append(f"- spawn errors: {r['errors']}")
    return "\n".join(lines)
