"""Slurm mode of the benchmark: JupyterHub 6.1.1 + batchspawner 1.3.0 against minihub's Slurm
spawner, on the same test Slurm (scripts/slurm: slurmctld and three slurmd nodes on
127.0.0.1), the same users, the same job requests, one run.

Run as root: /opt/minihub/venv/bin/python scripts/bench/slurm.py [--jobs 20] [--sequential 10]

JupyterHub + batchspawner + configurable-http-proxy run from a venv of their own made from
Debian's python (/opt/minihub-bench/slurmhub, cached; CHP from npm, shared with run.py),
submitting as the users with exec_prefix `runuser -u {username} --` (no sudo here) and
batchspawner's own batch script (srun, --get-user-env=L); minihub runs `[spawner] class =
"slurm"` with its own server. Both ask for the same partition, time limit and memory; the
nodes are named n1..n3 and all listen on 127.0.0.1, so both hubs connect to 127.0.0.1.
Figures: spawn POST -> answering through the hub's proxy (median, p95 over sequential
spawns), N at once (wall until all answer), hub memory (PSS) and CPU with N running jobs
(CPU counted over an idle minute, children such as squeue and runuser included), and a hub
restart with N running jobs (new process -> all answer again; no job resubmitted). Loopback
only; every wait is bounded. Writes the table into docs/benchmarks.md between the
bench-slurm markers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import client
from client import Client, SpawnResult
from common import (
    BENCH_DIR,
    CHP_BIN,
    CHP_DIR,
    free_port,
    log,
    machine,
    median,
    pct,
    replace_block,
)
from kube import (
    Figures,
    Hub,
    answers,
    fmt,
    make_user_tokens,
    memory,
    note_failures,
    ratio,
    spawn_answer,
    stop_all,
    with_sums,
)

CHECKOUT = Path(__file__).resolve().parents[2]
VENV = BENCH_DIR / "slurmhub"  # JupyterHub + batchspawner, apart from minihub's venv
INCUMBENT = ["jupyterhub==6.1.1", "batchspawner==1.3.0", "jupyter_server"]
ADMIN = "sbadmin"
USER_PREFIX = "mhsl"
# The same request for every job of both hubs: 20 fit on the three test nodes (8 CPUs each).
REQUEST = {"partition": "debug", "runtime": "1:00:00", "memory": "512M"}
HUBS = ("jupyterhub", "minihub")
TITLES = {"jupyterhub": "JupyterHub + batchspawner", "minihub": "minihub"}


def run(cmd: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)


# --------------------------------------------------------------------------- installs


def install_incumbent() -> None:
    BENCH_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(BENCH_DIR, 0o755)  # the jobs run the venv's python as the users
    if not (VENV / "bin" / "python").exists():
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(VENV)], check=True, timeout=120)
    if versions_of_incumbent().get("batchspawner") != "1.3.0":
        log(f"installing {' '.join(INCUMBENT)} into {VENV} ...")
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", *INCUMBENT], check=True,
                       timeout=900)  # fmt: skip
    if not CHP_BIN.exists():
        log(f"installing configurable-http-proxy with npm into {CHP_DIR} ...")
        npm = ["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(CHP_DIR)]
        subprocess.run([*npm, "configurable-http-proxy"], check=True, timeout=600)


def versions_of_incumbent() -> dict[str, str]:
    code = (
        "import importlib.metadata as m\nfor p in ('jupyterhub', 'batchspawner', "
        "'jupyter_server', 'tornado'):\n  print(p, m.version(p))"
    )
    out = run([str(VENV / "bin" / "python"), "-c", code], 60).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def versions() -> dict[str, str]:
    found = versions_of_incumbent()
    found["configurable-http-proxy"] = run([str(CHP_BIN), "--version"], 60).stdout.strip()
    code = "import importlib.metadata as m; print(m.version('minihub'))"
    found["minihub"] = run([sys.executable, "-c", code], 60).stdout.strip() or "checkout"
    found["Slurm"] = run(["sinfo", "--version"], 60).stdout.strip().removeprefix("slurm ")
    return found


# --------------------------------------------------------------------------- the hubs

JH_CONFIG = """
from traitlets import Unicode
from batchspawner import SlurmSpawner

c = get_config()  # noqa


class LoopbackSlurmSpawner(SlurmSpawner):
    # start() resets ip to this trait's default before each job: the server listens on
    # loopback only (the nodes' NodeAddr), not on every interface.
    ip = Unicode("127.0.0.1")


c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.ConfigurableHTTPProxy.command = ["{chp}"]
c.JupyterHub.db_url = "sqlite:///{work}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{work}/cookie_secret"
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = "{password}"
c.Authenticator.allow_all = True
c.JupyterHub.cleanup_servers = False  # a restart keeps the jobs (the restart figure)
c.JupyterHub.concurrent_spawn_limit = 100
c.JupyterHub.log_level = "WARN"
c.JupyterHub.services = [{{"name": "bench", "api_token": "{token}"}}]
c.JupyterHub.load_roles = [{{"name": "bench", "services": ["bench"],
    "scopes": ["admin:users", "admin:servers", "access:servers", "tokens", "list:users"]}}]
c.JupyterHub.spawner_class = LoopbackSlurmSpawner
c.SlurmSpawner.exec_prefix = "runuser -u {{username}} --"  # as the issue ran it: no sudo here
c.SlurmSpawner.req_partition = "{partition}"
c.SlurmSpawner.req_runtime = "{runtime}"
c.SlurmSpawner.req_memory = "{memory}"
# squeue's %B is the node's name (n1..n3, which resolve nowhere); every node is 127.0.0.1.
c.SlurmSpawner.state_exechost_exp = "127.0.0.1"
# The job's PATH is not the hub's (PATH is not in JupyterHub's env_keep): full paths.
c.SlurmSpawner.batchspawner_singleuser_cmd = "{venv}/bin/batchspawner-singleuser"
c.Spawner.cmd = ["{venv}/bin/jupyterhub-singleuser"]
c.SlurmSpawner.start_timeout = {timeout}
c.SlurmSpawner.http_timeout = {timeout}
"""

MH_CONFIG = """
[hub]
ip = "127.0.0.1"
port = {port}
data_dir = "{work}/data"
connect_url = "http://127.0.0.1:{port}"
log_level = "{log_level}"
cleanup_servers = false
[auth]
authenticator = "native"
[spawner]
class = "slurm"
start_timeout = {timeout}
concurrent_spawn_limit = 100
[slurm]
partition = "{partition}"
runtime = "{runtime}"
memory = "{memory}"
ip = "127.0.0.1"
"""


def make_jupyterhub(args: argparse.Namespace) -> Hub:
    work = Path(tempfile.mkdtemp(prefix="mhbench-slurm-jh-"))
    port, token = free_port(), secrets.token_hex(24)
    (work / "jupyterhub_config.py").write_text(
        JH_CONFIG.format(
            port=port, hub_port=free_port(), api_port=free_port(), chp=CHP_BIN, work=work,
            password=secrets.token_hex(8), token=token, timeout=args.timeout, venv=VENV,
            **REQUEST,
        )
    )  # fmt: skip
    env = dict(os.environ, PATH=f"{VENV}/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
    cmd = [str(VENV / "bin" / "jupyterhub"), "-f", str(work / "jupyterhub_config.py")]
    return Hub("jupyterhub", "", port, token, work, cmd, env)


def make_minihub(args: argparse.Namespace) -> Hub:
    work = Path(tempfile.mkdtemp(prefix="mhbench-slurm-mh-"))
    port = free_port()
    cfg = work / "minihub.toml"
    cfg.write_text(
        MH_CONFIG.format(port=port, work=work, timeout=args.timeout, log_level=args.log_level,
                         **REQUEST)
    )  # fmt: skip
    cmd = [sys.executable, "-m", "minihub", "-f", str(cfg)]
    pw = secrets.token_hex(8) + "\n"
    for step in (["user", "add", ADMIN, "--admin"], ["token", ADMIN]):
        out = run([*cmd, *step], 60, input=pw, cwd=work)
        if out.returncode != 0:
            raise SystemExit(f"minihub {' '.join(step)} failed: {out.stderr}")
    token = out.stdout.strip().splitlines()[-1]
    return Hub("minihub", "", port, token, work, cmd, dict(os.environ))


# --------------------------------------------------------------------------- Slurm and /proc


def jobs_of(names: list[str]) -> dict[str, str]:
    """Running or pending jobs of these users: {job id: user}."""
    out = run(["squeue", "-h", "-u", ",".join(names), "-t", "PD,R,CG", "-o", "%i %u"], 60)
    return dict(line.split() for line in out.stdout.splitlines() if len(line.split()) == 2)


def wait_no_jobs(names: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while jobs_of(names) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = jobs_of(names)
    if left:
        log(f"cancelling leftover jobs {' '.join(left)}")
        run(["scancel", *left], 60)


def cpu_all(pid: int) -> float:
    """utime + stime of a process and of its children it has waited for (sbatch, squeue,
    runuser), in seconds; 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    f = stat.rsplit(")", 1)[1].split()
    return sum(int(x) for x in f[11:15]) / os.sysconf("SC_CLK_TCK")


def hub_cpu(hub: Hub) -> float:
    """CPU seconds of the hub and its live helpers (CHP for JupyterHub)."""
    return sum(cpu_all(p) for p in hub.pids().values())


def slurm_test_runs() -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                line = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "pytest" in line and "test_slurm" in line:
                found.append(entry)
    return found


# --------------------------------------------------------------------------- measuring


async def sequential(c: Client, hub: Hub, fig: Figures, who: list[str], timeout: float) -> None:
    cpu0 = hub_cpu(hub)
    results: list[SpawnResult] = []
    for n in who:
        results.append(await spawn_answer(c, n, timeout))
        await c.stop(n)
    cpu1 = hub_cpu(hub)
    ok = [r.seconds for r in results if r.ok]
    fig.put("seq_median", median(ok))
    fig.put("seq_p95", pct(ok, 95))
    fig.put("seq_failures", len(results) - len(ok))
    fig.put("seq_cpu", (cpu1 - cpu0) / len(who))
    note_failures(fig, "sequential", results)


async def burst(c: Client, hub: Hub, fig: Figures, who: list[str], timeout: float) -> list[str]:
    cpu0 = hub_cpu(hub)
    t0 = time.perf_counter()
    results = await asyncio.gather(*(spawn_answer(c, n, timeout) for n in who))
    fig.put("burst_wall", time.perf_counter() - t0)
    fig.put("burst_cpu", (hub_cpu(hub) - cpu0) / len(who))
    ok = [r.seconds for r in results if r.ok]
    fig.put("burst_median", median(ok))
    fig.put("burst_failures", len(who) - len(ok))
    note_failures(fig, "at once", results)
    return [r.name for r in results if r.ok]


async def idle(hub: Hub, fig: Figures, seconds: float) -> None:
    """The hub's CPU with the jobs running and nobody using them, per minute."""
    cpu0, t0 = hub_cpu(hub), time.perf_counter()
    await asyncio.sleep(seconds)
    fig.put("idle_cpu", (hub_cpu(hub) - cpu0) * 60 / (time.perf_counter() - t0))


async def restart(c: Client, hub: Hub, fig: Figures, who: list[str], timeout: float) -> None:
    """Stop the hub with its jobs running, start it again: from the new process's start
    until every server answers through it; and no job resubmitted."""
    before = jobs_of(who)
    hub.stop()
    hub.start(wait=False)
    deadline = hub.started_at + timeout
    sem = asyncio.Semaphore(10)  # bounded load on a hub that is starting up
    done: dict[str, float] = {}

    async def one(n: str) -> None:
        while time.perf_counter() < deadline and n not in done:
            async with sem:
                if await answers(c, n):
                    done[n] = time.perf_counter() - hub.started_at
                    return
            await asyncio.sleep(0.2)

    await asyncio.gather(*(one(n) for n in who))
    fig.put("restart_all", max(done.values()) if len(done) == len(who) else math.nan)
    fig.put("restart_first", min(done.values()) if done else math.nan)
    fig.put("restart_servers", len(who))
    fig.put("restart_missing", len(who) - len(done))
    after = jobs_of(who)
    fig.put("restart_jobs_new", len(set(after) - set(before)))


async def measure(hub: Hub, fig: Figures, args: argparse.Namespace, everyone: list[str]) -> None:
    client.SPAWN_TIMEOUT = args.timeout
    async with Client(hub.url, hub.token) as c:
        await c.create_users(everyone)
        await make_user_tokens(c, everyone)
        await asyncio.sleep(2)
        memory(hub, fig, "rest")
        await sequential(c, hub, fig, everyone[: args.sequential], args.timeout)
        wait_no_jobs(everyone)
        running = await burst(c, hub, fig, everyone, args.timeout)
        await asyncio.sleep(5)  # servers done starting before memory is read
        fig.put("running_jobs", len(jobs_of(everyone)))
        memory(hub, fig, "jobs")
        await idle(hub, fig, args.idle)
        await restart(c, hub, fig, running, args.timeout)
        await stop_all(c, everyone)
        wait_no_jobs(everyone)


def run_hub(kind: str, args: argparse.Namespace, everyone: list[str]) -> Figures:
    noisy = slurm_test_runs()
    hub = make_jupyterhub(args) if kind == "jupyterhub" else make_minihub(args)
    log(f"measuring {TITLES[kind]} ({hub.work}) ...")
    fig = Figures()  # what was measured before a failing step is kept
    try:
        hub.start()
        asyncio.run(measure(hub, fig, args, everyone))
    except Exception as e:  # noqa: BLE001 - the failure is a result; the other hub still runs
        log(f"{kind}: step failed: {e!r}; hub log ends:\n{hub.tail()}")
        fig.notes.append(f"a step failed: {e!r}"[:300])
    finally:
        hub.stop()
        wait_no_jobs(everyone)
        if not args.keep:
            subprocess.run(["rm", "-rf", str(hub.work)], check=False, timeout=60)
    if noisy or slurm_test_runs():
        fig.notes.append("Slurm tests (pytest) were running during this hub's run")
    return fig


# --------------------------------------------------------------------------- the table

# (key, label, scale, unit); {n}: the number of jobs at once, {s}: sequential spawns
ROWS = [
    ("seq_median", "spawn POST → answering through the proxy, sequential, median", 1, "s"),
    ("seq_p95", "spawn POST → answering through the proxy, sequential, p95", 1, "s"),
    ("seq_failures", "sequential spawns: failures", 1, ""),
    ("burst_wall", "{n} spawns at once: wall until all answer", 1, "s"),
    ("burst_median", "{n} spawns at once: median per spawn", 1, "s"),
    ("burst_failures", "{n} spawns at once: failures", 1, ""),
    ("rest_pss_all", "hub (+ proxy) at rest (users created), PSS", 1, "MiB"),
    ("jobs_pss_all", "hub (+ proxy) with {n} running jobs, PSS", 1, "MiB"),
    ("jobs_pss_proxy", "  of which CHP, PSS", 1, "MiB"),
    ("idle_cpu", "hub (+ proxy) CPU with {n} running jobs, per minute", 1000, "ms"),
    ("burst_cpu", "hub (+ proxy) CPU per spawn ({n} at once)", 1000, "ms"),
    ("seq_cpu", "hub (+ proxy) CPU per spawn + stop (sequential)", 1000, "ms"),
    ("restart_servers", "restart: servers running before it", 1, ""),
    ("restart_all", "restart with {n} jobs: new process → all answer", 1, "s"),
    ("restart_first", "restart with {n} jobs: new process → first answers", 1, "s"),
    ("restart_missing", "restart: servers not answering in time", 1, ""),
    ("restart_jobs_new", "restart: jobs submitted again", 1, ""),
]


def table(figs: dict[str, Figures], args: argparse.Namespace) -> str:
    vals = {k: with_sums(f) for k, f in figs.items()}
    jh, mh = vals.get("jupyterhub", {}), vals.get("minihub", {})
    lines = [
        f"| figure | {TITLES['jupyterhub']} | {TITLES['minihub']} | minihub better by |",
        "|---|---:|---:|---:|",
    ]
    for key, label, scale, unit in ROWS:
        cells = [fmt(v.get(key), scale, unit) for v in (jh, mh)]
        if key.endswith("_proxy"):
            cells[1] = "(in the hub)"
        plain = key.endswith(("failures", "missing", "servers", "_new", "_proxy"))
        better = "" if plain else ratio(jh.get(key), mh.get(key))
        row = [label.format(n=args.jobs, s=args.sequential), *cells, better]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


BEGIN = "<!-- bench-slurm:begin (written by scripts/bench/slurm.py) -->"
END = "<!-- bench-slurm:end -->"


def write_doc(text: str, doc: Path) -> None:
    replace_block(doc, BEGIN, END, text)


def render(figs: dict[str, Figures], args: argparse.Namespace, vers: dict[str, str]) -> str:
    notes = [f"- {TITLES[k]}: {n}" for k, f in figs.items() for n in f.notes]
    parts = [
        f"Latest run: {time.strftime('%Y-%m-%d')}, `{' '.join(sys.argv[1:]) or 'defaults'}`.  ",
        f"Machine: {machine()}.  ",
        f"Versions: {', '.join(f'{k} {v}' for k, v in vers.items())}.  ",
        (
            f"Counts: {args.sequential} sequential spawns (each stopped after), {args.jobs} at "
            f"once, an idle {args.idle:g} s with them running, then a restart with them.\n"
        ),
        table(figs, args),
        "",
        *(["Notes:", "", *notes, ""] if notes else []),
    ]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="spawns at once, then restart")
    parser.add_argument("--sequential", type=int, default=10, help="sequential spawns")
    parser.add_argument("--idle", type=float, default=60, help="seconds of idle CPU measured")
    parser.add_argument("--timeout", type=float, default=180, help="per spawn and restart, s")
    parser.add_argument("--only", action="append", choices=HUBS, help="measure these hubs only")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--no-write", action="store_true", help="leave the docs alone")
    parser.add_argument("--keep", action="store_true", help="keep the hubs' work directories")
    parser.add_argument("--log-level", default="WARNING", help="minihub's log level")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (the hubs submit as the users; scripts/slurm needs root)")
    if args.sequential > args.jobs:
        raise SystemExit("--sequential must be at most --jobs")
    install_incumbent()
    up = run(["bash", str(CHECKOUT / "scripts" / "slurm"), "up"], 120)
    if up.returncode != 0:
        raise SystemExit(f"scripts/slurm up failed: {up.stdout}{up.stderr}")
    everyone = [f"{USER_PREFIX}{i:03d}" for i in range(args.jobs)]
    for name in everyone:  # the jobs run as these accounts, with homes (the jobs' output)
        run(["userdel", "-r", "-f", name], 60)
        run(["useradd", "-m", "-s", "/bin/bash", name], 60).check_returncode()
    try:
        measure_all(args, everyone)
    finally:
        wait_no_jobs(everyone)  # nothing of theirs runs any more: their accounts can go
        for name in everyone:
            run(["userdel", "-r", "-f", name], 60)


def measure_all(args: argparse.Namespace, everyone: list[str]) -> None:
    vers = versions()
    log("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    started = time.time()
    figs: dict[str, Figures] = {}
    for kind in args.only or HUBS:
        figs[kind] = run_hub(kind, args, everyone)
        print("\n" + table(figs, args) + "\n", flush=True)  # kept even if what follows fails
    text = render(figs, args, vers)
    print(text)
    if args.json:
        data = {"versions": vers, "machine": machine(), "args": vars(args) | {"json": None}}
        data["hubs"] = {k: {"values": f.values, "notes": f.notes} for k, f in figs.items()}
        args.json.write_text(json.dumps(data, indent=1, default=str))
    if not args.no_write and not args.only:
        for doc in ("benchmarks.md", "slurm.md"):
            write_doc(text, CHECKOUT / "docs" / doc)
    log(f"done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
