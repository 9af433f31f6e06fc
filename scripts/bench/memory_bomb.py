"""Memory of a user server under bomb frames and fuzzed frames on a kernel websocket (issue 12).

    sudo /opt/minihub/venv/bin/python scripts/bench/memory_bomb.py [--fuzz 2000]
        [--source DIR] [--as-limit 4G]

Starts a real user server as a throwaway system user (mhwb_bench), as the tests do, starts
a python3 kernel, and prints the server's RSS after each phase: the issue's frames
(`ff ff ff ff 7b 7d`, `02 00 00 00 ...`) and other hostile counts and offsets over both
protocols, then --fuzz random frames per protocol. After each fuzzed frame a
kernel_info_request shows whether the socket was closed (the frame refused) or still serves.
--source runs the server from another checkout (e.g. a `git worktree` of an older commit)
to compare; --as-limit caps the server's address space (RLIMIT_AS) so the old parser's
23.6 GB request fails with MemoryError instead of taking the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pwd
import random
import secrets
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from common import Users

from minihub.config import parse_bytes
from minihub.kernels.wire import to_v1

V1 = "v1.kernel.websocket.jupyter.org"
USER = "mhwb_bench"
MB = 1 << 20

LEGACY_BOMBS = [
    bytes.fromhex("ffffffff7b7d"),
    bytes.fromhex("020000007b7d"),
    bytes.fromhex("02000000") + bytes(8) + b"{}",
    struct.pack("!III", 2, 100, 12) + b"{}",
    struct.pack("!II", 1, 2**32 - 1) + b"{}",
]
V1_BOMBS = [
    b"\xff" * 8 + b"{}",
    (2**32).to_bytes(8, "little") + b"{}",
    (2**63).to_bytes(8, "little") + bytes(64),
    (6).to_bytes(8, "little") + b"".join(o.to_bytes(8, "little") for o in [56] * 5 + [2**40]),
]


class Server:
    """A user server started as the hub does: a loopback socket bound by root, config on stdin."""

    def __init__(self, source: str, as_limit: int) -> None:
        pw = pwd.getpwnam(USER)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self.secret = secrets.token_urlsafe(24)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/user/{USER}/"
        fd, log = tempfile.mkstemp(prefix="mhwb-bench-", suffix=".log")
        os.close(fd)
        self.log = Path(log)
        env = {
            "HOME": pw.pw_dir,
            "USER": USER,
            "LANG": "C.UTF-8",
            "PATH": f"{os.path.dirname(sys.executable)}:/usr/bin:/bin",
        }
        if source:
            env["PYTHONPATH"] = source
        config = {
            "secret": self.secret,
            "base_url": f"/user/{USER}/",
            "user": USER,
            "notebook_dir": pw.pw_dir,
            "listen_fd": sock.fileno(),
        }
        cmd = [sys.executable, "-m", "minihub.singleuser"]
        if as_limit:  # lowering one's own limit needs no privilege
            cmd = ["/bin/sh", "-c", f'ulimit -v {as_limit // 1024} && exec "$@"', "sh", *cmd]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd,
                user=pw.pw_uid,
                group=pw.pw_gid,
                extra_groups=[],
                pass_fds=(sock.fileno(),),
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=pw.pw_dir,
                env=env,
                start_new_session=True,
            )
        sock.close()
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(config).encode() + b"\n")
        self.proc.stdin.close()
        self.headers = {"X-Minihub-Secret": self.secret}

    def rss(self) -> float:
        """MiB resident, or nan once the process is gone."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


async def wait_ready(http: aiohttp.ClientSession, srv: Server) -> None:
    for _ in range(300):
        if srv.proc.poll() is not None:
            raise SystemExit(f"server exited; its log: {srv.log}")
        try:
            async with http.get(srv.url + "api/status", headers=srv.headers) as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit(f"server not ready; its log: {srv.log}")


def kernel_info(v1: bool) -> str | bytes:
    header = {
        "msg_id": uuid.uuid4().hex,
        "msg_type": "kernel_info_request",
        "username": "b",
        "session": "b",
        "date": "",
        "version": "5.3",
    }
    if v1:
        parts = [json.dumps(x).encode() for x in (header, {}, {}, {})]
        return to_v1("shell", parts)
    return json.dumps(
        {"header": header, "parent_header": {}, "metadata": {}, "content": {}, "channel": "shell"}
    )


class Channel:
    """One protocol's websocket to the kernel, reconnected (same session) when closed."""

    def __init__(self, http: aiohttp.ClientSession, srv: Server, kernel: str, v1: bool) -> None:
        self.http, self.srv, self.v1 = http, srv, v1
        self.url = f"{srv.url}api/kernels/{kernel}/channels?session_id={uuid.uuid4().hex}"
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.closed_by_server = 0

    async def open(self) -> aiohttp.ClientWebSocketResponse:
        if self.ws is None or self.ws.closed:
            self.ws = await self.http.ws_connect(
                self.url,
                headers=self.srv.headers,
                protocols=(V1,) if self.v1 else (),
                max_msg_size=0,
            )
        return self.ws

    async def send_then_probe(self, frame: bytes | str) -> None:
        """Send frame, then a kernel_info_request: wait for its reply or for the close."""
        ws = await self.open()
        try:
            if isinstance(frame, str):
                await ws.send_str(frame)
            else:
                await ws.send_bytes(frame)
            probe = kernel_info(self.v1)
            await (ws.send_bytes(probe) if isinstance(probe, bytes) else ws.send_str(probe))
            async with asyncio.timeout(30):
                while True:
                    msg = await ws.receive()
                    if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                        self.closed_by_server += 1
                        await ws.close()
                        return
                    if b"kernel_info_reply" in _raw(msg.data):
                        return
        except (ConnectionError, aiohttp.ClientError):
            self.closed_by_server += 1
            await ws.close()


def _raw(data: str | bytes) -> bytes:
    return data.encode() if isinstance(data, str) else data


def fuzz_frame(rnd: random.Random, v1: bool) -> bytes | str:
    """Random counts and offsets (often huge, sometimes plausible), or mangled JSON text."""
    if not v1 and rnd.random() < 0.25:
        text = json.dumps({"header": {"msg_type": "x"}, "content": {"a": [1, 2]}})
        cut = rnd.randint(0, len(text))
        return text[:cut] + rnd.choice(["[" * 50_000, "\\ud800", "NaN", "}", ""]) + text[cut:]
    width, order = (8, "little") if v1 else (4, "big")
    top = 2 ** (8 * width) - 1
    count = rnd.choice([0, 1, 2, 5, 6, 7, 70, 2**16, 2**25, top, rnd.getrandbits(8 * width)])
    offsets = [
        rnd.choice([0, 8, 56, rnd.getrandbits(16), top])
        for _ in range(min(count, rnd.randint(0, 12)))
    ]
    body = rnd.randbytes(rnd.randint(0, 512))
    return count.to_bytes(width, order) + b"".join(o.to_bytes(width, order) for o in offsets) + body


async def run(args: argparse.Namespace) -> None:
    srv = Server(args.source, 0 if args.as_limit == "0" else parse_bytes(args.as_limit) or 0)
    rows: list[tuple[str, float, str]] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            await wait_ready(http, srv)
            rows.append(("server started", srv.rss(), ""))
            async with http.post(
                srv.url + "api/kernels", json={"name": "python3"}, headers=srv.headers
            ) as r:
                kernel = (await r.json())["id"]
            chans = {v1: Channel(http, srv, kernel, v1) for v1 in (False, True)}
            await chans[False].send_then_probe(kernel_info(False))  # the kernel is up
            rows.append(("kernel started", srv.rss(), ""))
            for v1, bombs in ((False, LEGACY_BOMBS), (True, V1_BOMBS)):
                for frame in bombs:
                    t0 = time.monotonic()
                    await chans[v1].send_then_probe(frame)
                    rows.append(
                        (
                            f"{'v1' if v1 else 'legacy'} {frame[:8].hex()}",
                            srv.rss(),
                            f"{time.monotonic() - t0:.2f} s",
                        )
                    )
            rnd = random.Random(args.seed)
            for v1 in (False, True):
                before = chans[v1].closed_by_server
                t0 = time.monotonic()
                for _ in range(args.fuzz):
                    await chans[v1].send_then_probe(fuzz_frame(rnd, v1))
                refused = chans[v1].closed_by_server - before
                rows.append(
                    (
                        f"{args.fuzz} fuzzed {'v1' if v1 else 'legacy'} frames",
                        srv.rss(),
                        f"{refused} closed the socket, {time.monotonic() - t0:.1f} s",
                    )
                )
            await chans[True].send_then_probe(kernel_info(True))
            rows.append(("kernel still answers", srv.rss(), ""))
    finally:
        srv.stop()
    print(
        f"user server RSS (MiB), source: {args.source or 'this checkout'}, "
        f"RLIMIT_AS {args.as_limit}"
    )
    for phase, mib, note in rows:
        print(f"  {phase:<34} {mib:9.1f}  {note}")
    errors = srv.log.read_text(errors="replace").count("Traceback")
    print(f"  tracebacks in the server log: {errors} ({srv.log})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fuzz", type=int, default=2000, help="fuzzed frames per protocol")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--source", default="", help="run the server from this checkout")
    ap.add_argument("--as-limit", default="4G", help="RLIMIT_AS of the server (0: none)")
    args = ap.parse_args()
    args.fuzz = max(0, min(args.fuzz, 20_000))
    if os.geteuid() != 0:
        raise SystemExit("run as root: the server runs as a throwaway system user")
    if args.source and not os.path.isdir(os.path.join(args.source, "minihub")):
        raise SystemExit(f"{args.source} holds no minihub package")
    users = Users()
    users.make(USER)
    try:
        asyncio.run(run(args))
    finally:
        users.remove_all()


if __name__ == "__main__":
    main()
