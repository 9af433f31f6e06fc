"""Issue 12, item 11: process limits, disk quota, and a server log that cannot fill the disk.

A fork bomb in a kernel stops at [spawner] max_processes (the pids cgroup here; RLIMIT_NPROC
where there is none) while the hub and other users carry on; a kernel writing to its stdout
and stderr in a loop cannot grow its server's log in <data_dir>/logs past
[spawner] log_max_bytes, even with the hub stopped; [users] disk_quota is applied or the log
says plainly why not (this machine's kernel has no quota formats, so only that path runs).
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
from conftest import needs_root
from spawn_attack import execute, h, new_kernel, running_hub, start_server, stop_server

FORK_BOMB = """
import os, time
pids, err = [], ''
for i in range(2000):
    try:
        pid = os.fork()
    except OSError as e:
        err = type(e).__name__
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    pids.append(pid)
time.sleep(3)  # hold them while the others work
for p in pids:
    os.kill(p, 9)
for p in pids:
    os.waitpid(p, 0)
print('forked', len(pids), err)
"""

FLOOD = """
import os, sys, threading
def flood():
    line = b'x' * 1023 + b'\\n'
    for i in range(3000):   # 3 MiB through fd 1 and fd 2
        os.write(1 + i % 2, line)
    os.write(2, b'END-MARK\\n')
    open('flood-done', 'w').close()
threading.Thread(target=flood).start()
print('flooding')
"""


@needs_root
async def test_fork_bomb_stops_at_the_limit_and_others_carry_on(tmp_path, make_system_user):
    bomber, other = make_system_user("mhli_bomb"), make_system_user("mhli_other")
    toml = '[spawner]\nmax_processes = 64\n[users]\ndisk_quota = "1G"\n'
    async with running_hub(tmp_path, toml, users=(bomber.name, other.name)) as hub:
        s_b = aiohttp.ClientSession(headers=h(hub.tokens[bomber.name]))
        s_o = aiohttp.ClientSession(headers=h(hub.tokens[other.name]))
        async with s_b, s_o:
            await start_server(s_b, hub, bomber.name)
            await start_server(s_o, hub, other.name)
            k_b = await new_kernel(s_b, hub, bomber.name)
            k_o = await new_kernel(s_o, hub, other.name)

            async def others_meanwhile() -> tuple[str, int]:
                await asyncio.sleep(1.5)  # the bomb has hit the limit and holds its children
                out = await execute(s_o, hub, other.name, k_o, "print(6 * 7)")
                r = await s_o.get(f"{hub.base}/hub/api/users/{other.name}")
                return out, r.status

            bomb, (out, status) = await asyncio.gather(
                execute(s_b, hub, bomber.name, k_b, FORK_BOMB), others_meanwhile()
            )
            words = bomb.split()
            assert words[0] == "forked" and words[-1] == "BlockingIOError", bomb
            assert 0 < int(words[1]) < 64
            assert out.strip() == "42" and status == 200
            # the bomber's own kernel works again once its children are gone
            assert (await execute(s_b, hub, bomber.name, k_b, "print('alive')")).strip() == "alive"
            for name, s in ((bomber.name, s_b), (other.name, s_o)):
                await stop_server(s, hub, name)
    text = hub.log.read_text()
    assert "[users] disk_quota is not applied:" in text
    assert "spawned " + bomber.name in text


@needs_root
async def test_kernel_output_cannot_grow_the_log_past_the_cap_even_with_the_hub_down(
    tmp_path, make_system_user
):
    u = make_system_user("mhli_flood")
    cap = 256 << 10
    toml = f"[spawner]\nlog_max_bytes = {cap}\n"
    async with running_hub(tmp_path, toml, users=(u.name,)) as hub:
        async with aiohttp.ClientSession(headers=h(hub.tokens[u.name])) as s:
            await start_server(s, hub, u.name)
            pid, _ = hub.server_row(u.name)
            kernel = await new_kernel(s, hub, u.name)
            assert "flooding" in await execute(s, hub, u.name, kernel, FLOOD)
        hub.proc.send_signal(signal.SIGTERM)  # the server and its kernel outlive the hub
        assert await asyncio.to_thread(hub.proc.wait, 20) == 0
    try:
        done = Path(u.home) / "flood-done"
        for _ in range(600):
            if done.exists():
                break
            await asyncio.sleep(0.1)
        assert done.exists(), "the kernel did not finish writing"
        log = hub.data / "logs" / f"{u.name}.log"
        old = Path(str(log) + ".1")

        def kept() -> bytes:  # a line the server writes after the end may rotate it into .1
            return old.read_bytes() + log.read_bytes()

        for _ in range(300):  # the pump may still be writing the end (bounded: 30 s)
            if b"END-MARK" in kept():
                break
            await asyncio.sleep(0.1)
        assert log.stat().st_size <= cap and old.stat().st_size <= cap
        assert b"END-MARK" in kept(), (  # capped by rotating, not by going deaf
            f"log {log.stat().st_size} B ends {log.read_bytes()[-300:]!r}; "
            f".1 {old.stat().st_size} B ends {old.read_bytes()[-300:]!r}"
        )
        assert log.stat().st_uid == 0 and old.stat().st_uid == 0  # not the user's to grow
        assert os.stat(f"/proc/{pid}").st_uid == u.uid  # the server lived on meanwhile
        holders = raw_log_holders(u.uid, {str(log), str(old)})
        assert holders and set(holders) == {pid}, holders  # only the server, not its kernels
    finally:
        pid, _ = hub.server_row(u.name)
        os.killpg(pid, signal.SIGKILL)


def raw_log_holders(uid: int, paths: set[str]) -> list[int]:
    """Processes of `uid` holding one of `paths` open."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            fds = os.listdir(f"/proc/{entry}/fd")
            if any(os.readlink(f"/proc/{entry}/fd/{fd}") in paths for fd in fds):
                found.append(int(entry))
        except OSError:
            continue
    return found
