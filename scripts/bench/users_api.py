"""How GET /hub/api/users grows with registered users (issue 18): a page of 200, all of them
through pagination, GET /hub/api/user while someone lists everyone, the hub's traced memory
per registered user, and start-up (a `minihub` subprocess until /hub/health answers).

An in-process hub (FakeSpawner) on a SQLite file seeded with N users, as scripts/bench/admin.py.
Run: /opt/minihub/venv/bin/python scripts/bench/users_api.py [--users N] [--requests N]
     [--only page,all,whoami,cull,memory,startup] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import os
import pstats
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from minihub import config, scopes
from minihub.access import Principal
from minihub.app import make_app
from minihub.auth.native import NativeAuthenticator
from minihub.context import PARTS
from minihub.culler import Culler
from minihub.spawner.fake import FakeSpawner
from minihub.store import Store
from minihub.users import create, new_token

PAGE = {"Accept": "application/jupyterhub-pagination+json"}
RUNNING = 20


async def seed(data: Path, users: int) -> tuple[str, str]:
    """N users (a group of every 50th), an admin `boss` and a user `u`; their tokens."""
    cfg = config.load(None, {"hub.data_dir": str(data), "auth.authenticator": "native"})
    store = await Store.open(data / "minihub.sqlite")
    auth = NativeAuthenticator(cfg, store)
    boss = await create(store, auth, "boss", True, "bench-password-1")
    u = await create(store, auth, "u", False, "bench-password-1")
    now = time.time()
    await store.db.executemany(
        "INSERT INTO users (name, created, last_activity) VALUES (?, ?, ?)",
        [(f"user{i:05d}", now, now - i) for i in range(users)],
    )
    await store.db.execute("INSERT INTO groups (name) VALUES ('class')")
    await store.db.execute(
        "INSERT INTO group_users SELECT g.id, u.id FROM groups g, users u "
        "WHERE g.name = 'class' AND u.id % 50 = 0"
    )
    await store.db.commit()
    tokens = (await new_token(store, boss, "bench"))[0], (await new_token(store, u, "bench"))[0]
    await store.close()
    return tokens


def stats(label: str, xs: list[float]) -> None:
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
    med = statistics.median(xs) * 1e3
    print(f"  {label:46} median {med:7.2f} ms  p99 {p99 * 1e3:7.2f} ms  (n={len(xs)})")


async def get(c: TestClient, path: str, h: dict[str, str]) -> bytes:
    async with c.get(path, headers=h) as r:
        body = await r.read()
        assert r.status == 200, (path, r.status, body[:200])
        return body


async def list_all(c: TestClient, h: dict[str, str]) -> int:
    """Every user through pagination (limit 200), following `next` as a client does."""
    import json

    offset, seen = 0, 0
    for _ in range(1000):  # bounded: 200,000 users
        page = json.loads(await get(c, f"/hub/api/users?limit=200&offset={offset}", h))
        seen += len(page["items"])
        nxt = page["_pagination"]["next"]
        if nxt is None:
            return seen
        offset = nxt["offset"]
    raise RuntimeError("pagination did not end")


async def in_process(a: argparse.Namespace, only: set[str]) -> None:
    with tempfile.TemporaryDirectory() as d:
        data = Path(d)
        admin_tok, user_tok = await seed(data, a.users)
        cfg = config.load(None, {"hub.data_dir": d, "auth.authenticator": "native"})
        fake = FakeSpawner()
        if "memory" in only:
            gc.collect()
            tracemalloc.start()
        c = TestClient(TestServer(make_app(cfg, spawner=fake)))
        await c.start_server()
        gc.freeze()  # as `minihub` does once serving (serve.py): start-up's objects stay out
        try:
            h = {"Authorization": f"token {admin_tok}", **PAGE}
            hu = {"Authorization": f"token {user_tok}"}
            step = max(1, a.users // RUNNING)
            for i in range(0, min(a.users, RUNNING * step), step):
                async with c.post(f"/hub/api/users/user{i:05d}/server", headers=h) as r:
                    assert r.status in (201, 202)
            for _ in range(3):
                await get(c, "/hub/api/users?limit=200", h)
            print(f"{a.users} users, {RUNNING} servers running")
            if "page" in only:
                xs = []
                cpu = time.process_time()
                for _ in range(a.requests):
                    t = time.perf_counter()
                    await get(c, "/hub/api/users?limit=200", h)
                    xs.append(time.perf_counter() - t)
                cpu = (time.process_time() - cpu) / a.requests
                stats("GET /hub/api/users?limit=200 (paginated)", xs)
                print(
                    f"  {'  CPU per request (hub and client, all threads)':46} {cpu * 1e3:7.2f} ms"
                )
            if "all" in only:
                xs = []
                cpu = time.process_time()
                for _ in range(max(3, a.requests // 20)):
                    t = time.perf_counter()
                    n = await list_all(c, h)
                    xs.append(time.perf_counter() - t)
                cpu = (time.process_time() - cpu) / len(xs)
                stats(f"all {n} users, limit 200 pages", xs)
                print(f"  {'  CPU per listing (hub and client)':46} {cpu * 1e3:7.2f} ms")
                xs = []
                for _ in range(max(3, a.requests // 20)):
                    t = time.perf_counter()
                    await get(c, "/hub/api/users", {"Authorization": h["Authorization"]})
                    xs.append(time.perf_counter() - t)
                stats("GET /hub/api/users (one default page, 500)", xs)
            if "whoami" in only:
                await whoami_while_listing(c, h, hu, a.requests)
            if "cull" in only:
                await cull_passes(c, h, a.users)
            if "memory" in only:
                await list_all(c, h)
                # every user asks once as themself: what per-user caches hold after a day
                access = c.server.app[PARTS].access
                for i in range(a.users):
                    access.held(Principal("user", f"user{i:05d}"))
                    scopes.expand(["self"], f"user{i:05d}")
                gc.collect()
                cur, peak = tracemalloc.get_traced_memory()
                print(
                    f"  traced memory after listing all: {cur / 1024:.0f} KiB (peak {peak / 1024:.0f})"
                )
                print(
                    f"  per registered user: {cur / 1024 / a.users:.3f} KiB (includes the hub's base)"
                )
                snap = tracemalloc.take_snapshot()
                for st in snap.statistics("lineno")[:8]:
                    print(f"    {st.size / 1024:8.0f} KiB  {st.traceback[0]}")
            if a.profile:
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(50):
                    await get(c, "/hub/api/users?limit=200", h)
                prof.disable()
                pstats.Stats(prof).sort_stats(a.sort).print_stats(30)
        finally:
            await c.close()
            await fake.shutdown()


async def cull_passes(c: TestClient, h: dict[str, str], users: int) -> None:
    """The culler's pass with every user registered: the built-in one (culler.cull_once,
    which looks at the servers the hub runs, not at the registered users), and what
    jupyterhub-idle-culler asks each pass (every page of ?state=ready)."""
    p = c.server.app[PARTS]
    cfg = config.load(
        None, {"hub.data_dir": str(p.cfg.get("hub.data_dir")), "culler.timeout": 10**6}
    )
    culler = Culler(cfg, p.servers, p.store, p.metrics, p.access)
    xs = []
    for _ in range(20):
        t = time.perf_counter()
        culled = await culler.cull_once()
        xs.append(time.perf_counter() - t)
        assert not culled
    stats(f"built-in culler pass ({users} users registered, {RUNNING} running)", xs)
    xs = []
    for _ in range(20):
        t = time.perf_counter()
        offset, seen = 0, 0
        for _ in range(1000):  # as jupyterhub-idle-culler 1.4 pages (bounded: 200,000)
            r = await c.get(f"/hub/api/users?state=ready&offset={offset}&limit=200", headers=h)
            body = await r.json()
            seen += len(body["items"])
            nxt = body["_pagination"].get("next")
            if not nxt:
                break
            offset = nxt["offset"]
        xs.append(time.perf_counter() - t)
    stats(f"jupyterhub-idle-culler's listing (?state=ready: {seen} users)", xs)


async def whoami_while_listing(
    c: TestClient, h: dict[str, str], hu: dict[str, str], n: int
) -> None:
    """GET /hub/api/user latency while another client lists every user, 500 at a time
    (the default page) back to back."""
    stop = asyncio.Event()

    async def lister() -> None:
        while not stop.is_set():
            await get(c, "/hub/api/users", {"Authorization": h["Authorization"]})

    task = asyncio.create_task(lister())
    await asyncio.sleep(0.05)
    xs = []
    try:
        for _ in range(n):
            t = time.perf_counter()
            await get(c, "/hub/api/user", hu)
            xs.append(time.perf_counter() - t)
            await asyncio.sleep(0.002)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    stats("GET /hub/api/user while /users (500) is listed", xs)


def startup(users: int, runs: int) -> None:
    """`python -m minihub` start -> /hub/health 200, with `users` users in SQLite."""
    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "data"
        data.mkdir()
        asyncio.run(seed(data, users))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cfg = Path(d) / "minihub.toml"
        cfg.write_text(
            f'[hub]\nip = "127.0.0.1"\nport = {port}\ndata_dir = "{data}"\nlog_level = "WARNING"\n'
            '[auth]\nauthenticator = "native"\n'
        )
        xs = []
        for _ in range(runs):
            t = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-m", "minihub", "-f", str(cfg)],
                cwd=d,
                stdout=subprocess.DEVNULL,
                stderr=open(Path(d) / "hub.log", "ab"),  # noqa: SIM115
                start_new_session=True,
            )
            try:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    try:
                        with urllib.request.urlopen(
                            f"http://127.0.0.1:{port}/hub/health", timeout=2
                        ):
                            break
                    except OSError:
                        if proc.poll() is not None:
                            raise RuntimeError((Path(d) / "hub.log").read_text()[-2000:]) from None
                        time.sleep(0.01)
                xs.append(time.perf_counter() - t)
            finally:
                proc.terminate()
                proc.wait(20)
        print(f"{users} users in SQLite")
        stats("start -> /hub/health", xs)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--only", default="page,all,whoami,cull,memory,startup")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--sort", default="cumulative", help="the profile's order (tottime)")
    a = ap.parse_args()
    only = set(a.only.split(","))
    if only - {"startup"} or a.profile:
        asyncio.run(in_process(a, only))
    if "startup" in only:
        startup(a.users, 5)
    os._exit(0)
