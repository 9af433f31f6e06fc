"""Test harness for the per-user server: run it as a real user, talk to its kernels.

Shared by tests/test_singleuser_*.py (it holds no tests itself). The wire framing here is
written from the protocol description, independently of minihub.kernels.wire.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

V1 = "v1.kernel.websocket.jupyter.org"


@dataclass
class Server:
    url: str  # http://127.0.0.1:port/user/<name>/
    secret: str
    proc: subprocess.Popen[bytes]
    user: Any
    log: Path
    headers: dict[str, str] = field(default_factory=dict)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


def start_server(user: Any, log: Path, idle_timeout: int = 0, **extra: Any) -> Server:
    """Bind a loopback socket as root, hand it to the server started as `user` (as the hub)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    secret = secrets.token_urlsafe(24)
    base = f"/user/{user.name}/"
    config = {
        "secret": secret,
        "base_url": base,
        "notebook_dir": user.home,
        "user": user.name,
        "listen_fd": sock.fileno(),
        "kernel_idle_timeout": idle_timeout,
        "mem_limit": 0,
        **extra,
    }
    env = {
        "HOME": user.home,
        "USER": user.name,
        "LOGNAME": user.name,
        "LANG": "C.UTF-8",
        "PATH": f"{os.path.dirname(sys.executable)}:/usr/bin:/bin",
    }
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "minihub.singleuser"],
            user=user.uid,
            group=user.gid,
            extra_groups=[],
            pass_fds=(sock.fileno(),),
            stdin=subprocess.PIPE,
            stdout=logf,
            stderr=subprocess.STDOUT,
            cwd=user.home,
            env=env,
            start_new_session=True,
        )
    sock.close()
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(config).encode() + b"\n")
    proc.stdin.close()
    server = Server(
        f"http://127.0.0.1:{port}{base}", secret, proc, user, log, {"X-Minihub-Secret": secret}
    )
    _wait_ready(server)
    return server


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited: {server.log.read_text()[-3000:]}")
        req = urllib.request.Request(server.url + "api/status", headers=server.headers)
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"server not ready: {server.log.read_text()[-3000:]}")


# --- kernel messages ---------------------------------------------------------------------


def message(msg_type: str, content: dict[str, Any], session: str) -> dict[str, Any]:
    header = {
        "msg_id": uuid.uuid4().hex,
        "msg_type": msg_type,
        "username": "test",
        "session": session,
        "date": "2024-01-01T00:00:00Z",
        "version": "5.3",
    }
    return {"header": header, "parent_header": {}, "metadata": {}, "content": content}


def encode_v1(channel: str, msg: dict[str, Any]) -> bytes:
    parts = [
        json.dumps(msg[k]).encode() for k in ("header", "parent_header", "metadata", "content")
    ]
    chan = channel.encode()
    offsets = [8 * (len(parts) + 3), 8 * (len(parts) + 3) + len(chan)]
    for p in parts:
        offsets.append(offsets[-1] + len(p))
    return struct.pack(f"<{len(offsets) + 1}Q", len(offsets), *offsets) + chan + b"".join(parts)


def decode_v1(data: bytes) -> dict[str, Any]:
    (n,) = struct.unpack("<Q", data[:8])
    offsets = struct.unpack(f"<{n}Q", data[8 : 8 * (n + 1)])
    chunks = [data[offsets[i] : offsets[i + 1]] for i in range(n - 1)]
    keys = ("header", "parent_header", "metadata", "content")
    msg = {k: json.loads(c) for k, c in zip(keys, chunks[1:5], strict=False)}
    msg["channel"] = chunks[0].decode()
    msg["buffers"] = chunks[5:]
    return msg


class KernelClient:
    """A websocket client of one kernel, in either protocol."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, v1: bool) -> None:
        self.ws = ws
        self.v1 = v1
        self.session = uuid.uuid4().hex

    @classmethod
    async def connect(
        cls,
        http: aiohttp.ClientSession,
        server: Server,
        kernel_id: str,
        v1: bool = False,
        session_id: str = "",
    ) -> KernelClient:
        url = f"{server.url}api/kernels/{kernel_id}/channels"
        if session_id:
            url += f"?session_id={session_id}"
        ws = await http.ws_connect(
            url, headers=server.headers, protocols=(V1,) if v1 else (), max_msg_size=0
        )
        assert (ws.protocol == V1) == v1
        return cls(ws, v1)

    async def send(self, channel: str, msg: dict[str, Any]) -> None:
        if self.v1:
            await self.ws.send_bytes(encode_v1(channel, msg))
        else:
            await self.ws.send_str(json.dumps({**msg, "channel": channel}))

    async def recv(self, timeout: float = 30) -> dict[str, Any]:
        frame = await self.ws.receive(timeout)
        if frame.type == aiohttp.WSMsgType.BINARY and self.v1:
            return decode_v1(frame.data)
        if frame.type == aiohttp.WSMsgType.TEXT:
            msg: dict[str, Any] = json.loads(frame.data)
            return msg
        raise AssertionError(
            f"unexpected websocket frame {frame.type}: {frame.data!r} "
            f"code={self.ws.close_code} exc={self.ws.exception()!r}"
        )

    async def request(self, msg_type: str, content: dict[str, Any], channel: str = "shell") -> str:
        msg = message(msg_type, content, self.session)
        await self.send(channel, msg)
        return str(msg["header"]["msg_id"])

    async def execute(self, code: str, stdin: bool = False) -> str:
        return await self.request(
            "execute_request",
            {
                "code": code,
                "silent": False,
                "store_history": True,
                "user_expressions": {},
                "allow_stdin": stdin,
                "stop_on_error": True,
            },
        )

    async def collect(self, msg_id: str, timeout: float = 60) -> Result:
        """Messages for one request, until its reply and its idle status both came."""
        result = Result()
        deadline = time.monotonic() + timeout
        while not (result.reply and result.idle):
            msg = await self.recv(max(0.1, deadline - time.monotonic()))
            result.all.append(msg)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            result.add(msg)
        return result

    async def run(self, code: str, timeout: float = 60) -> Result:
        return await self.collect(await self.execute(code), timeout)

    async def wait_for(self, pred: Any, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.recv(max(0.1, deadline - time.monotonic()))
            if pred(msg):
                return msg


@dataclass
class Result:
    stdout: str = ""
    result: Any = None
    error: dict[str, Any] | None = None
    reply: dict[str, Any] | None = None
    idle: bool = False
    all: list[dict[str, Any]] = field(default_factory=list)

    def add(self, msg: dict[str, Any]) -> None:
        kind = msg["header"]["msg_type"]
        content = msg["content"]
        if kind == "stream":
            self.stdout += content["text"]
        elif kind == "execute_result":
            self.result = content["data"].get("text/plain")
        elif kind == "error":
            self.error = content
        elif kind == "execute_reply":
            self.reply = content
        elif kind == "status" and content["execution_state"] == "idle":
            self.idle = True
