"""How cost grows (issue 18): minihub and JupyterHub 6 + configurable-http-proxy with many
registered users, many running servers and a class-start burst, on loopback.

Run as root: /opt/minihub/venv/bin/python scripts/bench/growth.py [--quick] [--only HUB]
  [--parts users,servers,burst] [--no-write]
Writes docs/growth/growth.json, the plots (docs/growth/*.png, matplotlib from its own venv
/opt/minihub-bench/plotvenv) and the "## Growth" section of docs/benchmarks.md.
Every loop is bounded in count and time; the stand-in server is scripts/bench/standin.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from client import Client, SpawnResult, login
from common import (
    BENCH_DIR,
    CHP_BIN,
    JH_VENV,
    PREFIX,
    Users,
    free_port,
    install_jupyterhub,
    leftover_users,
    log,
    median,
    pct,
    pss_kib,
    rmtree,
    rollup_kib,
    stop_process,
)
from hubs import ADMIN, Hub, minihub_cmd

CHECKOUT = Path(__file__).resolve().parents[2]
OUT = CHECKOUT / "docs" / "growth"
STANDIN = BENCH_DIR / "standin.py"  # world-readable copy: servers run as their users
PLOT_PY = BENCH_DIR / "plotvenv" / "bin" / "python"
PAGINATION = "application/jupyterhub-pagination+json"
HEALTH_TIMEOUT = 300.0
SPAWN_PARALLEL = 20  # the driver's own limit, the same for both hubs (below either hub's)

# --------------------------------------------------------------------------- hubs

JH_CONFIG = """
c = get_config()  # noqa
c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.ConfigurableHTTPProxy.command = ["{chp}"]
c.JupyterHub.db_url = "sqlite:///{work}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{work}/cookie_secret"
c.JupyterHub.authenticator_class = "{auth}"
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {{"{admin}"}}
c.Spawner.cmd = ["/usr/bin/python3", "{standin}"]
c.Spawner.start_timeout = 120
c.JupyterHub.concurrent_spawn_limit = 500
c.JupyterHub.cleanup_servers = False
c.JupyterHub.log_level = "WARN"
c.JupyterHub.services = [{{"name": "bench", "api_token": "{token}"}}]
c.JupyterHub.load_roles = [{{"name": "bench", "services": ["bench"],
    "scopes": ["admin:users", "admin:servers", "access:servers", "tokens", "list:users",
               "admin-ui"]}}]
"""

MH_CONFIG = """
[hub]
ip = "127.0.0.1"
port = {port}
data_dir = "{work}/data"
log_level = "WARNING"
cleanup_servers = false
admin_access = true
[auth]
authenticator = "pam"
admin_users = ["{admin}"]
[spawner]
concurrent_spawn_limit = 500
start_timeout = 120
{spawner}
"""
MH_STANDIN = f'server = "jupyterhub-singleuser"\ncmd = ["/usr/bin/python3", "{STANDIN}"]'


def _popen(cmd: list[str], work: Path, env: dict[str, str] | None = None) -> Any:
    logf = open(work / "hub.log", "ab")  # noqa: SIM115 - the child holds it; closed below
    try:
        return subprocess.Popen(
            cmd, cwd=work, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        logf.close()


def new_jupyterhub(auth: str) -> Hub:
    work = Path(tempfile.mkdtemp(prefix="mhgrowth-jh-"))
    os.chmod(work, 0o755)
    port, token = free_port(), secrets.token_hex(24)
    (work / "jupyterhub_config.py").write_text(
        JH_CONFIG.format(
            port=port,
            hub_port=free_port(),
            api_port=free_port(),
            chp=CHP_BIN,
            work=work,
            auth=auth,
            admin=ADMIN,
            standin=STANDIN,
            token=token,
        )
    )
    return Hub("JupyterHub", port, token, None, work)  # type: ignore[arg-type]


def new_minihub(spawner: str = MH_STANDIN) -> Hub:
    work = Path(tempfile.mkdtemp(prefix="mhgrowth-mh-"))
    os.chmod(work, 0o755)
    port = free_port()
    cfg = work / "minihub.toml"
    cfg.write_text(MH_CONFIG.format(port=port, work=work, admin=ADMIN, spawner=spawner))
    run: dict[str, Any] = {"cwd": work, "capture_output": True, "text": True, "timeout": 60}
    subprocess.run(minihub_cmd(cfg, "user", "add", ADMIN, "--admin"), check=True, **run)
    out = subprocess.run(minihub_cmd(cfg, "token", ADMIN), check=True, **run).stdout
    return Hub("minihub", port, out.strip().splitlines()[-1], None, work)  # type: ignore[arg-type]


async def start(hub: Hub) -> float:
    """Start (or restart) the hub on its work directory: seconds from exec to /hub/health."""
    if hub.name == "JupyterHub":
        env = dict(os.environ, PATH=f"{JH_VENV}/bin:/usr/local/bin:/usr/bin:/bin")
        cmd = [str(JH_VENV / "bin" / "jupyterhub"), "-f", str(hub.work / "jupyterhub_config.py")]
    else:
        env, cmd = None, minihub_cmd(hub.work / "minihub.toml")
    t0 = time.perf_counter()
    hub.proc = _popen(cmd, hub.work, env)
    async with aiohttp.ClientSession() as s:
        while time.perf_counter() - t0 < HEALTH_TIMEOUT:
            if hub.proc.poll() is not None:
                raise RuntimeError(f"{hub.name} exited with {hub.proc.returncode}: {tail(hub)}")
            try:
                async with s.get(f"{hub.url}/hub/health", timeout=aiohttp.ClientTimeout(2)) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.02)
    raise RuntimeError(f"{hub.name} did not answer /hub/health in {HEALTH_TIMEOUT}s")


def tail(hub: Hub) -> str:
    path = hub.work / "hub.log"
    return "\n".join(path.read_text(errors="replace").splitlines()[-15:]) if path.exists() else ""


def halt(hub: Hub) -> None:
    if hub.proc is not None:
        stop_process(hub.proc, 60)


# --------------------------------------------------------------------------- measures


def hub_pss_mib(hub: Hub) -> tuple[float, float]:
    """(hub process alone, hub + its root helpers: the proxy or the fork server)."""
    pids = hub.hub_pids()
    return pss_kib(pids["hub"]) / 1024, sum(pss_kib(p) for p in pids.values()) / 1024


def anon_mib(pid: int) -> float:
    """The process's own memory (Pss_Anon): PSS less the file pages (the Python executable,
    libcrypto, extension modules) that it shares with whatever else runs them, so that PSS
    moves with what else runs on the machine and this does not."""
    return rollup_kib(pid).get("Pss_Anon", 0) / 1024


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError):
            continue
    return total


def fds(pids: list[int]) -> tuple[int, int]:
    """(open fds, of which sockets) over the hub's own processes."""
    n = socks = 0
    for pid in pids:
        try:
            entries = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for e in entries:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{e}")
            except OSError:
                continue
            n += 1
            socks += target.startswith("socket:")
    return n, socks


async def timed(session: aiohttp.ClientSession, url: str, n: int, **kw: Any) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        async with session.get(url, **kw) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"GET {url}: {r.status}")
        out.append(time.perf_counter() - t)
    return out


async def full_listing(c: Client) -> float:
    """Every user through pagination, 200 a page (JupyterHub's max page): seconds."""
    t0, offset = time.perf_counter(), 0
    for _ in range(200):  # 40,000 users at most
        async with c.session.get(
            c.api(f"/users?limit=200&offset={offset}"), headers={"Accept": PAGINATION}
        ) as r:
            body = await r.json()
        offset += len(body["items"])
        if not body["_pagination"].get("next") or not body["items"]:
            break
    return time.perf_counter() - t0


async def create_users(c: Client, start: int, stop: int) -> None:
    batch = 500
    for lo in range(start, stop, batch):
        names = [f"g{i:05d}" for i in range(lo, min(stop, lo + batch))]
        async with c.session.post(c.api("/users"), json={"usernames": names}) as r:
            if r.status not in (201, 409):
                raise RuntimeError(f"create users: {r.status} {(await r.text())[:200]}")


async def admin_first_page(c: Client, hub: Hub, n: int) -> list[float]:
    """minihub renders the page with its first 50 rows; JupyterHub's React page then asks
    the API for them (as its admin UI does): both requests are counted."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        async with c.session.get(f"{hub.url}/hub/admin") as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"admin page: {r.status}")
        if hub.name == "JupyterHub":
            q = "/users?include_stopped_servers&offset=0&limit=50&name_filter=&sort=id&state="
            async with c.session.get(c.api(q), headers={"Accept": PAGINATION}) as r:
                await r.read()
        out.append(time.perf_counter() - t)
    return out


async def me_while_listing(c: Client, n: int) -> tuple[list[float], int]:
    """GET /hub/api/user, one every 20 ms, while full listings run back to back."""
    done = asyncio.Event()
    listings = [0]

    async def lister() -> None:
        for _ in range(50):
            if done.is_set():
                break
            await full_listing(c)
            listings[0] += 1

    task = asyncio.create_task(lister())
    await asyncio.sleep(0.05)
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        async with c.session.get(c.api("/user")) as r:
            await r.read()
        lat.append(time.perf_counter() - t)
        await asyncio.sleep(0.02)
    done.set()
    await asyncio.wait_for(task, 120)
    return lat, listings[0]


# --------------------------------------------------------------------------- part 1: users


async def users_part(hub: Hub, levels: list[int], requests: int) -> list[dict[str, float]]:
    rows = []
    made = 0
    await start(hub)
    for level in levels:
        async with Client(hub.url, hub.token) as c:
            t0 = time.perf_counter()
            await create_users(c, made, level)
            log(f"{hub.name}: {level} users (+{level - made} in {time.perf_counter() - t0:.1f} s)")
            made = level
        halt(hub)
        row: dict[str, float] = {"users": level, "startup": await start(hub)}
        await asyncio.sleep(3)
        row["pss_hub"], row["pss_all"] = hub_pss_mib(hub)
        row["rss_hub"] = rss_mib(hub.proc.pid)
        row["anon_hub"] = anon_mib(hub.hub_pids()["hub"])
        async with Client(hub.url, hub.token) as c:
            page = await timed(
                c.session, c.api("/users?limit=200"), 5, headers={"Accept": PAGINATION}
            )
            page = await timed(
                c.session, c.api("/users?limit=200"), requests, headers={"Accept": PAGINATION}
            )
            row["page_p50"], row["page_p99"] = median(page), pct(page, 99)
            row["full"] = median([await full_listing(c) for _ in range(3)])
            # the first after start compiles the page's templates: apart from the others
            row["admin_first"] = (await admin_first_page(c, hub, 1))[0]
            adm = await admin_first_page(c, hub, 20)
            row["admin_p50"], row["admin_p99"] = median(adm), pct(adm, 99)
            me, listings = await me_while_listing(c, requests)
            row["me_p50"], row["me_max"], row["me_listings"] = median(me), max(me), listings
            await asyncio.sleep(2)
            row["pss_hub_after"], row["pss_all_after"] = hub_pss_mib(hub)
        log(f"{hub.name} {level} users: " + ", ".join(f"{k}={v:.4g}" for k, v in row.items()))
        rows.append(row)
    halt(hub)
    return rows


# --------------------------------------------------------------------------- part 2: servers


def sysnames(n: int) -> list[str]:
    return [f"{PREFIX}{i:03d}" for i in range(n)]


async def bounded(jobs: list[Callable[[], Awaitable[Any]]], limit: int) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[Any]]) -> Any:
        async with sem:
            return await job()

    return await asyncio.gather(*(one(j) for j in jobs), return_exceptions=True)


async def spawn_all(c: Client, who: list[str]) -> list[str]:
    """Spawn each (SPAWN_PARALLEL at a time): the names whose server is running."""
    res = await bounded([lambda n=n: c.spawn(n) for n in who], SPAWN_PARALLEL)  # type: ignore[misc]
    bad = [r for r in res if not (isinstance(r, SpawnResult) and r.ok)]
    if bad:
        log(f"  {len(bad)} spawns failed, e.g. {bad[0]!r}"[:300])
    return [r.name for r in res if isinstance(r, SpawnResult) and r.ok]


async def stop_all(c: Client, who: list[str]) -> None:
    await bounded([lambda n=n: c.stop(n) for n in who], SPAWN_PARALLEL)  # type: ignore[misc]


async def answering(c: Client, who: list[str], deadline: float) -> tuple[int, float]:
    """Poll each server through the hub until it answers 200 (or the deadline): how many do,
    and when the last of them first did."""
    ok: set[str] = set()
    last = [time.perf_counter()]

    async def one(n: str) -> None:
        while time.perf_counter() < deadline:
            try:
                async with c.session.get(
                    c.user_url(n, "api"), timeout=aiohttp.ClientTimeout(5)
                ) as r:
                    await r.read()
                    if r.status == 200:
                        ok.add(n)
                        last[0] = max(last[0], time.perf_counter())
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.05)

    await bounded([lambda n=n: one(n) for n in who], 50)  # type: ignore[misc]
    return len(ok), last[0]


async def proxied_rps(c: Client, who: list[str], total: int) -> tuple[float, float, int]:
    lat: list[float] = []
    errors = [0]
    left = [total]

    async def worker(k: int) -> None:
        i = k
        while left[0] > 0:
            left[0] -= 1
            n = who[i % len(who)]
            i += 7
            t = time.perf_counter()
            async with c.session.get(c.user_url(n, "api/status")) as r:
                await r.read()
                errors[0] += r.status != 200
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker(k) for k in range(32))), 300)
    return len(lat) / (time.perf_counter() - t0), pct(lat, 99), errors[0]


async def servers_part(
    hub: Hub, levels: list[int], idle: float, requests: int, registered: int = 0, cycles: int = 1
) -> list[dict[str, float]]:
    rows = []
    await start(hub)
    async with Client(hub.url, hub.token) as c:
        if registered:  # users without servers besides, as a big site has
            await create_users(c, 0, registered)
        await c.create_users(sysnames(max(levels)))
        await asyncio.sleep(3)
        base_pss = hub_pss_mib(hub)[1]
    for level in levels:
        rows.append(
            await servers_point(hub, sysnames(level), base_pss, idle, requests, registered, cycles)
        )
    halt(hub)
    return rows


async def servers_point(
    hub: Hub,
    who: list[str],
    base_pss: float,
    idle: float,
    requests: int,
    registered: int = 0,
    cycles: int = 1,
) -> dict[str, float]:
    """One point: spawn all, memory, idle CPU, proxied load, stop all (the hub process's fds
    before and after that cycle, the driver's connections closed; then `cycles` - 1 more
    spawn/stop cycles, the fds after each), spawn all again, restart the hub, re-adoption."""
    level = len(who)
    row: dict[str, float] = {"servers": level, "registered": registered, "cycles": cycles}
    row["fds_before"], row["socks_before"] = fds(list(hub.hub_pids().values()))
    async with Client(hub.url, hub.token) as c:
        t0 = time.perf_counter()
        running = await spawn_all(c, who)
        row["spawn_wall"] = time.perf_counter() - t0
        row["spawned"] = len(running)
        await asyncio.sleep(5)
        pss = hub_pss_mib(hub)[1]
        row["pss_all"] = pss
        row["pss_per_server_kib"] = (pss - base_pss) * 1024 / max(1, level)
        pids = list(hub.hub_pids().values())
        t1, c1 = time.perf_counter(), cpu_ticks(pids)
        await asyncio.sleep(idle)
        cpu_s = (cpu_ticks(pids) - c1) / os.sysconf("SC_CLK_TCK")
        wall = time.perf_counter() - t1
        row["idle_cpu_pct"] = 100 * cpu_s / wall
        row["cpu_ms_per_server_min"] = 1000 * cpu_s * 60 / wall / max(1, len(running))
        if registered:  # the listing while the servers run (the issue: "also while 300 run")
            hdr = {"Accept": PAGINATION}
            await timed(c.session, c.api("/users?limit=200"), 5, headers=hdr)
            page = await timed(c.session, c.api("/users?limit=200"), 100, headers=hdr)
            row["page_p50"], row["page_p99"] = median(page), pct(page, 99)
            row["full"] = median([await full_listing(c) for _ in range(3)])
        await proxied_rps(c, running, 200)  # warm: connections, routes
        row["rps"], row["rps_p99"], row["rps_errors"] = await proxied_rps(c, running, requests)
        await stop_all(c, who)
    await asyncio.sleep(5)  # idle keep-alive connections to the stopped servers time out
    row["fds_after"], row["socks_after"] = fds(list(hub.hub_pids().values()))
    row["fds_first_cycle"] = row["fds_after"]
    most = row["fds_after"]
    for k in range(1, cycles):
        async with Client(hub.url, hub.token) as c:
            running = await spawn_all(c, who)
            await stop_all(c, who)
        await asyncio.sleep(5)
        row["fds_after"], row["socks_after"] = fds(list(hub.hub_pids().values()))
        most = max(most, row["fds_after"])
        log(f"  cycle {k + 1}/{cycles}: {len(running)} spawned, fds {row['fds_after']:.0f}")
    row["fds_max"] = most
    async with Client(hub.url, hub.token) as c:
        running = await spawn_all(c, who)
    row["running_at_restart"] = len(running)
    halt(hub)
    row["restart_health"] = await start(hub)
    t0 = time.perf_counter()
    async with Client(hub.url, hub.token) as c:
        row["readopted"], last = await answering(c, running, time.perf_counter() + 120)
        row["restart_all"] = row["restart_health"] + last - t0
        await stop_all(c, who)
    log(f"{hub.name} {level} servers: " + ", ".join(f"{k}={v:.4g}" for k, v in row.items()))
    return row


# --------------------------------------------------------------------------- part 3: burst


async def burst_part(
    hub: Hub, users: Users, n: int, kernels: bool, over: float = 0.0
) -> dict[str, float]:
    """n users log in through the form (PAM), spawn and reach a first result: with minihub's
    own server a kernel's `1+1`; with the stand-in its first answer. They arrive all at once
    (`over` 0) or evenly spread over `over` seconds (a class arriving within a minute); each
    one's time is from its own arrival."""
    who = sysnames(n)
    await start(hub)
    async with Client(hub.url, hub.token) as c:
        await c.create_users(who)

        async def one(k: int, name: str) -> float:
            await asyncio.sleep(k * over / n)
            t0 = time.perf_counter()
            ok, status = await login(hub.url, name, users.passwords[name])
            if not ok:
                raise RuntimeError(f"login {name}: {status}")
            r = await c.spawn(name)
            if not r.ok:
                raise RuntimeError(f"spawn {name}: {r.status} {r.error[:120]}")
            if kernels:
                kid, _ = await c.start_kernel(name)
                await c.execute_latencies(name, kid, 1, 60)
            else:
                async with c.session.get(c.user_url(name, "api")) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"first request {name}: {resp.status}")
            return time.perf_counter() - t0

        t0 = time.perf_counter()
        res = await asyncio.wait_for(
            asyncio.gather(*(one(k, x) for k, x in enumerate(who)), return_exceptions=True),
            600 + over,
        )
        wall = time.perf_counter() - t0
        ok = [r for r in res if isinstance(r, float)]
        errs = [r for r in res if not isinstance(r, float)]
        if errs:
            log(f"  burst: {len(errs)} errors, e.g. {errs[0]!r}"[:300])
        await stop_all(c, who)
    halt(hub)
    return {
        "n": n,
        "over": over,
        "errors": len(errs),
        "wall": wall,
        "p50": median(ok),
        "p95": pct(ok, 95),
        "p99": pct(ok, 99),
    }


# --------------------------------------------------------------------------- main


async def run_hub(
    name: str, args: argparse.Namespace, users: Users, parts: set[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    make: Callable[..., Hub] = new_jupyterhub if name == "jupyterhub" else new_minihub
    steps: list[tuple[str, Callable[[Hub], Awaitable[Any]], Callable[[], Hub]]] = []
    if "users" in parts:
        auth = ("dummy",) if name == "jupyterhub" else ()  # JupyterHub's PAM adds system users
        steps.append(
            ("users", lambda h: users_part(h, args.user_levels, args.requests), lambda: make(*auth))
        )
    if "servers" in parts:
        pam = ("pam",) if name == "jupyterhub" else ()
        steps.append(
            (
                "servers",
                lambda h: servers_part(
                    h, args.server_levels, args.idle, args.proxied, args.registered, args.cycles
                ),
                lambda: make(*pam),
            )
        )
        if name == "minihub" and args.own_levels:
            steps.append(
                (
                    "own_servers",
                    lambda h: servers_part(h, args.own_levels, args.idle, args.proxied),
                    lambda: new_minihub('class = "fork"\nkernel_fork = true'),
                )
            )
    if "burst" in parts:
        pam = ("pam",) if name == "jupyterhub" else ()
        steps.append(
            ("burst", lambda h: burst_part(h, users, args.burst, False), lambda: make(*pam))
        )
        if name == "minihub":
            steps.append(
                (
                    "burst_kernel",
                    lambda h: burst_part(h, users, args.burst_kernel, True),
                    lambda: new_minihub('class = "fork"'),
                )
            )
    if "burst" in parts and args.burst_over:
        # the class arriving within a minute: the stand-in on both, and on minihub also its
        # own server with a kernel's first cell for every one of them
        steps.append(
            (
                "burst_spread",
                lambda h: burst_part(h, users, args.burst, False, args.burst_over),
                lambda: make(*pam),
            )
        )
        if name == "minihub":
            steps.append(
                (
                    "burst_kernel_spread",
                    lambda h: burst_part(h, users, args.burst, True, args.burst_over),
                    lambda: new_minihub('class = "fork"'),
                )
            )
    for key, step, factory in steps:
        hub = factory()
        log(f"{hub.name}: {key} ...")
        try:
            out[key] = await step(hub)
        except Exception as e:  # noqa: BLE001 - the failure is recorded, the others run
            log(f"{hub.name} {key} failed: {e!r}\n{tail(hub)}")
            out[key] = {"error": repr(e)[:300]}
        finally:
            halt(hub)
            await asyncio.to_thread(kill_servers, args)
            if not os.environ.get("MHBENCH_KEEP"):
                rmtree(hub.work)
    return out


def kill_servers(args: argparse.Namespace) -> None:
    """Whatever a failed step left running as the servers' users."""
    for n in sysnames(max([*args.server_levels, args.burst, args.burst_kernel])):
        subprocess.run(["pkill", "-KILL", "-u", n], capture_output=True, check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter idle window, fewer requests")
    ap.add_argument("--only", choices=["minihub", "jupyterhub"])
    ap.add_argument("--parts", default="users,servers,burst")
    ap.add_argument("--users", default="100,1000,10000", help="registered users, per point")
    ap.add_argument("--servers", default="10,100,300", help="running stand-ins, per point")
    ap.add_argument("--own", default="10,100", help="minihub's own servers (no kernels)")
    ap.add_argument(
        "--registered", type=int, default=0, help="servers part: registered users besides"
    )
    ap.add_argument(
        "--cycles", type=int, default=1, help="servers part: spawn/stop cycles for the fd check"
    )
    ap.add_argument("--burst", type=int, default=300, help="users in the class-start burst")
    ap.add_argument("--burst-kernel", type=int, default=100, help="minihub's own + a kernel")
    ap.add_argument(
        "--burst-over",
        type=float,
        default=60.0,
        help="also the burst's users arriving evenly over this many seconds (0: not)",
    )
    ap.add_argument("--idle", type=float, help="seconds of idle CPU sampling (60; 20 quick)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument(
        "--from-json",
        nargs="+",
        metavar="FILE",
        help="merge earlier runs' JSON output (e.g. one --only each) and write the report",
    )
    a = ap.parse_args()
    if a.from_json:
        merged: dict[str, Any] = {}
        for f in a.from_json:
            merged = merge(merged, json.loads(Path(f).read_text()))
        return write_report(merged)
    a.user_levels = [int(x) for x in a.users.split(",") if x]
    a.server_levels = [int(x) for x in a.servers.split(",") if x]
    a.own_levels = [int(x) for x in a.own.split(",") if x]
    a.idle_default, a.requests, a.proxied = (20.0, 50, 3000) if a.quick else (60.0, 100, 10000)
    a.idle = a.idle or a.idle_default
    if os.geteuid() != 0:
        raise SystemExit("run as root: it creates system users and spawns servers as them")
    install_jupyterhub()
    shutil.copy(Path(__file__).with_name("standin.py"), STANDIN)
    os.chmod(STANDIN, 0o644)
    parts = set(a.parts.split(","))
    users = Users()
    for stale in leftover_users():
        Users.remove(stale)
    started = time.time()
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "quick": a.quick,
        "argv": sys.argv[1:],
    }
    try:
        need = max(a.server_levels + [a.burst, a.burst_kernel]) if parts - {"users"} else 0
        log(f"creating {need + 1} system users ...")
        users.ensure([ADMIN, *sysnames(need)])
        for name in ("jupyterhub", "minihub"):
            if a.only in (None, name):
                result[name] = asyncio.run(run_hub(name, a, users, parts))
    finally:
        users.remove_all()
    result["seconds"] = time.time() - started
    log(f"done in {result['seconds']:.0f} s")
    print(json.dumps(result, indent=1), flush=True)
    if not a.no_write:
        write_report(result)


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """b over a; a later run's point replaces the earlier run's point of the same size."""
    out = {**a, **b}
    for hub in ("jupyterhub", "minihub"):
        if hub in a and hub in b:
            out[hub] = {**a[hub], **b[hub]}
            for part, rows in b[hub].items():
                old = a[hub].get(part)
                if isinstance(rows, list) and isinstance(old, list):
                    key = "users" if part == "users" else "servers"
                    sizes = {r[key] for r in rows}
                    keep = [r for r in old if r[key] not in sizes]
                    out[hub][part] = sorted(keep + rows, key=lambda r: r[key])
    out["seconds"] = a.get("seconds", 0) + b.get("seconds", 0)
    out["argv"] = [*a.get("argv", []), *(["+"] if a else []), *b.get("argv", [])]
    return out


def write_report(result: dict[str, Any]) -> None:
    from growth_report import write

    write(result, OUT, CHECKOUT / "docs" / "benchmarks.md", PLOT_PY)
    log(f"wrote {OUT} and the Growth section of docs/benchmarks.md")


if __name__ == "__main__":
    main()
