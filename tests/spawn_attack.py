"""Helpers for the attack tests on what a spawned server gets (items 4, 11, 12 of issue 12):
a real `python -m minihub` process, real system users, kernels driven over the websocket."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import helpers
from test_config_cli import MINIHUB, free_port, start_hub


@dataclass
class Hub:
    base: str
    data: Path
    log: Path
    proc: Any
    toml: Path
    tokens: dict[str, str] = field(default_factory=dict)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*MINIHUB, "-f", str(self.toml), "--data-dir", str(self.data), *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def token(self, name: str) -> str:
        """Add `name` (an existing system account) to the hub; an API token for it."""
        return self.tokens_for([name])[name]

    def tokens_for(self, names: list[str]) -> dict[str, str]:
        """`token` for each name (what `minihub user add` and `minihub token` do)."""
        return helpers.add_users(self.data, names, self.toml)

    def server_row(self, name: str) -> tuple[int, str]:
        """(pid, nonce) of the user's server, from the hub's database."""
        with contextlib.closing(sqlite3.connect(self.data / "minihub.sqlite")) as db:
            row = db.execute(
                "SELECT json_extract(s.state, '$.pid'), s.nonce FROM servers s "
                "JOIN users u ON u.id = s.user_id WHERE u.name = ? AND s.name = ''",
                (name,),
            ).fetchone()
        assert row is not None, f"no server row for {name}"
        return int(row[0]), str(row[1])


@contextlib.asynccontextmanager
async def running_hub(tmp: Path, toml: str = "", users: tuple[str, ...] = ()) -> AsyncIterator[Hub]:
    """`python -m minihub` with this config; `users` are added (with tokens) before it starts."""
    port = free_port()
    path = tmp / "minihub.toml"
    path.write_text(toml)
    data = tmp / "data"
    data.mkdir(mode=0o711, exist_ok=True)
    cmd = [*MINIHUB, "-f", str(path), "--data-dir", str(data), "--port", str(port)]
    log = tmp / "hub.log"
    hub = Hub(f"http://127.0.0.1:{port}", data, log, None, path)
    hub.tokens = hub.tokens_for(list(users))
    hub.proc = start_hub(cmd, port, log)
    try:
        yield hub
    finally:
        if hub.proc.poll() is None:
            hub.proc.send_signal(signal.SIGTERM)
            try:
                hub.proc.wait(20)
            except subprocess.TimeoutExpired:
                hub.proc.kill()


def h(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


async def start_server(s: aiohttp.ClientSession, hub: Hub, name: str) -> None:
    r = await s.post(f"{hub.base}/hub/api/users/{name}/server")
    assert r.status in (201, 202), await r.text()
    for _ in range(300):
        user = await (await s.get(f"{hub.base}/hub/api/users/{name}")).json()
        if user.get("server"):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name}'s server did not start: {hub.log.read_text()[-3000:]}")


async def stop_server(s: aiohttp.ClientSession, hub: Hub, name: str) -> None:
    await s.delete(f"{hub.base}/hub/api/users/{name}/server")


async def new_kernel(s: aiohttp.ClientSession, hub: Hub, name: str) -> str:
    r = await s.post(f"{hub.base}/user/{name}/api/kernels", json={})
    assert r.status == 201, await r.text()
    return str((await r.json())["id"])


async def execute(
    s: aiohttp.ClientSession, hub: Hub, name: str, kernel: str, code: str, timeout: float = 60
) -> str:
    """Run `code` in the kernel; its stdout, stderr and error text, once it is idle again."""
    url = f"{hub.base}/user/{name}/api/kernels/{kernel}/channels"
    return await helpers.execute(s, url, code, timeout=timeout, max_msg_size=0)


def process_memory(pid: int) -> bytes:
    """Every readable mapping of a process (root reads /proc/PID/mem even when the process
    is not dumpable)."""
    chunks = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            parts = line.split()
            if "r" not in parts[1] or (len(parts) > 5 and parts[5] in ("[vvar]", "[vsyscall]")):
                continue
            start, end = (int(x, 16) for x in parts[0].split("-"))
            try:
                mem.seek(start)
                chunks.append(mem.read(end - start))
            except (OSError, OverflowError, ValueError):
                continue
    return b"".join(chunks)


def children(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(x) for x in (task / "children").read_text().split()]
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
