"""Render docs/benchmarks.md from one run: the table, the 0.6 GB result, versions, machine.

Kept apart from run.py so the page's prose lives in one place.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import machine

HEAD = """# Benchmarks: minihub against JupyterHub

Measured side by side in one run on the same machine by

    sudo /opt/minihub/venv/bin/python scripts/bench/run.py            # full, ~8 min
    sudo /opt/minihub/venv/bin/python scripts/bench/run.py --quick    # ~3 min, smaller counts

It installs JupyterHub, JupyterLab and ipykernel into `/opt/minihub-bench/jhvenv` and
configurable-http-proxy (npm) into `/opt/minihub-bench/chp`, creates real system users
(`mhbn*`, removed at the end), and drives both hubs through their public ports only: the
JupyterHub REST API (create users, POST the server, follow the progress stream), the login
form (PAM), and the Jupyter Server API and kernel websocket through each hub's proxy.
JupyterHub runs its defaults: LocalProcessSpawner, `jupyterhub-singleuser` (Jupyter Server
with JupyterLab), configurable-http-proxy, PAM. minihub runs its defaults with PAM.
Memory is PSS from `/proc/PID/smaps_rollup`; per user it is summed over every process of
that Unix account (server + one idle kernel). The last column is how many times better
minihub is (lower-is-better figures: JupyterHub ÷ minihub; higher-is-better: the inverse).
"""


BEGIN, END = "<!-- bench:begin (written by scripts/bench/run.py) -->", "<!-- bench:end -->"


def update(path: Path, block: str) -> None:
    """Replace the generated block of the page, keeping the hand-written text around it."""
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        text = head + BEGIN + "\n" + block + END + rest.split(END, 1)[1]
    else:
        text = HEAD + "\n" + BEGIN + "\n" + block + END + "\n"
    path.write_text(text)


def render(
    table: str, notes: list[str], memcap: str, args: argparse.Namespace, versions: dict[str, str]
) -> str:
    vers = ", ".join(f"{k} {v}" for k, v in versions.items())
    counts = (
        f"{args.sequential} sequential spawns (each then starts one kernel), "
        f"{args.users} spawns at once, {args.concurrent} logins + spawns at once, "
        f"{args.executes} execute round trips, {args.requests} proxied GETs "
        f"(16 connections){' (--quick)' if args.quick else ''}"
    )
    parts = [
        f"## Latest run: {time.strftime('%Y-%m-%d')}\n",
        f"Machine: {machine()}.  \nVersions: {vers}.  \nCounts: {counts}.\n",
        table,
        "",
    ]
    if notes:
        parts += ["Failures seen:", "", *notes, ""]
    if memcap:
        parts += ["## The 0.6 GB machine", "", memcap, ""]
    return "\n".join(parts) + "\n"
