"""The benchmark's client: JupyterHub REST API, Jupyter Server API and kernel websocket.

It speaks only the public protocols both hubs serve, so the same code drives either.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Self

import aiohttp

SPAWN_TIMEOUT = 120.0


@dataclass
class SpawnResult:
    name: str
    seconds: float
    ok: bool
    status: int = 0  # HTTP status of the POST
    error: str = ""


@dataclass
class Client:
    base: str  # http://127.0.0.1:PORT
    token: str
    session: aiohttp.ClientSession = field(init=False)

    async def __aenter__(self) -> Self:
        conn = aiohttp.TCPConnector(limit=0, force_close=False)
        self.session = aiohttp.ClientSession(
            connector=conn,
            headers={"Authorization": f"token {self.token}"},
            timeout=aiohttp.ClientTimeout(total=SPAWN_TIMEOUT + 30),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    def api(self, path: str) -> str:
        return f"{self.base}/hub/api{path}"

    async def create_users(self, names: list[str]) -> None:
        async with self.session.post(self.api("/users"), json={"usernames": names}) as r:
            if r.status not in (201, 409):
                raise RuntimeError(f"create users: {r.status} {await r.text()}")
        for n in names:  # 409 above when some exist: make sure each does
            async with self.session.post(self.api(f"/users/{n}")) as r:
                if r.status not in (201, 409):
                    raise RuntimeError(f"create {n}: {r.status} {await r.text()}")

    async def spawn(self, name: str) -> SpawnResult:
        """POST the server, then follow the progress stream until ready (timed, bounded)."""
        t0 = time.perf_counter()
        async with self.session.post(self.api(f"/users/{name}/server")) as r:
            status = r.status
            if status not in (201, 202):
                return SpawnResult(
                    name, time.perf_counter() - t0, False, status, (await r.text())[:200]
                )
        if status == 201 or await self._follow_progress(name, t0):
            return SpawnResult(name, time.perf_counter() - t0, True, status)
        return SpawnResult(
            name, time.perf_counter() - t0, False, status, await self._server_error(name)
        )

    async def _follow_progress(self, name: str, t0: float) -> bool:
        deadline = t0 + SPAWN_TIMEOUT
        while time.perf_counter() < deadline:
            try:
                async with self.session.get(
                    self.api(f"/users/{name}/server/progress"),
                    timeout=aiohttp.ClientTimeout(total=deadline - time.perf_counter()),
                ) as r:
                    async for line in r.content:
                        if not line.startswith(b"data:"):
                            continue
                        event = json.loads(line[5:])
                        if event.get("ready"):
                            return True
                        if event.get("failed"):
                            return False
            except (TimeoutError, aiohttp.ClientError):
                pass
            if await self.ready(name):  # the stream may end just before "ready"
                return True
            await asyncio.sleep(0.1)
        return False

    async def ready(self, name: str) -> bool:
        async with self.session.get(self.api(f"/users/{name}")) as r:
            model = await r.json()
        return bool(model.get("server")) and not model.get("pending")

    async def _server_error(self, name: str) -> str:
        async with self.session.get(self.api(f"/users/{name}")) as r:
            return (await r.text())[:200]

    async def stop(self, name: str) -> None:
        async with self.session.delete(self.api(f"/users/{name}/server")) as r:
            if r.status not in (202, 204):
                raise RuntimeError(f"stop {name}: {r.status}")
        for _ in range(300):
            async with self.session.get(self.api(f"/users/{name}")) as r:
                model = await r.json()
            if not model.get("server") and not model.get("pending"):
                return
            await asyncio.sleep(0.1)

    # ----------------------------------------------------------------- user server API

    def user_url(self, name: str, path: str) -> str:
        return f"{self.base}/user/{name}/{path}"

    async def start_kernel(self, name: str) -> tuple[str, float]:
        """POST a kernel, open its channels, return (kernel id, seconds to kernel_info_reply)."""
        t0 = time.perf_counter()
        async with self.session.post(
            self.user_url(name, "api/kernels"), json={"name": "python3"}
        ) as r:
            if r.status != 201:
                raise RuntimeError(f"kernel for {name}: {r.status} {(await r.text())[:200]}")
            kid = (await r.json())["id"]
        async with Channels(self.session, self.user_url(name, f"api/kernels/{kid}/channels")) as ch:
            await ch.request("kernel_info_request", {}, timeout=60)
        return kid, time.perf_counter() - t0

    async def open_notebook(self, name: str) -> None:
        """What opening a notebook costs the server: create one, read it back, save it (the
        contents API, as jupyter_server's; both hubs' servers validate it)."""
        async with self.session.post(
            self.user_url(name, "api/contents"), json={"type": "notebook"}
        ) as r:
            if r.status != 201:
                raise RuntimeError(f"notebook for {name}: {r.status} {(await r.text())[:200]}")
            path = (await r.json())["path"]
        async with self.session.get(self.user_url(name, f"api/contents/{path}")) as r:
            model = await r.json()
        body = {"type": "notebook", "format": "json", "content": model["content"]}
        async with self.session.put(self.user_url(name, f"api/contents/{path}"), json=body) as r:
            if r.status != 200:
                raise RuntimeError(f"save for {name}: {r.status} {(await r.text())[:200]}")

    async def execute_latencies(
        self, name: str, kid: str, count: int, max_seconds: float
    ) -> list[float]:
        out: list[float] = []
        deadline = time.perf_counter() + max_seconds
        async with Channels(self.session, self.user_url(name, f"api/kernels/{kid}/channels")) as ch:
            await ch.request("kernel_info_request", {}, timeout=60)
            for _ in range(count):
                if time.perf_counter() > deadline:
                    break
                t0 = time.perf_counter()
                await ch.execute("1+1")
                out.append(time.perf_counter() - t0)
        return out

    async def get_load(
        self, name: str, total: int, concurrency: int, max_seconds: float
    ) -> tuple[list[float], int, float]:
        """GETs of the user server's api/status through the hub: (latencies, errors, wall)."""
        url = self.user_url(name, "api/status")
        lat: list[float] = []
        left = [total]
        errors = [0]
        deadline = time.perf_counter() + max_seconds

        async def worker() -> None:
            while left[0] > 0 and time.perf_counter() < deadline:
                left[0] -= 1
                t0 = time.perf_counter()
                async with self.session.get(url) as r:
                    await r.read()
                    if r.status != 200:
                        errors[0] += 1
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return lat, errors[0], time.perf_counter() - t0


async def login(base: str, name: str, password: str) -> tuple[bool, int]:
    """Log in through the hub's login form as a browser does (XSRF field included)."""
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1
    async with aiohttp.ClientSession(cookie_jar=jar, timeout=aiohttp.ClientTimeout(total=120)) as s:
        async with s.get(f"{base}/hub/login") as r:
            page = await r.text()
        form = {"username": name, "password": password}
        m = re.search(r'name="_xsrf"\s+value="([^"]*)"', page)
        if m:
            form["_xsrf"] = m.group(1)
        async with s.post(
            f"{base}/hub/login", data=form, allow_redirects=False, headers={"Origin": base}
        ) as r:
            await r.read()
            return r.status in (302, 303), r.status


class Channels:
    """One kernel websocket (Jupyter's JSON protocol) with request/reply helpers."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url.replace("http://", "ws://", 1)
        self.session_id = uuid.uuid4().hex

    async def __aenter__(self) -> Self:
        self.ws = await self.session.ws_connect(self.url, compress=0, max_msg_size=0, autoping=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()

    def _msg(self, msg_type: str, content: dict[str, Any], channel: str) -> tuple[str, str]:
        mid = uuid.uuid4().hex
        return mid, json.dumps(
            {
                "header": {
                    "msg_id": mid,
                    "msg_type": msg_type,
                    "username": "bench",
                    "session": self.session_id,
                    "version": "5.3",
                    "date": "2024-01-01T00:00:00.000000Z",
                },
                "parent_header": {},
                "metadata": {},
                "content": content,
                "channel": channel,
                "buffers": [],
            }
        )

    async def request(self, msg_type: str, content: dict[str, Any], timeout: float) -> None:
        mid, text = self._msg(msg_type, content, "shell")
        await self.ws.send_str(text)
        await self._until(
            lambda m: m.get("channel") == "shell" and m["parent_header"].get("msg_id") == mid,
            timeout,
        )

    async def execute(self, code: str, timeout: float = 30) -> None:
        """Until both the execute_reply and the kernel's return to idle have arrived."""
        mid, text = self._msg(
            "execute_request",
            {
                "code": code,
                "silent": False,
                "store_history": False,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
            "shell",
        )
        await self.ws.send_str(text)
        seen = {"reply": False, "idle": False}

        def done(m: dict[str, Any]) -> bool:
            if m["parent_header"].get("msg_id") != mid:
                return False
            if m.get("channel") == "shell":
                seen["reply"] = True
            elif m.get("msg_type") == "status" and m["content"].get("execution_state") == "idle":
                seen["idle"] = True
            return seen["reply"] and seen["idle"]

        await self._until(done, timeout)

    async def _until(self, pred: Any, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise RuntimeError(f"websocket closed: {msg.type} {msg.data}")
                if pred(json.loads(msg.data)):
                    return
