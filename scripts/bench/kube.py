"""Kubernetes mode of the benchmark: JupyterHub 6.1.1 + jupyterhub-kubespawner 7.1.0 against
minihub's Kubernetes spawner, on the same one-node cluster (scripts/kube/cluster), same image,
one run, each hub in a fresh namespace of its own.

Run as root: sudo /opt/minihub/venv/bin/python scripts/bench/kube.py [--pods 50] [--json out.json]

Three hubs, one after the other: JupyterHub + KubeSpawner + configurable-http-proxy (its own
venv under /opt/minihub-bench/kubehub, outside the cluster with the admin kubeconfig);
minihub with `[spawner] class = "kubernetes"` and its own server; and minihub with
jupyterhub-singleuser from the same image. Pods use hostNetwork and imagePullPolicy Never (no
pod network, no registry here); each hub connects to 127.0.0.1 and a port per pod. Loopback
only; every wait is bounded. Prints one markdown table and writes it into docs/benchmarks.md
between the bench-kube markers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
import client
from client import Client, SpawnResult
from common import (
    BENCH_DIR,
    CHP_BIN,
    CHP_DIR,
    children,
    cmdline,
    free_port,
    log,
    machine,
    median,
    pct,
    pss_kib,
    replace_block,
)

CHECKOUT = Path(__file__).resolve().parents[2]
KUBE_SCRIPTS = CHECKOUT / "scripts" / "kube"
SESSIONS = Path("/run/minihub-kube/sessions")  # users of the cluster (tests/kube_cluster.py)
KUBE_VENV = BENCH_DIR / "kubehub"  # JupyterHub + KubeSpawner, apart from minihub's venv
INCUMBENT = ["jupyterhub==6.1.1", "jupyterhub-kubespawner==7.1.0"]
ADMIN = "kbadmin"
# The same requests and limits for every hub: small guarantees so 50 pods fit on 2 CPUs.
RESOURCES = {"mem_limit": "512M", "mem_guarantee": "64M", "cpu_limit": 1, "cpu_guarantee": 0.01}
HUBS = ("jupyterhub", "minihub", "minihub-js")
TITLES = {
    "jupyterhub": "JupyterHub + KubeSpawner",
    "minihub": "minihub (its server)",
    "minihub-js": "minihub (jupyterhub-singleuser)",
}


def run(cmd: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)


# --------------------------------------------------------------------------- the cluster


@dataclass
class Cluster:
    """The running test cluster: kubectl with the admin kubeconfig, the user image."""

    env: dict[str, str]
    image: str = "minihub-kube/user:test"

    was_up: bool = True

    @classmethod
    def find(cls) -> Cluster:
        """The cluster, brought up if it is not (bounded), and this run registered as one of
        its sessions so a test session ending meanwhile does not take it down (as
        tests/kube_cluster.py's fixture does for its own sessions)."""
        was_up = run(["bash", str(KUBE_SCRIPTS / "cluster"), "status"], 30).returncode == 0
        if not was_up:
            log("bringing the cluster up (scripts/kube/cluster up) ...")
            up = run(["bash", str(KUBE_SCRIPTS / "cluster"), "up"], 300)
            if up.returncode != 0:
                raise SystemExit(f"scripts/kube/cluster up failed:\n{up.stdout}{up.stderr}")
        SESSIONS.mkdir(parents=True, exist_ok=True)
        (SESSIONS / str(os.getpid())).touch()
        env = dict(os.environ)
        for line in run(["bash", str(KUBE_SCRIPTS / "cluster"), "env"], 30).stdout.splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            if key != "PATH":
                env[key] = value
        return cls(env, was_up=was_up)

    def release(self) -> None:
        """Unregister; down only a cluster this run brought up that no session still uses."""
        (SESSIONS / str(os.getpid())).unlink(missing_ok=True)
        live = [p for p in SESSIONS.glob("*") if Path(f"/proc/{p.name}").exists()]
        if not self.was_up and not live:
            log("taking the cluster down again (this run brought it up)")
            run(["bash", str(KUBE_SCRIPTS / "cluster"), "down"], 120)

    @property
    def kubeconfig(self) -> str:
        return self.env["KUBECONFIG"]

    def kubectl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        kubectl = str(Path(self.env["MINIHUB_KUBE_BIN"]) / "kubectl")
        return run([kubectl, "--kubeconfig", self.kubeconfig, *args], timeout)

    def build_image(self) -> None:
        log("building the user image (scripts/kube/images) ...")
        out = run(["bash", str(KUBE_SCRIPTS / "images")], 900, env=self.env)
        if out.returncode != 0:
            raise SystemExit(f"scripts/kube/images failed:\n{out.stdout}{out.stderr}")
        self.image = out.stdout.strip().splitlines()[-1]

    def namespace(self, prefix: str) -> str:
        name = f"{prefix}-{secrets.token_hex(3)}"
        self.kubectl("create", "namespace", name)
        deadline = time.monotonic() + 30  # admission refuses pods until the default SA exists
        while self.kubectl("-n", name, "get", "sa", "default").returncode != 0:
            if time.monotonic() > deadline:
                raise SystemExit(f"namespace {name}: no default ServiceAccount after 30 s")
            time.sleep(0.2)
        return name

    def delete_namespace(self, name: str) -> None:
        self.kubectl("-n", name, "delete", "pods", "--all", "--grace-period=0", "--force")
        self.kubectl("delete", "namespace", name, "--wait=false")

    def pods(self, ns: str) -> dict[str, dict[str, Any]]:
        """name -> {uid, restarts, phase} of the namespace's pods."""
        out = self.kubectl("-n", ns, "get", "pods", "-o", "json")
        if out.returncode != 0:
            raise RuntimeError(f"kubectl get pods: {out.stderr}")
        pods = {}
        for p in json.loads(out.stdout)["items"]:
            statuses = p["status"].get("containerStatuses") or [{}]
            pods[p["metadata"]["name"]] = {
                "uid": p["metadata"]["uid"],
                "restarts": sum(s.get("restartCount", 0) for s in statuses),
                "phase": p["status"].get("phase"),
            }
        return pods

    def wait_no_pods(self, ns: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while self.pods(ns):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ns}: pods still there after {timeout:.0f} s")
            time.sleep(0.5)

    def image_versions(self) -> str:
        code = (
            "import importlib.metadata as m\nprint(', '.join(p + ' ' + m.version(p) for p in "
            "('jupyterhub', 'jupyter_server', 'minihub')))"
        )
        out = run(
            ["/usr/bin/docker", "run", "--rm", "--network", "none", "--entrypoint",
             "/opt/venv/bin/python", self.image, "-c", code],
            120, env=self.env,
        )  # fmt: skip
        return out.stdout.strip() or f"unknown ({out.stderr.strip()[:100]})"

    def server_version(self) -> str:
        out = self.kubectl("version", "-o", "json")
        try:
            return str(json.loads(out.stdout)["serverVersion"]["gitVersion"])
        except (ValueError, KeyError):
            return "unknown"


# --------------------------------------------------------------------------- installs


def install_incumbent() -> None:
    """JupyterHub 6.1.1 + KubeSpawner 7.1.0 in a venv of their own; CHP with npm (shared with
    run.py's install)."""
    BENCH_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    if not (KUBE_VENV / "bin" / "python").exists():
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(KUBE_VENV)], check=True, timeout=120)
    if versions_of_incumbent().get("jupyterhub-kubespawner") != "7.1.0":
        log(f"installing {' '.join(INCUMBENT)} into {KUBE_VENV} ...")
        pip = [str(KUBE_VENV / "bin" / "pip"), "install", "-q", *INCUMBENT]
        subprocess.run(pip, check=True, timeout=900)
    if not CHP_BIN.exists():
        log(f"installing configurable-http-proxy with npm into {CHP_DIR} ...")
        npm = ["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(CHP_DIR)]
        subprocess.run([*npm, "configurable-http-proxy"], check=True, timeout=600)


def versions_of_incumbent() -> dict[str, str]:
    code = (
        "import importlib.metadata as m\nfor p in ('jupyterhub', 'jupyterhub-kubespawner', "
        "'kubernetes_asyncio', 'tornado'):\n  print(p, m.version(p))"
    )
    out = run([str(KUBE_VENV / "bin" / "python"), "-c", code], 60).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def versions(cluster: Cluster) -> dict[str, str]:
    found = versions_of_incumbent()
    found["configurable-http-proxy"] = run([str(CHP_BIN), "--version"], 60).stdout.strip()
    code = "import importlib.metadata as m; print(m.version('minihub'), m.version('lightkube'))"
    mh = run([sys.executable, "-c", code], 60).stdout.split()
    found["minihub"], found["lightkube"] = (mh + ["?", "?"])[:2]
    found["Kubernetes"] = cluster.server_version()
    found["image"] = f"{cluster.image} ({cluster.image_versions()})"
    return found


# --------------------------------------------------------------------------- the hubs

JH_CONFIG = """
import socket
c = get_config()  # noqa
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
c.JupyterHub.cleanup_servers = False  # a restart keeps the pods (the restart figure)
c.JupyterHub.concurrent_spawn_limit = 100
c.JupyterHub.log_level = "WARN"
c.JupyterHub.services = [{{"name": "bench", "api_token": "{token}"}}]
c.JupyterHub.load_roles = [{{"name": "bench", "services": ["bench"],
    "scopes": ["admin:users", "admin:servers", "access:servers", "tokens", "list:users"]}}]
c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
c.KubeSpawner.namespace = "{ns}"
c.KubeSpawner.image = "{image}"
c.KubeSpawner.image_pull_policy = "Never"
c.KubeSpawner.ip = "127.0.0.1"
c.KubeSpawner.pod_connect_ip = "127.0.0.1"
c.KubeSpawner.extra_pod_config = {{"hostNetwork": True}}
c.KubeSpawner.delete_grace_period = 1
c.KubeSpawner.start_timeout = {start_timeout}
# From a running pod to its server answering: 30 s by default, which 20 jupyterhub-singleuser
# starting at once on 2 CPUs exceed; minihub's start_timeout bounds the whole start alike.
c.KubeSpawner.http_timeout = {start_timeout}
c.KubeSpawner.mem_limit = "{mem_limit}"
c.KubeSpawner.mem_guarantee = "{mem_guarantee}"
c.KubeSpawner.cpu_limit = {cpu_limit}
c.KubeSpawner.cpu_guarantee = {cpu_guarantee}

# hostNetwork pods share the node's ports: one free port per pod, as the issue describes.
_next_port = iter(range(42000, 43000))


def _free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_port(spawner):
    spawner.port = next(p for p in _next_port if _free(p))


c.KubeSpawner.pre_spawn_hook = pick_port
"""

MH_CONFIG = """
[hub]
ip = "127.0.0.1"
port = {port}
data_dir = "{work}/data"
connect_url = "http://127.0.0.1:{port}"
log_level = "WARNING"
cleanup_servers = false
[auth]
authenticator = "native"
[spawner]
class = "kubernetes"
server = "{server}"
start_timeout = {start_timeout}
concurrent_spawn_limit = 100
[kubernetes]
kubeconfig = "{kubeconfig}"
namespace = "{ns}"
image = "{image}"
image_pull_policy = "Never"
ip = "127.0.0.1"
pod_connect_ip = "127.0.0.1"
host_port_range = "41000-41999"
extra_pod_config = {{ hostNetwork = true }}
delete_grace_period = 1
mem_limit = "{mem_limit}"
mem_guarantee = "{mem_guarantee}"
cpu_limit = {cpu_limit}
cpu_guarantee = {cpu_guarantee}
"""


@dataclass
class Hub:
    """One hub under test: a command started (and restarted) in its own work directory."""

    kind: str
    ns: str
    port: int
    token: str
    work: Path
    cmd: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0  # perf_counter just before the last Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> None:
        with open(self.work / "hub.log", "ab") as logf:
            self.started_at = time.perf_counter()
            self.proc = subprocess.Popen(
                self.cmd, cwd=self.work, env=self.env, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        if wait:
            self.wait_up(120)

    def wait_up(self, timeout: float) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}: {self.tail()}")
            try:  # 200 from the hub's API, not a 404 from a CHP with no route to it yet
                urllib.request.urlopen(f"{self.url}/hub/api/", timeout=2)
                return
            except OSError:  # refused, or an HTTPError
                time.sleep(0.1)
        raise RuntimeError(f"{self.kind} did not answer in {timeout:.0f} s: {self.tail()}")

    def stop(self) -> None:
        """SIGTERM (the hub stops its CHP, not the pods), SIGKILL to the group after 60 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def pids(self) -> dict[str, int]:
        """The hub process; CHP (JupyterHub's child) apart; any other root helper."""
        assert self.proc is not None
        found = {"hub": self.proc.pid}
        todo = children(self.proc.pid)
        while todo:
            pid = todo.pop()
            name = "proxy" if "configurable-http-proxy" in cmdline(pid) else f"helper {pid}"
            found[name] = pid
            todo += children(pid)
        return found

    def tail(self, lines: int = 30) -> str:
        text = (self.work / "hub.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def make_jupyterhub(cluster: Cluster, ns: str, args: argparse.Namespace) -> Hub:
    work = Path(tempfile.mkdtemp(prefix="mhbench-kube-jh-"))
    port, token = free_port(), secrets.token_hex(24)
    (work / "jupyterhub_config.py").write_text(
        JH_CONFIG.format(
            port=port, hub_port=free_port(), api_port=free_port(), chp=CHP_BIN, work=work,
            password=secrets.token_hex(8), token=token, ns=ns, image=cluster.image,
            start_timeout=args.timeout, **RESOURCES,
        )
    )  # fmt: skip
    env = dict(cluster.env, PATH=f"{KUBE_VENV}/bin:/usr/local/bin:/usr/bin:/bin")
    cmd = [str(KUBE_VENV / "bin" / "jupyterhub"), "-f", str(work / "jupyterhub_config.py")]
    return Hub("jupyterhub", ns, port, token, work, cmd, env)


def make_minihub(cluster: Cluster, ns: str, args: argparse.Namespace, server: str) -> Hub:
    work = Path(tempfile.mkdtemp(prefix="mhbench-kube-mh-"))
    port = free_port()
    cfg = work / "minihub.toml"
    cfg.write_text(
        MH_CONFIG.format(
            port=port, work=work, server=server, start_timeout=args.timeout,
            kubeconfig=cluster.kubeconfig, ns=ns, image=cluster.image, **RESOURCES,
        )
    )  # fmt: skip
    cmd = [sys.executable, "-m", "minihub", "-f", str(cfg)]
    pw = secrets.token_hex(8) + "\n"
    for step in (["user", "add", ADMIN, "--admin"], ["token", ADMIN]):
        out = run([*cmd, *step], 60, input=pw, cwd=work, env=cluster.env)
        if out.returncode != 0:
            raise SystemExit(f"minihub {' '.join(step)} failed: {out.stderr}")
    token = out.stdout.strip().splitlines()[-1]
    kind = "minihub" if server == "minihub" else "minihub-js"
    return Hub(kind, ns, port, token, work, cmd, dict(cluster.env))


# --------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_split(hub: Hub) -> dict[str, float]:
    """CPU seconds so far: the hub (with its root helpers) and the proxy apart."""
    pids = hub.pids()
    proxy = cpu_seconds(pids.pop("proxy")) if "proxy" in pids else 0.0
    return {"hub": sum(cpu_seconds(p) for p in pids.values()), "proxy": proxy}


def kube_test_runs() -> list[str]:
    """pytest runs of the Kubernetes tests (CPU noise on these 2 cores), by pid."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            line = cmdline(int(entry))
            if "pytest" in line and "test_kube" in line:
                found.append(entry)
    return found


# --------------------------------------------------------------------------- measuring


@dataclass
class Figures:
    values: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def put(self, key: str, value: float) -> None:
        self.values[key] = value
        log(f"  {key}: {value:.4g}")


# Each user's own API token (made through the REST API), as a user reaches their server.
USER_TOKENS: dict[str, str] = {}


async def make_user_tokens(c: Client, names: list[str]) -> None:
    for n in names:
        async with c.session.post(c.api(f"/users/{n}/tokens"), json={"note": "bench"}) as r:
            if r.status not in (200, 201):
                raise RuntimeError(f"token for {n}: {r.status} {(await r.text())[:200]}")
            USER_TOKENS[n] = (await r.json())["token"]


async def answers(c: Client, name: str) -> bool:
    """Whether GET /user/NAME/api/status answers 200 through the hub's proxy, once."""
    try:
        async with c.session.get(
            c.user_url(name, "api/status"),
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=10),
            headers={"Authorization": f"token {USER_TOKENS[name]}"},
        ) as r:
            await r.read()
            return r.status == 200
    except (TimeoutError, aiohttp.ClientError):
        return False


async def answer(c: Client, name: str, deadline: float) -> bool:
    """Until the server answers through the hub's proxy (bounded)."""
    while time.perf_counter() < deadline:
        if await answers(c, name):
            return True
        await asyncio.sleep(0.1)
    return False


async def spawn_answer(c: Client, name: str, timeout: float) -> SpawnResult:
    """POST the server, follow its progress, then until it answers through the proxy."""
    t0 = time.perf_counter()
    r = await c.spawn(name)
    if r.ok and not await answer(c, name, t0 + timeout):
        r.ok, r.error = False, "ready, but did not answer through the proxy"
    r.seconds = time.perf_counter() - t0
    return r


async def stop_all(c: Client, who: list[str]) -> None:
    sem = asyncio.Semaphore(20)

    async def one(n: str) -> None:
        async with sem:
            try:
                await c.stop(n)
            except Exception as e:  # noqa: BLE001 - keep stopping the others
                log(f"stop {n}: {e}")

    await asyncio.gather(*(one(n) for n in who))


def note_failures(fig: Figures, what: str, results: list[SpawnResult]) -> None:
    bad = [r for r in results if not r.ok]
    if bad:
        b = bad[0]
        fig.notes.append(
            f"{what}: {len(bad)} failed, e.g. {b.name} HTTP {b.status} after {b.seconds:.1f} s: "
            f"{b.error[:160]}"
        )


async def sequential(c: Client, hub: Hub, fig: Figures, who: list[str], timeout: float) -> None:
    cpu0 = cpu_split(hub)
    results = []
    for n in who:
        results.append(await spawn_answer(c, n, timeout))
        await c.stop(n)
    cpu1 = cpu_split(hub)
    ok = [r.seconds for r in results if r.ok]
    fig.put("seq_median", median(ok))
    fig.put("seq_p95", pct(ok, 95))
    fig.put("seq_failures", len(results) - len(ok))
    fig.put("seq_cpu_hub", (cpu1["hub"] - cpu0["hub"]) / len(who))
    fig.put("seq_cpu_proxy", (cpu1["proxy"] - cpu0["proxy"]) / len(who))
    note_failures(fig, "sequential", results)


async def burst(c: Client, hub: Hub, fig: Figures, who: list[str], timeout: float) -> list[str]:
    """All of `who` at once; wall until every one answers (or fails). Those that answered."""
    k = len(who)
    cpu0 = cpu_split(hub)
    t0 = time.perf_counter()
    results = await asyncio.gather(*(spawn_answer(c, n, timeout) for n in who))
    fig.put(f"burst{k}_wall", time.perf_counter() - t0)
    cpu1 = cpu_split(hub)
    ok = [r.seconds for r in results if r.ok]
    fig.put(f"burst{k}_median", median(ok))
    fig.put(f"burst{k}_failures", k - len(ok))
    fig.put(f"burst{k}_cpu_hub", (cpu1["hub"] - cpu0["hub"]) / k)
    fig.put(f"burst{k}_cpu_proxy", (cpu1["proxy"] - cpu0["proxy"]) / k)
    note_failures(fig, f"{k} at once", results)
    return [r.name for r in results if r.ok]


def memory(hub: Hub, fig: Figures, key: str) -> None:
    pids = hub.pids()
    proxy = pids.pop("proxy", 0)
    fig.put(f"{key}_pss_hub", sum(pss_kib(p) for p in pids.values()) / 1024)
    fig.put(f"{key}_rss_hub", sum(rss_kib(p) for p in pids.values()) / 1024)
    fig.put(f"{key}_pss_proxy", pss_kib(proxy) / 1024 if proxy else 0.0)
    fig.put(f"{key}_rss_proxy", rss_kib(proxy) / 1024 if proxy else 0.0)


async def restart(
    c: Client, cluster: Cluster, hub: Hub, fig: Figures, who: list[str], timeout: float
) -> None:
    """Stop the hub with its pods running, start it again: from the new process's start until
    every server answers through it; and no pod recreated or restarted."""
    before = cluster.pods(hub.ns)
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
    after = cluster.pods(hub.ns)
    changed = [n for n, p in before.items() if after.get(n, {}).get("uid") != p["uid"]]
    restarted = [n for n, p in after.items() if p["restarts"] > before.get(n, p)["restarts"]]
    fig.put("restart_pods_before", len(before))
    fig.put("restart_pods_recreated", len(changed) + len(set(after) - set(before)))
    fig.put("restart_containers_restarted", len(restarted))


async def measure(cluster: Cluster, hub: Hub, fig: Figures, args: argparse.Namespace) -> None:
    client.SPAWN_TIMEOUT = args.timeout
    everyone = [f"kb{i:03d}" for i in range(args.pods)]
    async with Client(hub.url, hub.token) as c:
        await c.create_users(everyone)
        await make_user_tokens(c, everyone)
        await asyncio.sleep(3)
        memory(hub, fig, "rest")
        await sequential(c, hub, fig, everyone[: args.sequential], args.timeout)
        cluster.wait_no_pods(hub.ns)
        if args.burst < args.pods:
            await burst(c, hub, fig, everyone[: args.burst], args.timeout)
            await stop_all(c, everyone[: args.burst])
            cluster.wait_no_pods(hub.ns)
        running = await burst(c, hub, fig, everyone, args.timeout)
        await asyncio.sleep(5)  # let servers finish starting before reading memory
        fig.put("running_pods", len(cluster.pods(hub.ns)))
        memory(hub, fig, "pods")
        # the restart is timed over the servers that did start (a failed spawn has no pod)
        await restart(c, cluster, hub, fig, running, args.timeout)
        await stop_all(c, everyone)
        cluster.wait_no_pods(hub.ns)  # their host ports are free for the next hub


def run_hub(cluster: Cluster, kind: str, args: argparse.Namespace) -> Figures:
    quiet_wait(args.wait_quiet)
    noisy = kube_test_runs()
    ns = cluster.namespace(
        {"jupyterhub": "bench-jh", "minihub": "bench-mh"}.get(kind, "bench-mhjs")
    )
    if kind == "jupyterhub":
        hub = make_jupyterhub(cluster, ns, args)
    else:
        hub = make_minihub(cluster, ns, args, "minihub" if kind == "minihub" else
                           "jupyterhub-singleuser")  # fmt: skip
    log(f"measuring {TITLES[kind]} in namespace {ns} ({hub.work}) ...")
    fig = Figures()  # what was measured before a failing step is kept
    try:
        hub.start()
        asyncio.run(measure(cluster, hub, fig, args))
    except Exception as e:  # noqa: BLE001 - the failure is a result; the other hubs still run
        log(f"{kind}: step failed: {e!r}; hub log ends:\n{hub.tail()}")
        fig.notes.append(f"a step failed: {e!r}"[:300])
    finally:
        hub.stop()
        cluster.delete_namespace(ns)
        if not args.keep:
            subprocess.run(["rm", "-rf", str(hub.work)], check=False, timeout=60)
    if noisy or kube_test_runs():
        fig.notes.append("Kubernetes tests (pytest) were running during this hub's run")
    return fig


def quiet_wait(limit: float) -> None:
    """Wait (at most `limit` s) until no Kubernetes test run shares the CPUs."""
    deadline = time.monotonic() + limit
    while kube_test_runs() and time.monotonic() < deadline:
        log(f"Kubernetes tests running (pids {', '.join(kube_test_runs())}); waiting ...")
        time.sleep(15)


# --------------------------------------------------------------------------- the table

# (key, label, scale, unit, lower is better); keys with "{h}" are the hub's + the proxy's sum.
ROWS = [
    ("seq_median", "spawn POST → answering through the proxy, sequential, median", 1, "s", True),
    ("seq_p95", "spawn POST → answering through the proxy, sequential, p95", 1, "s", True),
    ("seq_failures", "sequential spawns: failures", 1, "", True),
    ("burst{b}_wall", "{b} spawns at once: wall until all answer", 1, "s", True),
    ("burst{b}_median", "{b} spawns at once: median per spawn", 1, "s", True),
    ("burst{b}_failures", "{b} spawns at once: failures", 1, "", True),
    ("burst{p}_wall", "{p} spawns at once: wall until all answer", 1, "s", True),
    ("burst{p}_median", "{p} spawns at once: median per spawn", 1, "s", True),
    ("burst{p}_failures", "{p} spawns at once: failures", 1, "", True),
    ("rest_pss_all", "hub + proxy at rest (users created), PSS", 1, "MiB", True),
    ("pods_pss_all", "hub + proxy with {p} running pods, PSS", 1, "MiB", True),
    ("pods_rss_all", "hub + proxy with {p} running pods, RSS", 1, "MiB", True),
    ("pods_pss_proxy", "  of which CHP, PSS", 1, "MiB", True),
    ("burst{p}_cpu_all", "hub + proxy CPU per spawn ({p} at once)", 1000, "ms", True),
    ("burst{p}_cpu_proxy", "  of which CHP", 1000, "ms", True),
    ("seq_cpu_all", "hub + proxy CPU per spawn + stop (sequential)", 1000, "ms", True),
    ("restart_servers", "restart: servers running before it", 1, "", False),
    ("restart_all", "restart with {p} pods: new process → all answer", 1, "s", True),
    ("restart_first", "restart with {p} pods: new process → first answers", 1, "s", True),
    ("restart_missing", "restart: servers not answering in time", 1, "", True),
    ("restart_pods_recreated", "restart: pods recreated (uid changed)", 1, "", True),
]


def with_sums(f: Figures) -> dict[str, float]:
    v = dict(f.values)
    for key in [k for k in v if k.endswith("_hub")]:
        base = key.removesuffix("_hub")
        v[base + "_all"] = v[key] + v.get(base + "_proxy", 0.0)
    return v


def fmt(v: float | None, scale: float, unit: str) -> str:
    if v is None or math.isnan(v):
        return "n/a"
    x = v * scale
    text = f"{x:,.0f}" if abs(x) >= 100 or float(x).is_integer() else f"{x:.3g}"
    return f"{text} {unit}".strip()


def ratio(jh: float | None, mh: float | None) -> str:
    if jh is None or mh is None or math.isnan(jh) or math.isnan(mh):
        return "n/a"
    if jh == mh:
        return "="
    return "∞" if mh == 0 else f"{jh / mh:.1f}×"


def table(figs: dict[str, Figures], args: argparse.Namespace) -> str:
    vals = {k: with_sums(f) for k, f in figs.items()}
    jh = vals.get("jupyterhub", {})
    cols = [k for k in HUBS if k in vals]
    mhs = [k for k in cols if k != "jupyterhub"]
    head = ["figure", *(TITLES[k] for k in cols), *(f"{TITLES[k]}: better by" for k in mhs)]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for key, label, scale, unit, _lower in ROWS:
        key = key.format(b=args.burst, p=args.pods)
        cells = [fmt(vals[k].get(key), scale, unit) for k in cols]
        if key.endswith("_proxy"):
            cells = [c if k == "jupyterhub" else "(in the hub)" for k, c in zip(cols, cells)]
            ratios = ["" for _ in mhs]
        elif key.endswith(("failures", "missing", "recreated", "servers")):
            ratios = ["" for _ in mhs]
        else:
            ratios = [ratio(jh.get(key), vals[k].get(key)) for k in mhs]
        row = [label.format(b=args.burst, p=args.pods), *cells, *ratios]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


BEGIN = "<!-- bench-kube:begin (written by scripts/bench/kube.py) -->"
END = "<!-- bench-kube:end -->"


def write_doc(text: str) -> None:
    replace_block(CHECKOUT / "docs" / "benchmarks.md", BEGIN, END, text)


def render(figs: dict[str, Figures], args: argparse.Namespace, vers: dict[str, str]) -> str:
    notes = [f"- {TITLES[k]}: {n}" for k, f in figs.items() for n in f.notes]
    parts = [
        f"### Latest run: {time.strftime('%Y-%m-%d')}\n",
        f"Machine: {machine()}.  ",
        f"Versions: {', '.join(f'{k} {v}' for k, v in vers.items())}.  ",
        (
            f"Counts: {args.sequential} sequential spawns (each stopped after), {args.burst} "
            f"and {args.pods} at once, restart with {args.pods} running.\n"
        ),
        table(figs, args),
        "",
        *(["Notes:", "", *notes, ""] if notes else []),
    ]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=50, help="spawns at once, then restart")
    parser.add_argument("--burst", type=int, default=20, help="the smaller spawns-at-once count")
    parser.add_argument("--sequential", type=int, default=10, help="sequential spawns")
    parser.add_argument("--timeout", type=float, default=180, help="per spawn and restart, s")
    parser.add_argument("--only", action="append", choices=HUBS, help="measure these hubs only")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--no-write", action="store_true", help="leave docs/benchmarks.md")
    parser.add_argument("--no-image", action="store_true", help="do not rebuild the user image")
    parser.add_argument("--keep", action="store_true", help="keep the hubs' work directories")
    parser.add_argument(
        "--wait-quiet", type=float, default=900, help="wait this long for Kubernetes tests to end"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (the cluster's kubeconfig and daemons are root's)")
    if args.sequential > args.pods or args.burst > args.pods:
        raise SystemExit("--sequential and --burst must be at most --pods")
    install_incumbent()
    cluster = Cluster.find()
    try:
        measure_all(cluster, args)
    finally:
        cluster.release()


def measure_all(cluster: Cluster, args: argparse.Namespace) -> None:
    if not args.no_image:
        cluster.build_image()
    vers = versions(cluster)
    log("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    started = time.time()
    figs: dict[str, Figures] = {}
    for kind in args.only or HUBS:
        figs[kind] = run_hub(cluster, kind, args)
        print("\n" + table(figs, args) + "\n", flush=True)  # kept even if what follows fails
    text = render(figs, args, vers)
    print(text)
    if args.json:
        data = {"versions": vers, "machine": machine(), "args": vars(args) | {"json": None}}
        data["hubs"] = {k: {"values": f.values, "notes": f.notes} for k, f in figs.items()}
        args.json.write_text(json.dumps(data, indent=1, default=str))
    if not args.no_write and not args.only:
        write_doc(text)
    log(f"done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
