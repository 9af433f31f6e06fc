"""Issue 12 item 6: a flood of wrong passwords must not starve anyone else.

Against a real hub process with real PAM users: while many clients (from many 127.x
addresses, and through a trusted proxy from many forwarded ones) keep sending wrong passwords,
the excess is turned away at once with 429 and Retry-After, and meanwhile another user logs in,
uses the API and starts a server, and the flooded name's owner still gets in. Latencies are
measured by scripts/bench/login_flood.py, not asserted here.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
from conftest import needs_root
from test_attack_lockout import client, post_login, real_hub

FLOOD_HUB = """[auth]
authenticator = "pam"
login_failure_delay_seconds = 1.0
[spawner]
uid_min = 0
"""
WORKERS = 24
MAX_PER_WORKER = 400  # bounds the flood even if the stop signal never came


async def flood_worker(
    i: int, base: str, name: str, stop: asyncio.Event, seen: Counter[str]
) -> None:
    via = f"203.0.113.{i}" if i % 2 else None  # half through the proxy, half direct
    async with client(f"127.0.{1 + i // 200}.{1 + i % 200}") as s:
        for n in range(MAX_PER_WORKER):
            if stop.is_set():
                return
            try:
                status, headers, _ = await post_login(s, base, name, f"wrong-{i}-{n}", via=via)
            except aiohttp.ClientError:
                seen["error"] += 1
                continue
            seen[str(status)] += 1
            if status == 429:
                seen["retry-after"] += "Retry-After" in headers
                await asyncio.sleep(0.02)  # keep the test's own CPU use modest


async def wait_for(seen: Counter[str], key: str, n: int) -> bool:
    for _ in range(200):
        if seen[key] >= n:
            return True
        await asyncio.sleep(0.05)
    return False


@needs_root
async def test_flood_is_turned_away_and_everyone_else_carries_on(tmp_path, make_system_user):
    victim = make_system_user("mhfl_victim")
    other = make_system_user("mhfl_other")
    with real_hub(tmp_path, FLOOD_HUB, 'trusted_proxies = ["127.0.0.1"]') as (base, log):
        stop, seen = asyncio.Event(), Counter[str]()
        flood = [
            asyncio.create_task(flood_worker(i, base, victim.name, stop, seen))
            for i in range(WORKERS)
        ]
        try:
            assert await wait_for(seen, "429", 20) and await wait_for(seen, "403", 5)
            async with client() as s:
                # another user logs in (from their own address), uses the API, spawns
                status, _, _ = await post_login(
                    s, base, other.name, other.password, via="198.51.100.7"
                )
                assert status == 302
                async with s.get(f"{base}/hub/api/user") as r:
                    assert r.status == 200 and (await r.json())["name"] == other.name
                xsrf = next(c.value for c in s.cookie_jar if c.key == "_xsrf")
                async with s.post(
                    f"{base}/hub/api/users/{other.name}/server", headers={"X-XSRFToken": xsrf}
                ) as r:
                    assert r.status in (201, 202), await r.text()
                ready = False
                for _ in range(150):
                    async with s.get(f"{base}/hub/api/user") as r:
                        ready = bool((await r.json())["servers"].get("", {}).get("ready"))
                    if ready:
                        break
                    await asyncio.sleep(0.2)
                assert ready
                async with s.get(f"{base}/user/{other.name}/api/status") as r:
                    assert r.status == 200  # through the proxy
            async with client() as s:  # the flooded name's owner is not locked out
                status, _, _ = await post_login(
                    s, base, victim.name, victim.password, via="198.51.100.8"
                )
                assert status == 302
            assert not all(t.done() for t in flood)  # all of that happened during the flood
        finally:
            stop.set()
            await asyncio.gather(*flood)
        assert seen["retry-after"] == seen["429"] > 0
        assert not [k for k in seen if k.startswith("5")], seen
        assert "Traceback" not in log.read_text()
