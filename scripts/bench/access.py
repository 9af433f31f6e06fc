"""What one access decision costs: Access.allows() on the proxy's question (access:servers
on a user's server), for an owner, a role's group filter, a scoped token and a refusal, and
held() recomputed after a change (every change clears the cache).

Run: /opt/minihub/venv/bin/python scripts/bench/access.py [--users N] [--calls N]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from minihub.access import Access, Principal
from minihub.access.roles import GroupSpec, Role
from minihub.store import Store


async def main(users: int, calls: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        store = await Store.open(Path(d) / "minihub.sqlite")
        try:
            for i in range(users):
                await store.add_user(f"u{i}")
            ta_role = Role("teaching-assistant", "", ["access:servers!group=students"], ["u0"])
            students = GroupSpec("students", [f"u{i}" for i in range(1, users // 2)])
            access = Access(store, [ta_role], [students])
            await access.load()
            cases = (
                ("owner (self)", Principal("user", "u5"), "u5"),
                ("TA via !group=", Principal("user", "u0"), f"u{users // 4}"),
                ("scoped token", Principal("user", "u5", ("access:servers!server=u5/",)), "u5"),
                ("refused", Principal("user", "u0"), f"u{users - 1}"),
            )
            print(f"{users} users, {users // 2 - 1} in the group; {calls} calls each")
            for label, who, target in cases:
                t = time.perf_counter()
                for _ in range(calls):
                    access.allows(who, "access:servers", user=target, server="")
                print(
                    f"  {label:16} {(time.perf_counter() - t) / calls * 1e6:6.2f} µs per allows()"
                )
            t = time.perf_counter()
            for _ in range(1000):
                access._changed()
                access.held(cases[1][1])
            print(f"  held() after a change: {(time.perf_counter() - t) / 1000 * 1e6:.1f} µs")
        finally:
            await store.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--calls", type=int, default=200_000)
    a = ap.parse_args()
    asyncio.run(main(a.users, a.calls))
