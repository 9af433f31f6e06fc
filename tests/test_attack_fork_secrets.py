"""Issue 12, item 12: a server's secret exists only in the hub and in that server.

The root fork server forks every user's server; whatever it held of one spawn's launch config
would be copied into every later server. After spawning A then B, B's memory must not hold
A's secret, and the fork server's memory must hold neither.
"""

from __future__ import annotations

import aiohttp
from conftest import needs_root
from spawn_attack import children, cmdline, h, process_memory, running_hub, start_server

from minihub.auth.secrets import load_or_create_key, server_secret


@needs_root
async def test_no_other_users_secret_in_a_forked_server(tmp_path, make_system_user):
    a, b = make_system_user("mhfs_a"), make_system_user("mhfs_b")
    async with running_hub(tmp_path) as hub:
        tokens = {u.name: hub.token(u.name) for u in (a, b)}
        for u in (a, b):
            async with aiohttp.ClientSession(headers=h(tokens[u.name])) as s:
                await start_server(s, hub, u.name)
        key = load_or_create_key(hub.data / "cookie_secret")
        secret, pid = {}, {}
        for u in (a, b):
            pid[u.name], nonce = hub.server_row(u.name)
            secret[u.name] = server_secret(key, u.name, nonce).encode()
        forkservers = [
            p for p in children(hub.proc.pid) if "minihub.spawner.forkserver" in cmdline(p)
        ]
        assert len(forkservers) == 1, "the servers were not forked (fork_server is the default)"
        assert pid[a.name] in children(forkservers[0])

        mem_b = process_memory(pid[b.name])
        assert secret[b.name] in mem_b  # the reading works: B holds its own secret
        assert secret[a.name] not in mem_b
        mem_a = process_memory(pid[a.name])
        assert secret[a.name] in mem_a and secret[b.name] not in mem_a
        mem_fs = process_memory(forkservers[0])
        assert secret[a.name] not in mem_fs and secret[b.name] not in mem_fs
        for u in (a, b):
            async with aiohttp.ClientSession(headers=h(tokens[u.name])) as s:
                await s.delete(f"{hub.base}/hub/api/users/{u.name}/server")
