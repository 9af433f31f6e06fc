"""Slurm's commands, and one view of the queue shared by every poll: a single `squeue` for
all jobs per interval (not one per user), and the nodes' addresses from `sinfo`.

No accounting daemon is needed: squeue lists finished jobs for MinJobAge seconds with their
state and reason, and `scontrol show job` has the exit code.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import dataclass

log = logging.getLogger("minihub.spawner.slurm")

CACHE_SECONDS = 2.0
COMMAND_TIMEOUT = 30.0
# Job states in which the job will not run (again).
ENDED = frozenset(
    {
        "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
        "OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT",
    }
)  # fmt: skip


class SlurmError(Exception):
    """A Slurm command failed; the message is its stderr."""


@dataclass(frozen=True)
class Job:
    id: str
    state: str  # PENDING, RUNNING, COMPLETING, COMPLETED, TIMEOUT, ...
    reason: str  # Slurm's: Resources, Priority, TimeLimit, OutOfMemory, None, ...
    user: str
    node: str  # the batch host ("" while pending)
    time_limit: str

    @property
    def ended(self) -> bool:
        return self.state in ENDED


async def run(cmd: list[str], stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    """Run a command, bounded; its stdout, or SlurmError with its stderr."""
    # Found on the hub's own PATH (runuser is in /usr/sbin), whatever PATH `env` gives the job.
    exe = shutil.which(cmd[0]) or cmd[0]
    try:
        proc = await asyncio.create_subprocess_exec(
            exe,
            *cmd[1:],
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd="/",
        )
    except OSError as e:
        raise SlurmError(f"{cmd[0]}: {e.strerror}") from None
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else None), COMMAND_TIMEOUT
        )
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise SlurmError(f"{cmd[0]} did not answer within {COMMAND_TIMEOUT:g} s") from None
    if proc.returncode != 0:
        text = err.decode(errors="replace").strip() or f"exit code {proc.returncode}"
        raise SlurmError(text.removeprefix("sbatch: error: ")[:500])
    return out.decode(errors="replace")


class Queue:
    """squeue's view of all jobs, at most CACHE_SECONDS old, one call at a time."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self._at = 0.0
        self._refresh: asyncio.Task[None] | None = None
        self._addrs: dict[str, str] = {}
        self.ok = False  # the last squeue answered

    async def get(self, fresh: bool = False) -> dict[str, Job]:
        if fresh or time.monotonic() - self._at > CACHE_SECONDS:
            if self._refresh is None or self._refresh.done():
                self._refresh = asyncio.create_task(self._load())
            await asyncio.shield(self._refresh)
        return self.jobs

    async def job(self, job_id: str, fresh: bool = False) -> Job | None:
        return (await self.get(fresh)).get(job_id)

    async def _load(self) -> None:
        fmt = "%i|%T|%r|%u|%B|%l"
        try:
            out = await run(["squeue", "-h", "-a", "-t", "all", "-o", fmt])
        except SlurmError as e:
            self.ok = False
            log.warning("squeue failed: %s", e)
            return
        jobs: dict[str, Job] = {}
        for line in out.splitlines():
            parts = line.split("|")
            if len(parts) == 6:
                jid, state, reason, user, node, limit = parts
                node = "" if node in ("n/a", "(null)") else node
                jobs[jid] = Job(jid, state.split()[0], reason, user, node, limit)
        self.jobs, self._at, self.ok = jobs, time.monotonic(), True

    async def node_addr(self, node: str) -> str:
        """The node's NodeAddr (how the hub reaches it), from sinfo, cached."""
        if node not in self._addrs:
            out = await run(["sinfo", "-h", "-N", "-o", "%N|%o"])
            for line in out.splitlines():
                name, _, addr = line.partition("|")
                self._addrs[name] = addr or name
        return self._addrs.get(node, node)

    async def exit_code(self, job_id: str) -> str:
        """`scontrol show job`'s ExitCode=N:S, "" when Slurm no longer knows the job."""
        try:
            out = await run(["scontrol", "-o", "show", "job", job_id])
        except SlurmError:
            return ""
        for field in out.split():
            if field.startswith("ExitCode="):
                return field.removeprefix("ExitCode=")
        return ""

    async def partitions(self) -> list[dict[str, str]]:
        """The partitions and their limits, for the spawn form."""
        out = await run(["sinfo", "-h", "-o", "%P|%l|%c|%m|%D|%a"])
        seen: dict[str, dict[str, str]] = {}
        for line in out.splitlines():
            name, limit, cpus, mem, nodes, avail = (line.split("|") + [""] * 6)[:6]
            default = name.endswith("*")
            name = name.rstrip("*")
            seen.setdefault(
                name,
                {"name": name, "time": limit, "cpus": cpus, "memory": mem, "nodes": nodes,
                 "avail": avail, "default": "yes" if default else ""},
            )  # fmt: skip
        return list(seen.values())
