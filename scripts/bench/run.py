"""Side-by-side benchmark of minihub and JupyterHub (+ configurable-http-proxy, JupyterLab).

Run as root: sudo /opt/minihub/venv/bin/python scripts/bench/run.py [--users N] [--quick]
Real system users (mhbn*), real PAM logins, real kernels, loopback only; it prints one
markdown table and writes it to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from client import Client, SpawnResult, login
from common import (
    PREFIX,
    Users,
    install_jupyterhub,
    leftover_users,
    log,
    median,
    pct,
    pss_kib,
    user_pss_mib,
    versions,
)
from hubs import ADMIN, Hub, start_jupyterhub, start_minihub

CHECKOUT = Path(__file__).resolve().parents[2]


@dataclass
class Figures:
    """Everything measured on one hub; NaN where a step could not run."""

    values: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def put(self, key: str, value: float) -> None:
        self.values[key] = value
        log(f"  {key}: {value:.4g}")


def names(n: int, start: int = 0) -> list[str]:
    return [f"{PREFIX}{i:03d}" for i in range(start, start + n)]


async def settle(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def measure_hub(hub: Hub, args: argparse.Namespace, users: Users) -> Figures:
    fig = Figures()
    async with Client(hub.url, hub.token) as c:
        async with c.session.get(c.api("/")) as r:
            await r.read()
        await settle(3)
        pids = hub.hub_pids()
        fig.put("hub_pss", sum(pss_kib(p) for p in pids.values()) / 1024)
        fig.put("hub_only_pss", pss_kib(pids["hub"]) / 1024)
        fig.put("proxy_pss", pss_kib(pids["proxy"]) / 1024 if "proxy" in pids else 0.0)
        everyone = names(max(args.users, args.concurrent, args.sequential))
        await c.create_users(everyone)
        await sequential_part(c, fig, args)
        await settle(2)
        fig.put("hub_pss_after", sum(pss_kib(p) for p in hub.hub_pids().values()) / 1024)
        await batch_part(c, fig, args, names(args.users))
        await concurrent_part(c, hub, fig, args, users, names(args.concurrent))
    return fig


async def sequential_part(c: Client, fig: Figures, args: argparse.Namespace) -> None:
    seq = names(args.sequential)
    results = []
    for n in seq:
        results.append(await c.spawn(n))
    ok = [r.seconds for r in results if r.ok]
    fig.put("spawn_seq_median", median(ok))
    fig.put("spawn_seq_p95", pct(ok, 95))
    fig.put("spawn_seq_failures", len(results) - len(ok))
    kernels: dict[str, str] = {}
    starts = []
    for r in results:
        if r.ok:
            kernels[r.name], secs = await c.start_kernel(r.name)
            starts.append(secs)
    fig.put("kernel_start_median", median(starts))
    await settle(5)  # let servers and kernels finish starting up before reading memory
    per_user = [user_pss_mib(n) for n in kernels]
    fig.put("user_pss", median(per_user))
    for n in kernels:
        await c.open_notebook(n)
    await settle(2)
    fig.put("user_pss_nb", median([user_pss_mib(n) for n in kernels]))
    if kernels:
        name, kid = next(iter(kernels.items()))
        lat = await c.execute_latencies(name, kid, args.executes, 60)
        fig.put("exec_median", median(lat))
        fig.put("exec_p99", pct(lat, 99))
        fig.put("exec_count", len(lat))
        await c.get_load(name, 200, 8, 20)  # warm-up: connection pools, JITs
        lat, errors, wall = await c.get_load(name, args.requests, 16, 60)
        fig.put("get_rps", len(lat) / wall)
        fig.put("get_p50", median(lat))
        fig.put("get_p99", pct(lat, 99))
        fig.put("get_errors", errors)
    await stop_all(c, seq)


async def stop_all(c: Client, who: list[str]) -> None:
    sem = asyncio.Semaphore(20)

    async def one(n: str) -> None:
        async with sem:
            try:
                await c.stop(n)
            except Exception as e:  # noqa: BLE001 - keep stopping the others
                log(f"stop {n}: {e}")

    await asyncio.gather(*(one(n) for n in who))


async def batch_part(c: Client, fig: Figures, args: argparse.Namespace, who: list[str]) -> None:
    t0 = time.perf_counter()
    results = await asyncio.gather(*(c.spawn(n) for n in who))
    wall = time.perf_counter() - t0
    ok = [r.seconds for r in results if r.ok]
    fig.put("batch_wall", wall)
    fig.put("batch_median", median(ok))
    fig.put("batch_p95", pct(ok, 95))
    fig.put("batch_failures", len(results) - len(ok))
    note_failures(fig, "spawn at once", results)
    await stop_all(c, who)


async def concurrent_part(
    c: Client, hub: Hub, fig: Figures, args: argparse.Namespace, users: Users, who: list[str]
) -> None:
    async def one(n: str) -> SpawnResult:
        t0 = time.perf_counter()
        ok, status = await login(hub.url, n, users.passwords[n])
        if not ok:
            return SpawnResult(n, time.perf_counter() - t0, False, status, "login failed")
        return await c.spawn(n)

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(n) for n in who), return_exceptions=True)
    wall = time.perf_counter() - t0
    clean = [
        r if isinstance(r, SpawnResult) else SpawnResult("?", 0, False, 0, repr(r)[:200])
        for r in results
    ]
    fig.put("conc_wall", wall)
    fig.put("conc_ok", sum(r.ok for r in clean))
    fig.put("conc_429", sum(r.status == 429 for r in clean))
    fig.put("conc_failures", sum((not r.ok) and r.status != 429 for r in clean))
    note_failures(fig, "logins+spawns at once", clean)
    await stop_all(c, who)


def note_failures(fig: Figures, what: str, results: list[SpawnResult]) -> None:
    bad = [r for r in results if not r.ok]
    if bad:
        first = bad[0]
        fig.notes.append(
            f"{what}: {len(bad)} failed, e.g. {first.name} HTTP {first.status} "
            f"after {first.seconds:.1f} s: {first.error[:160]}"
        )


# --------------------------------------------------------------------------- the table

# (key, label, unit scale, unit text, lower is better)
ROWS = [
    ("hub_pss", "hub + proxy at rest, PSS", 1, "MiB", True),
    ("hub_pss_after", "hub + proxy + helpers after serving (servers stopped), PSS", 1, "MiB", True),
    ("user_pss", "per active user: server + 1 idle kernel, PSS", 1, "MiB", True),
    ("user_pss_nb", "per active user, a notebook opened and saved too, PSS", 1, "MiB", True),
    ("users_per_gb", "users per GB (1024 MiB / per-user PSS)", 1, "", False),
    ("spawn_seq_median", "spawn POST → ready, sequential, median", 1, "s", True),
    ("spawn_seq_p95", "spawn POST → ready, sequential, p95", 1, "s", True),
    ("batch_wall", "spawn {users} at once: wall", 1, "s", True),
    ("batch_median", "spawn {users} at once: median", 1, "s", True),
    ("batch_p95", "spawn {users} at once: p95", 1, "s", True),
    ("batch_failures", "spawn {users} at once: failures", 1, "", True),
    ("kernel_start_median", "kernel POST → kernel_info_reply, median", 1000, "ms", True),
    ("exec_median", "execute `1+1` round trip via hub, median", 1000, "ms", True),
    ("exec_p99", "execute `1+1` round trip via hub, p99", 1000, "ms", True),
    ("conc_wall", "{concurrent} logins + spawns at once: wall", 1, "s", True),
    ("conc_failures", "{concurrent} logins + spawns at once: failures (not 429)", 1, "", True),
    ("conc_429", "{concurrent} logins + spawns at once: clean 429s", 1, "", True),
    ("get_rps", "GET api/status through the hub: req/s", 1, "", False),
    ("get_p50", "GET api/status through the hub: p50", 1000, "ms", True),
    ("get_p99", "GET api/status through the hub: p99", 1000, "ms", True),
]


def fmt(v: float | None, scale: float, unit: str) -> str:
    if v is None or math.isnan(v):
        return "n/a"
    x = v * scale
    text = f"{x:,.0f}" if abs(x) >= 100 or float(x).is_integer() else f"{x:.3g}"
    return f"{text} {unit}".strip()


def ratio(jh: float | None, mh: float | None, lower_better: bool) -> str:
    if jh is None or mh is None or math.isnan(jh) or math.isnan(mh):
        return "n/a"
    if jh == 0 and mh == 0:
        return "="
    if (mh if lower_better else jh) == 0:
        return "∞"
    r = jh / mh if lower_better else mh / jh
    return f"{r:.1f}×"


def table(jh: Figures, mh: Figures, args: argparse.Namespace) -> str:
    for f in (jh, mh):
        if f.values.get("user_pss"):
            f.values["users_per_gb"] = 1024 / f.values["user_pss"]
    lines = ["| figure | JupyterHub | minihub | minihub better by |", "|---|---:|---:|---:|"]
    for key, label, scale, unit, lower in ROWS:
        a, b = jh.values.get(key), mh.values.get(key)
        label = label.format(users=args.users, concurrent=args.concurrent)
        lines.append(
            f"| {label} | {fmt(a, scale, unit)} | {fmt(b, scale, unit)} | {ratio(a, b, lower)} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def reinstall_minihub() -> None:
    """Users' servers import minihub from the venv's site-packages: install this checkout."""
    log("installing this checkout into the venv (users' servers import it from there) ...")
    subprocess.run(
        [
            "flock",
            "/tmp/minihub-pip.lock",
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--force-reinstall",
            str(CHECKOUT),
        ],
        check=True,
        timeout=600,
    )


def run_one(start: object, args: argparse.Namespace, users: Users) -> Figures:
    hub: Hub = start()  # type: ignore[operator]
    try:
        return asyncio.run(measure_hub(hub, args, users))
    except Exception as e:
        tail = (hub.work / "hub.log").read_text(errors="replace").splitlines()[-30:]
        log(f"{hub.name}: benchmark step failed: {e!r}; hub log ends:\n" + "\n".join(tail))
        raise
    finally:
        hub.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50, help="servers spawned at once")
    parser.add_argument(
        "--concurrent", type=int, default=100, help="users logging in and spawning at once"
    )
    parser.add_argument("--sequential", type=int, default=10, help="sequential spawns")
    parser.add_argument("--executes", type=int, default=300, help="execute round trips")
    parser.add_argument("--requests", type=int, default=5000, help="proxied GETs")
    parser.add_argument("--quick", action="store_true", help="small counts: under 3 minutes")
    parser.add_argument("--only", choices=["minihub", "jupyterhub"], help="measure one hub")
    parser.add_argument("--no-memcap", action="store_true", help="skip the 600 MiB simulation")
    parser.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument(
        "--no-reinstall", action="store_true", help="use the minihub already installed in the venv"
    )
    args = parser.parse_args()
    if args.quick:
        args.users, args.concurrent = min(args.users, 10), min(args.concurrent, 20)
        args.sequential, args.executes = min(args.sequential, 5), min(args.executes, 100)
        args.requests = min(args.requests, 1000)
    if os.geteuid() != 0:
        raise SystemExit("run as root: it creates system users and starts hubs that spawn as them")
    install_jupyterhub()
    if not args.no_reinstall:
        reinstall_minihub()
    users = Users()
    for stale in leftover_users():
        Users.remove(stale)
    started = time.time()
    try:
        log("creating system users ...")
        users.ensure([ADMIN, *names(max(args.users, args.concurrent, args.sequential))])
        jh = mh = Figures()
        if args.only != "minihub":
            log("measuring JupyterHub ...")
            jh = run_one(start_jupyterhub, args, users)
        if args.only != "jupyterhub":
            log("measuring minihub ...")
            mh = run_one(start_minihub, args, users)
        print("\n" + table(jh, mh, args) + "\n", flush=True)  # kept even if what follows fails
        memcap = ""
        if not args.no_memcap and args.only != "jupyterhub":
            memcap = run_memcap(users)
    finally:
        users.remove_all()
    report(jh, mh, memcap, args, time.time() - started)


def run_memcap(users: Users) -> str:
    from memcap import simulate

    try:
        return simulate(users)
    except Exception as e:  # noqa: BLE001 - the failure is the result
        log(f"memcap: failed: {e!r}")
        return f"**0.6 GB machine**: the simulation failed: {e!r}"


def report(jh: Figures, mh: Figures, memcap: str, args: argparse.Namespace, seconds: float) -> None:
    text = table(jh, mh, args)
    notes = [f"- JupyterHub: {n}" for n in jh.notes] + [f"- minihub: {n}" for n in mh.notes]
    for n in notes:
        print(n)
    if memcap:
        print("\n" + memcap)
    log(f"done in {seconds:.0f} s")
    if not args.no_write and not args.only:
        write_doc(text, notes, memcap, args)


def write_doc(text: str, notes: list[str], memcap: str, args: argparse.Namespace) -> None:
    from report_doc import render, update

    path = CHECKOUT / "docs" / "benchmarks.md"
    update(path, render(text, notes, memcap, args, versions()))
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
