"""Benchmark minihub's proxy against a direct connection and configurable-http-proxy.

Everything runs on loopback, each server in its own process. Run it with the venv's python:
    /opt/minihub/venv/bin/python scripts/bench_proxy.py [--runs 3] [--mode both]
It prints markdown tables (medians over the runs): GET requests/s, p50/p99 latency, the
proxy's and the server's CPU per request, and websocket round trips. Load generator, proxy
and server share the machine's CPUs, so on a busy machine requests/s and p99 swing from run
to run; CPU per request is the steadier figure. Two setups:
- mock: an aiohttp upstream shaped like a user server, behind a hub reduced to its proxy
  route (minihub.proxy alone), behind configurable-http-proxy (CHP), and direct;
- real (root only): the real hub (`python -m minihub`, native auth, an API token) with the
  real user server it spawned for a system account, that server behind CHP (which adds
  the server's secret like the hub does), and direct. Websocket: kernel_info round trips
  to the server's kernel over its channels websocket.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SECRET = "bench-secret"
STATUS_PATH = "/user/x/api/status"
WS_PATH = "/user/x/ws"
CHP_VERSION = "configurable-http-proxy@4"
# The real-mode websocket round trip: "kernel_info" (default) or "execute" (1+1, until the
# reply and the kernel's return to idle, as scripts/bench/ measures it).
KERNEL_MSG = os.environ.get("BENCH_KERNEL_MSG", "kernel_info")
CHP_PREINSTALLED = Path("/opt/minihub-bench/chp/node_modules/.bin/configurable-http-proxy")
BENCH_USER = "mhpxbench"  # the system account whose real server the real setup measures
CHP_NAME = "configurable-http-proxy"


# ------------------------------------------------------------------ the servers (child processes)


def serve_upstream(port: int) -> None:
    """An aiohttp app shaped like a user server: GET api/status and a websocket echo."""
    from aiohttp import web

    body = json.dumps(
        {
            "started": "2024-01-01T00:00:00Z",
            "last_activity": "2024-01-01T00:00:00Z",
            "connections": 0,
            "kernels": 0,
        }
    ).encode()

    @web.middleware
    async def secret(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("X-Minihub-Secret") != SECRET:
            return web.json_response({"message": "Forbidden"}, status=403)
        response: web.StreamResponse = await handler(request)
        return response

    async def status(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            await sock.send_str(msg.data)
        return sock

    app = web.Application(middlewares=[secret])
    app.router.add_get(STATUS_PATH, status)
    app.router.add_get(WS_PATH, ws)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def serve_minihub_proxy(port: int, upstream_port: int) -> None:
    """A hub reduced to its proxy route: normalise the path, forward with the secret.
    It runs on the event loop the hub would use (minihub.serve.run)."""
    from aiohttp import web

    from minihub.proxy import Proxy, Upstream, normalise_path
    from minihub.serve import run as run_loop

    upstream = Upstream("127.0.0.1", upstream_port, SECRET)
    key = web.AppKey("proxy", Proxy)

    async def route(request: web.Request) -> web.StreamResponse:
        path = normalise_path(request.raw_path)
        return await request.app[key].forward(
            request,
            upstream,
            path=path,
            strip_cookies=("minihub-session",),
            on_activity=lambda: None,
        )

    async def proxy_ctx(app: web.Application) -> AsyncIterator[None]:
        app[key] = Proxy()
        yield
        await app[key].close()

    async def main() -> None:
        app = web.Application()
        app.cleanup_ctx.append(proxy_ctx)
        app.router.add_route("*", "/user/{tail:.*}", route)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    run_loop(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server on port {port} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on port {port} after {timeout}s")


def checkout_env(**extra: str) -> dict[str, str]:
    # the checkout's minihub, not whatever version is installed in the venv
    return dict(os.environ, PYTHONPATH=str(ROOT), **extra)


def spawn(args: list[str], port: int, **kw: Any) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, start_new_session=True, env=checkout_env(), **kw
    )
    wait_port(port, proc)
    return proc


def self_cmd(*args: str) -> list[str]:
    return [PY, str(Path(__file__).resolve()), *args]


def find_chp(workdir: Path) -> str | None:
    """configurable-http-proxy on PATH or in the side-by-side benchmark's prefix, else
    installed with npm into a temporary prefix."""
    found = shutil.which("configurable-http-proxy")
    if found:
        return found
    if CHP_PREINSTALLED.exists():
        return str(CHP_PREINSTALLED)
    if not shutil.which("npm"):
        print("npm not found: skipping configurable-http-proxy", file=sys.stderr)
        return None
    print(f"installing {CHP_VERSION} with npm into {workdir} ...", file=sys.stderr)
    res = subprocess.run(
        [
            "npm",
            "install",
            "--silent",
            "--no-audit",
            "--no-fund",
            "--prefix",
            str(workdir),
            CHP_VERSION,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    binary = workdir / "node_modules" / ".bin" / "configurable-http-proxy"
    if res.returncode != 0 or not binary.exists():
        print(
            f"npm install failed, skipping configurable-http-proxy:\n{res.stderr[-2000:]}",
            file=sys.stderr,
        )
        return None
    return str(binary)


def start_chp(chp: str, target: str, secret: str) -> tuple[subprocess.Popen[bytes], int]:
    port, api_port = free_port(), free_port()
    proc = spawn(
        [
            chp,
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--api-ip",
            "127.0.0.1",
            "--api-port",
            str(api_port),
            "--default-target",
            target,
            "--custom-header",
            f"X-Minihub-Secret:{secret}",
            "--log-level",
            "error",
        ],
        port,
    )
    return proc, port


# ------------------------------------------------------------------ what is measured


@dataclass
class Target:
    """One way to reach a server: a port, the request to send, the process to charge."""

    name: str
    group: str
    port: int
    pid: int | None
    path: str
    headers: dict[str, str]
    ws: Callable[[Target, int, float], Coroutine[Any, Any, Result]]
    server_pid: int | None = None  # the user server (or mock upstream) behind it

    def request(self) -> bytes:
        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: 127.0.0.1:{self.port}",
            "Accept: application/json",
            *(f"{k}: {v}" for k, v in self.headers.items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Result:
    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    cpu: float = float("nan")  # CPU seconds the proxy process used during the run
    server_cpu: float = float("nan")  # and the server behind it

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_per_req(self) -> float:
        return self.cpu / self.requests * 1e6 if self.requests else float("nan")

    @property
    def server_cpu_per_req(self) -> float:
        return self.server_cpu / self.requests * 1e6 if self.requests else float("nan")

    def pct(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        s = sorted(self.latencies)
        return s[min(len(s) - 1, int(p / 100 * len(s)))] * 1000


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def http_load(target: Target, total: int, concurrency: int, max_seconds: float) -> Result:
    """`concurrency` keep-alive connections sending GETs until `total` or `max_seconds`."""
    request = target.request()
    latencies: list[float] = []
    counter = {"left": total, "errors": 0}
    deadline = time.perf_counter() + max_seconds

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
        try:
            while counter["left"] > 0 and time.perf_counter() < deadline:
                counter["left"] -= 1
                t0 = time.perf_counter()
                writer.write(request)
                status = await asyncio.wait_for(_read_response(reader), 30)
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    counter["errors"] += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(len(latencies), counter["errors"], time.perf_counter() - start, latencies)


async def ws_echo(target: Target, count: int, max_seconds: float) -> Result:
    """Sequential round trips of a small text message over one websocket to an echo."""
    import aiohttp

    latencies: list[float] = []
    msg = json.dumps({"header": {"msg_type": "kernel_info_request"}, "content": {}})
    deadline = time.perf_counter() + max_seconds
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            f"http://127.0.0.1:{target.port}{WS_PATH}", compress=0, headers=target.headers
        ) as ws,
    ):
        start = time.perf_counter()
        for _ in range(count):
            if time.perf_counter() > deadline:
                break
            t0 = time.perf_counter()
            await ws.send_str(msg)
            await asyncio.wait_for(ws.receive_str(), 30)
            latencies.append(time.perf_counter() - t0)
        return Result(len(latencies), 0, time.perf_counter() - start, latencies)


def kernel_ws(
    prefix: str, kernel_id: str
) -> Callable[[Target, int, float], Coroutine[Any, Any, Result]]:
    """Sequential kernel_info round trips over a real kernel's channels websocket: the
    request, the kernel's busy/idle status messages and the reply all pass the proxy."""

    async def rounds(target: Target, count: int, max_seconds: float) -> Result:
        import aiohttp

        url = (
            f"http://127.0.0.1:{target.port}{prefix}api/kernels/{kernel_id}/channels"
            f"?session_id={uuid.uuid4().hex}"
        )
        latencies: list[float] = []
        deadline = time.perf_counter() + max_seconds
        count = min(count, 500)  # each round trip wakes the kernel
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(url, compress=0, headers=target.headers) as ws,
        ):
            start = time.perf_counter()
            for _ in range(count):
                if time.perf_counter() > deadline:
                    break
                msg_id = uuid.uuid4().hex
                t0 = time.perf_counter()
                await ws.send_str(
                    json.dumps(
                        {
                            "header": {
                                "msg_id": msg_id,
                                "msg_type": f"{KERNEL_MSG}_request",
                                "username": "bench",
                                "session": "bench",
                                "version": "5.3",
                                "date": "",
                            },
                            "parent_header": {},
                            "metadata": {},
                            "channel": "shell",
                            "content": {"code": "1+1", "silent": False}
                            if KERNEL_MSG == "execute"
                            else {},
                        }
                    )
                )
                seen: set[str] = set()
                async with asyncio.timeout(30):
                    while True:  # the reply and, for execute, the kernel back to idle
                        reply = json.loads(await ws.receive_str())
                        if reply["parent_header"].get("msg_id") != msg_id:
                            continue
                        kind = reply.get("msg_type", "")
                        if kind == f"{KERNEL_MSG}_reply" or (
                            kind == "status" and reply["content"].get("execution_state") == "idle"
                        ):
                            seen.add(kind)
                        if f"{KERNEL_MSG}_reply" in seen and (
                            KERNEL_MSG != "execute" or "status" in seen
                        ):
                            break
                latencies.append(time.perf_counter() - t0)
            return Result(len(latencies), 0, time.perf_counter() - start, latencies)

    return rounds


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process: a fair cost measure on a busy or shared machine."""
    if pid is None:
        return float("nan")
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(target: Target, args: argparse.Namespace, warm: bool) -> tuple[Result, Result]:
    if warm:  # connection pools, caches, and node's JIT for configurable-http-proxy
        await http_load(target, min(5000, args.requests), args.concurrency, 15)
    cpu, server_cpu = cpu_seconds(target.pid), cpu_seconds(target.server_pid)
    http = await http_load(target, args.requests, args.concurrency, args.max_seconds)
    http.cpu = cpu_seconds(target.pid) - cpu
    http.server_cpu = cpu_seconds(target.server_pid) - server_cpu
    ws = await target.ws(target, args.ws_messages, args.max_seconds)
    return http, ws


# ------------------------------------------------------------------ the two setups


@dataclass
class Setup:
    targets: list[Target] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)


def setup_mock(s: Setup, chp: str | None) -> None:
    up_port, hub_port = free_port(), free_port()
    s.procs.append(spawn(self_cmd("--serve-upstream", str(up_port)), up_port))
    s.procs.append(spawn(self_cmd("--serve-proxy", str(hub_port), str(up_port)), hub_port))
    # the direct target needs the secret; the proxies replace it with their own
    hdr, up_pid = {"X-Minihub-Secret": SECRET}, s.procs[0].pid
    s.targets += [
        Target("direct to upstream", "mock", up_port, None, STATUS_PATH, hdr, ws_echo, up_pid),
        Target(
            "minihub Proxy", "mock", hub_port, s.procs[-1].pid, STATUS_PATH, hdr, ws_echo, up_pid
        ),
    ]
    if chp:
        proc, port = start_chp(chp, f"http://127.0.0.1:{up_port}", SECRET)
        s.procs.append(proc)
        s.targets.append(
            Target(CHP_NAME, "mock", port, proc.pid, STATUS_PATH, hdr, ws_echo, up_pid)
        )


REAL_TOML = """[hub]
ip = "127.0.0.1"
port = {port}
data_dir = "{work}/data"
cleanup_servers = true
[auth]
authenticator = "native"
"""


def setup_real(s: Setup, chp: str | None, work: Path) -> None:
    """The real hub as installed (default log level: one access-log line per request,
    written to a file) with a native user whose real server it spawns."""
    name = BENCH_USER
    make_account(name)
    s.cleanups.append(lambda: remove_account(name))
    os.chmod(work, 0o755)
    port = free_port()
    toml = work / "minihub.toml"
    toml.write_text(REAL_TOML.format(port=port, work=work))
    hub_cmd = [PY, "-m", "minihub", "-f", str(toml)]
    run: dict[str, Any] = {
        "cwd": work,
        "capture_output": True,
        "text": True,
        "timeout": 60,
        "env": checkout_env(),
    }
    subprocess.run([*hub_cmd, "user", "add", name], input="bench-password-1\n", check=True, **run)
    token = subprocess.run([*hub_cmd, "token", name], check=True, **run).stdout.split()[-1]
    with open(work / "hub.log", "wb") as logf:
        hub = subprocess.Popen(
            hub_cmd,
            cwd=work,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=checkout_env(),
        )
    s.procs.append(hub)
    wait_port(port, hub, 60)
    auth = {"Authorization": f"token {token}"}
    kernel_id = asyncio.run(start_server_and_kernel(port, name, auth))
    host, up_port, secret, up_pid = server_address(work, name)
    prefix = f"/user/{name}/"
    ws = kernel_ws(prefix, kernel_id)
    path = prefix + "api/status"
    s.targets += [
        Target(
            "direct to user server",
            "real",
            up_port,
            None,
            path,
            {"X-Minihub-Secret": secret},
            ws,
            up_pid,
        ),
        Target("minihub hub", "real", port, hub.pid, path, auth, ws, up_pid),
    ]
    if chp:
        proc, cport = start_chp(chp, f"http://{host}:{up_port}", secret)
        s.procs.append(proc)
        s.targets.append(Target(CHP_NAME, "real", cport, proc.pid, path, {}, ws, up_pid))


async def start_server_and_kernel(port: int, name: str, auth: dict[str, str]) -> str:
    import aiohttp

    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(headers=auth) as c:
        r = await c.post(f"{base}/hub/api/users/{name}/server")
        if r.status not in (201, 202):
            raise SystemExit(f"spawn failed: {r.status} {await r.text()}")
        async with asyncio.timeout(60):
            while not (await (await c.get(f"{base}/hub/api/users/{name}")).json())["server"]:
                await asyncio.sleep(0.2)
        r = await c.post(f"{base}/user/{name}/api/kernels", json={})
        if r.status != 201:
            raise SystemExit(f"kernel start failed: {r.status} {await r.text()}")
        return str((await r.json())["id"])


def server_address(work: Path, name: str) -> tuple[str, int, str, int]:
    """Where the hub's user server listens, its secret (derived as the hub does), its pid."""
    sys.path.insert(0, str(ROOT))
    from minihub.auth.secrets import load_or_create_key, server_secret

    db = sqlite3.connect(work / "data" / "minihub.sqlite")
    try:
        host, port, nonce, pid = db.execute(
            "SELECT s.host, s.port, s.nonce, json_extract(s.state, '$.pid') FROM servers s "
            "JOIN users u ON u.id = s.user_id WHERE u.name = ? AND s.name = ''",
            (name,),
        ).fetchone()
    finally:
        db.close()
    key = load_or_create_key(work / "data" / "cookie_secret")
    return host, int(port), server_secret(key, name, nonce), int(pid)


def make_account(name: str) -> None:
    remove_account(name)
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True, capture_output=True)


def remove_account(name: str) -> None:
    """Kill what is left of the account's processes (by pid), then remove it."""
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass
    subprocess.run(["userdel", "-r", "-f", name], check=False, capture_output=True)


# ------------------------------------------------------------------ main


def run(args: argparse.Namespace) -> None:
    s = Setup()
    workdir = Path(tempfile.mkdtemp(prefix="minihub-bench-"))
    try:
        chp = None if args.no_chp else find_chp(workdir)
        if args.mode in ("mock", "both"):
            setup_mock(s, chp)
        if args.mode in ("real", "both"):
            if os.geteuid() != 0:
                print(
                    "not root: skipping the real hub (it spawns as a system user)", file=sys.stderr
                )
            else:
                real = workdir / "real"
                real.mkdir()
                setup_real(s, chp, real)
        results: dict[str, list[tuple[Result, Result]]] = {}
        for i in range(args.runs):
            for t in s.targets:
                print(f"run {i + 1}/{args.runs}: {t.group} {t.name} ...", file=sys.stderr)
                r = loop_run(measure(t, args, warm=i == 0))
                results.setdefault(f"{t.group}\0{t.name}", []).append(r)
                print(
                    f"  {r[0].rps:,.0f} req/s, p99 {r[0].pct(99):.2f} ms, "
                    f"{r[0].cpu_per_req:.0f} µs CPU/req, ws p50 {r[1].pct(50):.3f} ms",
                    file=sys.stderr,
                )
        print_tables(s.targets, results, args)
    finally:
        for p in s.procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in s.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        for cleanup in s.cleanups:
            cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


def loop_run(coro: Coroutine[Any, Any, Any]) -> Any:
    """The load generator on uvloop when installed: it shares the CPUs with the servers."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def med(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


def print_tables(
    targets: list[Target], results: dict[str, list[tuple[Result, Result]]], args: argparse.Namespace
) -> None:
    print(
        f"\nGET <server>/api/status: {args.requests} requests, {args.concurrency} keep-alive "
        f"connections per run; websocket: sequential round trips (mock: echo of a small "
        f"message, real: kernel_info to the kernel). Medians of {args.runs} runs; "
        f"{os.cpu_count()} CPUs, loopback; CPU/req is the proxy process's (for the hub: "
        f"authentication + proxying + access log), server CPU/req the user server's.\n"
    )
    for group in dict.fromkeys(t.group for t in targets):
        rows = {t.name: results[f"{group}\0{t.name}"] for t in targets if t.group == group}
        print(f"**{group}**\n")
        print(
            "| target | req/s | p50 ms | p99 ms | errors | CPU µs/req | server CPU µs/req |"
            " ws p50 ms | ws p99 ms | req/s vs CHP | p99 vs CHP | CPU/req vs CHP |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        stats = {
            name: {
                "rps": med([h.rps for h, _ in runs]),
                "p50": med([h.pct(50) for h, _ in runs]),
                "p99": med([h.pct(99) for h, _ in runs]),
                "err": sum(h.errors for h, _ in runs),
                "cpu": med([h.cpu_per_req for h, _ in runs]),
                "scpu": med([h.server_cpu_per_req for h, _ in runs]),
                "ws50": med([w.pct(50) for _, w in runs]),
                "ws99": med([w.pct(99) for _, w in runs]),
            }
            for name, runs in rows.items()
        }
        chp = stats.get(CHP_NAME)
        for name, st in stats.items():
            vs = "- | - | -"
            if chp:
                cpu = f"{st['cpu'] / chp['cpu']:.2f}x" if not math.isnan(st["cpu"]) else "-"
                vs = f"{st['rps'] / chp['rps']:.2f}x | {st['p99'] / chp['p99']:.2f}x | {cpu}"
            cpu_text = f"{st['cpu']:.0f}" if not math.isnan(st["cpu"]) else "-"
            print(
                f"| {name} | {st['rps']:,.0f} | {st['p50']:.2f} | {st['p99']:.2f} | "
                f"{st['err']} | {cpu_text} | {st['scpu']:.0f} | {st['ws50']:.3f} | "
                f"{st['ws99']:.3f} | {vs} |"
            )
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000, help="GETs per target and run")
    parser.add_argument("--concurrency", type=int, default=32, help="keep-alive connections")
    parser.add_argument(
        "--ws-messages",
        type=int,
        default=3000,
        help="websocket round trips (at most 500 to a real kernel)",
    )
    parser.add_argument(
        "--max-seconds", type=float, default=30.0, help="stop each measurement after this long"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of every target; medians")
    parser.add_argument(
        "--mode",
        choices=("mock", "real", "both"),
        default="both",
        help="mock upstream, the real hub and user server (root), or both",
    )
    parser.add_argument("--no-chp", action="store_true", help="skip configurable-http-proxy")
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-proxy", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
    elif args.serve_proxy:
        serve_minihub_proxy(*args.serve_proxy)
    else:
        run(args)


if __name__ == "__main__":
    main()
