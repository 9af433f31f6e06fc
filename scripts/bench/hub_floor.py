"""The floor under the hub's memory at rest: the stack it is built on, serving nothing.

    sudo /opt/minihub/venv/bin/python scripts/bench/hub_floor.py [--runs 3]

Starts, one at a time and alone, a bare interpreter, then an aiohttp server that answers one
route, adding one part of the hub's stack at each step (uvloop, an SQLite connection through
aiosqlite, jinja2), then minihub's hub itself; each with the hub's own import-time set-up
(minihub.singleuser.lean) and its settling (gc, malloc_trim, freeze) so that the floor is as
lean as the hub. Memory is PSS (smaps_rollup) 3 s after the first answer, as
scripts/bench/growth.py measures the hub at rest; the median of --runs runs. What minihub
adds is the last row less the one before it.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import free_port, log, rollup_kib, stop_process, wait_http
from hubs import start_minihub

PY = sys.executable

# Each step's code runs after the ones before it; {port} and {work} are filled in.
SERVE = """
import asyncio, sys
from minihub.singleuser import lean
lean.install_hub()
from aiohttp import web
from minihub import forkloop
async def health(request):
    return web.Response(text="ok")
async def main():
    app = web.Application()
    app.router.add_get("/health", health)
{extra}
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", {port}).start()
    forkloop.settle()
    await asyncio.sleep(3600)
{run}
"""
ASYNCIO = "asyncio.run(main())"
UVLOOP = (
    "import uvloop\n"
    "with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:\n"
    "    r.run(main())"
)
SQLITE = (
    "    import aiosqlite\n"
    "    db = await aiosqlite.connect('{work}/floor.sqlite', isolation_level=None)\n"
    "    await db.execute('PRAGMA journal_mode=WAL')"
)
JINJA = "    import jinja2"

STEPS: list[tuple[str, str, str]] = [
    ("aiohttp server (asyncio loop)", "", ASYNCIO),
    ("+ uvloop", "", UVLOOP),
    ("+ an SQLite connection (aiosqlite)", SQLITE, UVLOOP),
    ("+ jinja2", SQLITE + "\n" + JINJA, UVLOOP),
]


def rollup(pid: int) -> dict[str, float]:
    got = rollup_kib(pid)
    return {k: got[k] / 1024 for k in ("Pss", "Pss_Anon", "Pss_File")}


def bare() -> dict[str, float]:
    proc = subprocess.Popen([PY, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(3)
        return rollup(proc.pid)
    finally:
        stop_process(proc)


def step(extra: str, run: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="mhfloor-") as work:
        port = free_port()
        code = SERVE.format(extra=extra.format(work=work), run=run, port=port)
        proc = subprocess.Popen([PY, "-c", code], cwd=work)
        try:
            wait_http(port, proc, "/health", 30)
            time.sleep(3)
            return rollup(proc.pid)
        finally:
            stop_process(proc)


def hub() -> dict[str, float]:
    h = start_minihub()
    try:
        time.sleep(3)
        return rollup(h.proc.pid)
    finally:
        h.stop()


def median_of(runs: int, measure: Callable[[], dict[str, float]]) -> dict[str, float]:
    got = [measure() for _ in range(runs)]
    return {k: statistics.median(g[k] for g in got) for k in got[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    runs = max(1, min(ap.parse_args().runs, 20))
    rows = [("Python interpreter, idle", median_of(runs, bare))]
    for name, extra, run in STEPS:
        rows.append((name, median_of(runs, lambda e=extra, r=run: step(e, r))))
        log(f"{name}: {rows[-1][1]}")
    rows.append(("minihub's hub (no users)", median_of(runs, hub)))
    print("| process at rest | PSS | its own (Pss_Anon) | file pages (Pss_File) |")
    print("|---|---|---|---|")
    for name, r in rows:
        print(
            f"| {name} | {r['Pss']:.1f} MiB | {r['Pss_Anon']:.1f} MiB | {r['Pss_File']:.1f} MiB |"
        )
    print(f"\nmedian of {runs} runs, each alone, PSS 3 s after the first answer ({Path(PY)})")


if __name__ == "__main__":
    main()
