"""Benchmark minihub's proxy against a direct connection and configurable-http-proxy.

Everything runs on loopback, each server in its own process. Run it with the venv's python:
    /opt/minihub/venv/bin/python scripts/bench_proxy.py [--requests 20000] [--concurrency 32]
It prints a markdown table: GET requests/s and p50/p99 latency, websocket round trips.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

SECRET = "bench-secret"
STATUS_PATH = "/user/x/api/status"
WS_PATH = "/user/x/ws"
CHP_VERSION = "configurable-http-proxy@4"


# ------------------------------------------------------------------ the servers (child processes)


def serve_upstream(port: int) -> None:
    """An aiohttp app shaped like a user server: GET api/status and a websocket echo."""
    from aiohttp import web

    body = json.dumps(
        {"started": "2024-01-01T00:00:00Z", "last_activity": "2024-01-01T00:00:00Z",
         "connections": 0, "kernels": 0}
    ).encode()

    @web.middleware
    async def secret(request: web.Request, handler: web.Handler) -> web.StreamResponse:
        if request.headers.get("X-Minihub-Secret") != SECRET:
            return web.json_response({"message": "Forbidden"}, status=403)
        return await handler(request)

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
    """A hub reduced to its proxy route: normalise the path, forward with the secret."""
    from aiohttp import web

    from minihub.proxy import Proxy, Upstream, normalise_path

    upstream = Upstream("127.0.0.1", upstream_port, SECRET)
    key = web.AppKey("proxy", Proxy)

    async def route(request: web.Request) -> web.StreamResponse:
        path = normalise_path(request.raw_path)
        return await request.app[key].forward(
            request, upstream, path=path, strip_cookies=("minihub-session",),
            on_activity=lambda: None,
        )

    async def proxy_ctx(app: web.Application) -> AsyncIterator[None]:
        app[key] = Proxy()
        yield
        await app[key].close()

    app = web.Application()
    app.cleanup_ctx.append(proxy_ctx)
    app.router.add_route("*", "/user/{tail:.*}", route)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


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


def spawn(args: list[str], port: int) -> subprocess.Popen[bytes]:
    # the checkout's minihub, not whatever version is installed in the venv
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, start_new_session=True, env=env)
    wait_port(port, proc)
    return proc


def self_cmd(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def find_chp(workdir: Path) -> str | None:
    """configurable-http-proxy on PATH, else installed with npm into a temporary prefix."""
    found = shutil.which("configurable-http-proxy")
    if found:
        return found
    if not shutil.which("npm"):
        print("npm not found: skipping configurable-http-proxy", file=sys.stderr)
        return None
    print(f"installing {CHP_VERSION} with npm into {workdir} ...", file=sys.stderr)
    res = subprocess.run(
        ["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(workdir),
         CHP_VERSION],
        check=False, capture_output=True, text=True, timeout=300,
    )
    binary = workdir / "node_modules" / ".bin" / "configurable-http-proxy"
    if res.returncode != 0 or not binary.exists():
        print(f"npm install failed, skipping configurable-http-proxy:\n{res.stderr[-2000:]}",
              file=sys.stderr)
        return None
    return str(binary)


# ------------------------------------------------------------------ the load generator


@dataclass
class Result:
    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    cpu: float = float("nan")  # CPU seconds the proxy process used during the run

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

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


async def http_load(port: int, total: int, concurrency: int, max_seconds: float) -> Result:
    """`concurrency` keep-alive connections sending GETs until `total` or `max_seconds`."""
    request = (f"GET {STATUS_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               # the direct target needs the secret; the proxies replace it with their own
               f"Accept: application/json\r\nX-Minihub-Secret: {SECRET}\r\n\r\n").encode()
    latencies: list[float] = []
    counter = {"left": total, "errors": 0}
    deadline = time.perf_counter() + max_seconds

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
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


async def ws_roundtrips(port: int, count: int, max_seconds: float) -> Result:
    """Sequential round trips of a small text message over one websocket."""
    import aiohttp

    latencies: list[float] = []
    msg = json.dumps({"header": {"msg_type": "kernel_info_request"}, "content": {}})
    deadline = time.perf_counter() + max_seconds
    async with aiohttp.ClientSession() as session, session.ws_connect(
        f"http://127.0.0.1:{port}{WS_PATH}", compress=0, headers={"X-Minihub-Secret": SECRET}
    ) as ws:
        start = time.perf_counter()
        for _ in range(count):
            if time.perf_counter() > deadline:
                break
            t0 = time.perf_counter()
            await ws.send_str(msg)
            await asyncio.wait_for(ws.receive_str(), 30)
            latencies.append(time.perf_counter() - t0)
        return Result(len(latencies), 0, time.perf_counter() - start, latencies)


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process: a fair cost measure on a busy or shared machine."""
    if pid is None:
        return float("nan")
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(port: int, pid: int | None, args: argparse.Namespace) -> tuple[Result, Result]:
    # warm-up: connection pools, and node's JIT for configurable-http-proxy
    await http_load(port, min(5000, args.requests), args.concurrency, 15)
    cpu = cpu_seconds(pid)
    http = await http_load(port, args.requests, args.concurrency, args.max_seconds)
    http.cpu = cpu_seconds(pid) - cpu
    ws = await ws_roundtrips(port, args.ws_messages, args.max_seconds)
    return http, ws


# ------------------------------------------------------------------ main


def run(args: argparse.Namespace) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    workdir = Path(tempfile.mkdtemp(prefix="minihub-bench-"))
    try:
        up_port, hub_port = free_port(), free_port()
        procs.append(spawn(self_cmd("--serve-upstream", str(up_port)), up_port))
        procs.append(spawn(self_cmd("--serve-proxy", str(hub_port), str(up_port)), hub_port))
        targets = [("direct to upstream", up_port, None), ("minihub Proxy", hub_port, procs[1].pid)]
        chp = None if args.no_chp else find_chp(workdir)
        if chp:
            chp_port, api_port = free_port(), free_port()
            procs.append(spawn([
                chp, "--ip", "127.0.0.1", "--port", str(chp_port), "--api-ip", "127.0.0.1",
                "--api-port", str(api_port), "--default-target", f"http://127.0.0.1:{up_port}",
                "--custom-header", f"X-Minihub-Secret:{SECRET}", "--log-level", "error",
            ], chp_port))
            targets.append(("configurable-http-proxy", chp_port, procs[-1].pid))
        results = {}
        for name, port, pid in targets:
            print(f"measuring {name} ...", file=sys.stderr)
            results[name] = asyncio.run(measure(port, pid, args))
        print_table(results, args)
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(workdir, ignore_errors=True)


def print_table(results: dict[str, tuple[Result, Result]], args: argparse.Namespace) -> None:
    chp = results.get("configurable-http-proxy")
    print(f"\nGET {STATUS_PATH}: {args.requests} requests, {args.concurrency} keep-alive "
          f"connections; websocket: {args.ws_messages} sequential round trips. "
          f"{os.cpu_count()} CPUs, loopback.\n")
    print("| target | req/s | p50 ms | p99 ms | errors | proxy CPU µs/req | ws p50 ms |"
          " ws p99 ms | req/s vs CHP | p99 vs CHP | CPU/req vs CHP |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, (http, ws) in results.items():
        cpu = http.cpu / http.requests * 1e6 if http.requests else float("nan")
        known = not math.isnan(cpu)
        vs = "- | - | -"
        if chp:
            chp_cpu = chp[0].cpu / chp[0].requests * 1e6
            vs = (f"{http.rps / chp[0].rps:.2f}x | {http.pct(99) / chp[0].pct(99):.2f}x | "
                  + (f"{cpu / chp_cpu:.2f}x" if known else "-"))
        cpu_text = f"{cpu:.0f}" if known else "-"
        print(f"| {name} | {http.rps:,.0f} | {http.pct(50):.2f} | {http.pct(99):.2f} | "
              f"{http.errors} | {cpu_text} | {ws.pct(50):.3f} | {ws.pct(99):.3f} | {vs} |")
    if "direct to upstream" in results and "minihub Proxy" in results:
        d, m = results["direct to upstream"][0], results["minihub Proxy"][0]
        added = statistics.median(m.latencies) - statistics.median(d.latencies)
        print(f"\nminihub Proxy adds {added * 1000:.2f} ms at p50 and keeps "
              f"{m.rps / d.rps:.0%} of the direct throughput.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000, help="GETs per target")
    parser.add_argument("--concurrency", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--ws-messages", type=int, default=3000, help="websocket round trips")
    parser.add_argument("--max-seconds", type=float, default=30.0,
                        help="stop each measurement after this long")
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
