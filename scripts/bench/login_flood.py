"""Login flood: does everyone else stay fast while wrong passwords pour in? (issue 12 item 6)

Starts a real hub process (`python -m minihub`, PAM, two real system users), measures another
user's correct login, GET /hub/api/user and a spawn without a flood, then again during a
wrong-password flood against the first user from many 127.x addresses (direct, so untrusted)
and from many forwarded addresses (through 127.0.0.1, a trusted proxy, as behind nginx).
Also reports the failure delay PAM asks for here (the hub takes it over, see auth/pam.py).

Run as root, loopback only, bounded in time and clients:

    /opt/minihub/venv/bin/python scripts/bench/login_flood.py [--seconds 30] [--workers 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

PREFIX = "mhbf"
VICTIM, OTHER = f"{PREFIX}_victim", f"{PREFIX}_other"


def sh(*cmd: str, stdin: str | None = None) -> None:
    subprocess.run(cmd, input=stdin, text=True, capture_output=True, check=False, timeout=60)


def make_user(name: str) -> str:
    sh("pkill", "-KILL", "-u", name)
    sh("userdel", "-r", "-f", name)
    sh("useradd", "-m", "-s", "/bin/bash", name)
    password = "pw-" + secrets.token_urlsafe(12)
    sh("chpasswd", stdin=f"{name}:{password}\n")
    return password


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_hub(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    cfg = tmp / "hub.toml"
    cfg.write_text(
        '[hub]\ncleanup_servers = true\ntrusted_proxies = ["127.0.0.1"]\n'
        '[auth]\nauthenticator = "pam"\n'
    )
    with open(tmp / "hub.log", "ab") as log:  # the child keeps its own copy of the fd
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "minihub",
                "-f",
                str(cfg),
                "--data-dir",
                str(tmp / "data"),
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=log,
        )
    for _ in range(150):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the hub did not start; see {tmp / 'hub.log'}")


def session(source: str = "127.0.0.1") -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=(source, 0)),
        cookie_jar=aiohttp.CookieJar(unsafe=True),
        timeout=aiohttp.ClientTimeout(total=120),
    )


async def login(
    s: aiohttp.ClientSession, base: str, name: str, password: str, via: str | None = None
) -> int:
    headers = {"X-Forwarded-For": via} if via else {}
    # next=/hub/home: a login to /hub/ would also start the user's server
    async with s.post(
        f"{base}/hub/login?next=/hub/home",
        data={"username": name, "password": password},
        headers=headers,
        allow_redirects=False,
    ) as r:
        await r.read()
        return r.status


async def timed_login(base: str, password: str, n: int) -> float:
    async with session() as s:
        t = time.perf_counter()
        status = await login(s, base, OTHER, password, via=f"198.51.100.{1 + n % 250}")
        took = time.perf_counter() - t
        assert status == 302, f"correct login answered {status}"
        return took


async def timed_api(s: aiohttp.ClientSession, base: str) -> float:
    t = time.perf_counter()
    async with s.get(f"{base}/hub/api/user") as r:
        await r.read()
        assert r.status == 200
    return time.perf_counter() - t


async def timed_spawn(s: aiohttp.ClientSession, base: str) -> float:
    xsrf = next(c.value for c in s.cookie_jar if c.key == "_xsrf")
    t = time.perf_counter()
    async with s.post(f"{base}/hub/api/users/{OTHER}/server", headers={"X-XSRFToken": xsrf}) as r:
        assert r.status in (201, 202), await r.text()
    for _ in range(3000):  # 60 s at most
        async with s.get(f"{base}/hub/api/user") as r:
            if (await r.json())["servers"].get("", {}).get("ready"):
                break
        await asyncio.sleep(0.02)
    took = time.perf_counter() - t
    async with s.delete(f"{base}/hub/api/users/{OTHER}/server", headers={"X-XSRFToken": xsrf}) as r:
        await r.read()
    for _ in range(500):
        async with s.get(f"{base}/hub/api/user") as r:
            if not (await r.json())["servers"]:
                break
        await asyncio.sleep(0.02)
    return took


async def measure(base: str, password: str, seconds: float) -> dict[str, list[float]]:
    """Correct logins, API calls and one spawn, spread over `seconds`."""
    out: dict[str, list[float]] = {"login": [], "api": [], "spawn": []}
    async with session() as s:
        assert await login(s, base, OTHER, password, via="198.51.100.250") == 302
        end = time.monotonic() + seconds
        spawn_at = time.monotonic() + seconds / 3
        n = 0
        while time.monotonic() < end and n < 10_000:
            n += 1
            out["api"].append(await timed_api(s, base))
            if n % 5 == 0:
                out["login"].append(await timed_login(base, password, n))
            if not out["spawn"] and time.monotonic() >= spawn_at:
                out["spawn"].append(await timed_spawn(s, base))
            await asyncio.sleep(0.1)
    return out


async def flood_worker(i: int, base: str, stop: asyncio.Event, seen: Counter[str]) -> None:
    via = f"203.0.{113 + i % 2}.{1 + i % 250}" if i % 2 else None
    async with session(f"127.0.{1 + i // 250}.{1 + i % 250}") as s:
        for n in range(1_000_000):  # bounded; the stop event ends it
            if stop.is_set():
                return
            try:
                seen[str(await login(s, base, VICTIM, f"wrong-{i}-{n}", via=via))] += 1
            except aiohttp.ClientError:
                seen["error"] += 1


async def flood(base: str, seconds: float, workers: int) -> Counter[str]:
    stop, seen = asyncio.Event(), Counter[str]()
    tasks = [asyncio.create_task(flood_worker(i, base, stop, seen)) for i in range(workers)]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    return seen


def summary(xs: list[float]) -> str:
    if not xs:
        return "-"
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, int(0.95 * len(xs)))]
    return (
        f"n={len(xs):4d}  median {statistics.median(xs) * 1000:8.1f} ms  "
        f"p95 {p95 * 1000:8.1f} ms  max {xs[-1] * 1000:8.1f} ms"
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pam_delays(log: Path) -> list[float]:
    return [float(x) for x in re.findall(r"PAM asked for a ([0-9.]+) s delay", log.read_text())]


async def run(seconds: float, workers: int, tmp: Path) -> dict[str, object]:
    password = make_user(OTHER)
    make_user(VICTIM)
    port = free_port()
    hub = start_hub(tmp, port)
    base = f"http://127.0.0.1:{port}"
    try:
        print(f"baseline, no flood ({seconds / 3:.0f} s) ...", file=sys.stderr)
        quiet = await measure(base, password, seconds / 3)
        print(f"flood: {workers} clients for {seconds:.0f} s ...", file=sys.stderr)
        # The flood runs in its own process: sharing this one's event loop would make the
        # measuring client, not the hub, the bottleneck.
        t0, cpu0 = time.monotonic(), cpu_seconds(hub.pid)
        flooder = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--flood",
            base,
            "--seconds",
            str(seconds),
            "--workers",
            str(workers),
            stdout=subprocess.PIPE,
        )
        await asyncio.sleep(1.0)  # let it build up
        loud = await measure(base, password, seconds - 1.0)
        out, _ = await asyncio.wait_for(flooder.communicate(), timeout=seconds + 60)
        seen = Counter[str](json.loads(out))
        flood_s = time.monotonic() - t0
        hub_cpu = (cpu_seconds(hub.pid) - cpu0) / flood_s
    finally:
        hub.terminate()
        hub.wait(timeout=30)
        sh("userdel", "-r", "-f", VICTIM)
        sh("pkill", "-KILL", "-u", OTHER)
        sh("userdel", "-r", "-f", OTHER)
    delays = pam_delays(tmp / "hub.log")
    return {
        "quiet": quiet,
        "flood": loud,
        "flood_responses": dict(seen),
        "flood_seconds": flood_s,
        "hub_cpu": hub_cpu,
        "pam_delays": delays,
        "hub_500s": (tmp / "hub.log").read_text().count(" 500 "),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="flood length (5-120)")
    ap.add_argument("--workers", type=int, default=64, help="flooding clients (1-256)")
    ap.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    ap.add_argument("--flood", metavar="URL", help="(internal) only flood this hub")
    args = ap.parse_args()
    seconds, workers = min(max(args.seconds, 5.0), 120.0), min(max(args.workers, 1), 256)
    if args.flood:
        if not args.flood.startswith("http://127.0.0.1:"):
            raise SystemExit("--flood: loopback only")
        print(json.dumps(asyncio.run(flood(args.flood, seconds, workers))))
        return
    with tempfile.TemporaryDirectory(prefix="login-flood-") as tmp:
        r = asyncio.run(run(seconds, workers, Path(tmp)))
    if args.json:
        print(json.dumps(r, indent=1))
        return
    seen: dict[str, int] = r["flood_responses"]  # type: ignore[assignment]
    total = sum(seen.values())
    print(
        f"flood: {total} wrong-password requests in {r['flood_seconds']:.1f} s "
        f"({total / r['flood_seconds']:.0f}/s) from {workers} clients: {seen}; "
        f"hub CPU {r['hub_cpu']:.0%} of one core"
    )
    delays: list[float] = r["pam_delays"]  # type: ignore[assignment]
    if delays:
        print(
            f"PAM's own failure delay here (taken over by the hub): median "
            f"{statistics.median(delays):.2f} s, {min(delays):.2f}-{max(delays):.2f} s "
            f"over {len(delays)} checks"
        )
    for what in ("login", "api", "spawn"):
        for phase in ("quiet", "flood"):
            figures: dict[str, list[float]] = r[phase]  # type: ignore[assignment]
            print(f"{what:6s} {phase:6s} {summary(figures[what])}")
    print(f"500s in the hub's log: {r['hub_500s']}")


if __name__ == "__main__":
    main()
