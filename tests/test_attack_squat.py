"""Issue 12.7: a user who kills her own server and binds its port must never be proxied to.

The hub only relays answers that carry the server's proof (X-Minihub-Proof), which the
process it started holds and a process that took the port does not — even though it learns
the secret from the first request it gets. A server may set cookies only for its own path.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sqlite3
import subprocess
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import needs_root
from helpers import add_users
from test_config_cli import MINIHUB, free_port, start_hub
from test_hub_spawn import h

from minihub.errors import HubError
from minihub.proxy import Proxy, Upstream, normalise_path

SECRET = "the-secret"
PROOF = "the-proof"
MARKER = "SQUATTER-WAS-HERE"
Client = TestClient[web.Request, web.Application]


# ------------------------------------------------------ the proxy against a squatting process


def squatter_app(seen: list[str]) -> web.Application:
    """Answers like a server would, and even echoes what it learnt as a 'proof'."""

    async def any_page(request: web.Request) -> web.StreamResponse:
        learnt = request.headers.get("X-Minihub-Secret", "")
        seen.append(learnt)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse()
            ws.headers["X-Minihub-Proof"] = learnt
            await ws.prepare(request)
            await ws.send_str(MARKER)
            await ws.close()
            return ws
        resp = web.Response(text=f"<script>{MARKER}</script>", content_type="text/html")
        resp.headers["X-Minihub-Proof"] = learnt
        resp.headers["Set-Cookie"] = "stolen=1; Path=/"
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_page)
    return app


def genuine_app() -> web.Application:
    async def cookies(request: web.Request) -> web.Response:
        assert request.headers.get("X-Minihub-Secret") == SECRET
        resp = web.Response(text="ok", headers={"X-Minihub-Proof": PROOF})
        for value in (
            "own=1; Path=/user/x/",
            "bare=1",
            "exact=1; Path=/user/x",
            "root=1; Path=/",
            "hub=1; Path=/hub/",
            "sibling=1; Path=/user/xy/",
            "wide=1; Domain=example.org; Path=/user/x/",
            "minihub-session=evil",
            "PATHLESS=1; path=/user/x/lab",
        ):
            resp.headers.add("Set-Cookie", value)
        return resp

    app = web.Application()
    app.router.add_get("/user/x/cookies", cookies)
    return app


def hub_app(upstream: Upstream) -> web.Application:
    proxy_key = web.AppKey("proxy", Proxy)

    @web.middleware
    async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)  # type: ignore[no-any-return]
        except HubError as e:
            return web.json_response({"status": e.status, "message": e.message}, status=e.status)

    async def route(request: web.Request) -> web.StreamResponse:
        return await request.app[proxy_key].forward(
            request,
            upstream,
            path=normalise_path(request.raw_path),
            strip_cookies={"minihub-session"},
            cookie_path="/user/x/",
        )

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        app[proxy_key] = Proxy(connect_timeout=5, read_timeout=10)
        yield
        await app[proxy_key].close()

    app = web.Application(middlewares=[errors])
    app.cleanup_ctx.append(ctx)
    app.router.add_route("*", "/user/x/{tail:.*}", route)
    return app


async def test_answers_without_the_proof_are_refused(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    seen: list[str] = []
    squatter = await aiohttp_server(squatter_app(seen), host="127.0.0.1")
    assert squatter.port is not None
    hub = await aiohttp_client(hub_app(Upstream("127.0.0.1", squatter.port, SECRET, PROOF)))
    for _ in range(3):  # also on a second request over a fresh connection
        r = await hub.get("/user/x/tree/")
        body = await r.text()
        assert r.status == 502 and MARKER not in body
        assert "Set-Cookie" not in r.headers and "X-Minihub-Proof" not in r.headers
        assert "stopped" in (await r.json())["message"]
    assert seen and all(s == SECRET for s in seen)  # it learnt the secret, and it did not help
    key = base64.b64encode(os.urandom(16)).decode()
    r = await hub.get(
        "/user/x/api/kernels/k/channels",
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": key,
        },
    )
    assert r.status == 502 and MARKER not in await r.text()


async def test_a_server_sets_cookies_only_for_its_own_path(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    server = await aiohttp_server(genuine_app(), host="127.0.0.1")
    assert server.port is not None
    hub = await aiohttp_client(hub_app(Upstream("127.0.0.1", server.port, SECRET, PROOF)))
    r = await hub.get("/user/x/cookies")
    assert r.status == 200 and await r.text() == "ok"
    names = sorted(c.split("=", 1)[0] for c in r.headers.getall("Set-Cookie"))
    assert names == ["PATHLESS", "bare", "exact", "own"]
    assert "X-Minihub-Proof" not in r.headers  # the proof never reaches a client


async def test_websocket_handshake_without_a_key_is_the_clients_fault(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    server = await aiohttp_server(genuine_app(), host="127.0.0.1")
    assert server.port is not None
    hub = await aiohttp_client(hub_app(Upstream("127.0.0.1", server.port, SECRET, PROOF)))
    base = {"Upgrade": "websocket", "Connection": "Upgrade"}
    for extra in (
        {},
        {"Sec-WebSocket-Version": "13"},
        {"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "short"},
        {"Sec-WebSocket-Version": "8", "Sec-WebSocket-Key": "A" * 22 + "=="},
    ):
        r = await hub.get("/user/x/ws", headers={**base, **extra})
        assert r.status == 400, extra
        assert "websocket" in (await r.json())["message"].lower()


# ------------------------------------------------------------- the attack on a real hub

SQUAT = textwrap.dedent("""
    import os, signal, socket, sys, time
    pid, port = int(sys.argv[1]), int(sys.argv[2])
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    while True:
        try:
            s.bind(("127.0.0.1", port))
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit("port never came free")
            time.sleep(0.001)
    s.listen(64)
    print("bound", flush=True)
    s.settimeout(0.2)
    end = time.monotonic() + 8
    body = b"<script>MARK</script>"
    while time.monotonic() < end:
        try:
            c, _ = s.accept()
        except TimeoutError:
            continue
        c.settimeout(1)
        try:
            req = c.recv(65536).decode(errors="replace")
            learnt = ""
            for line in req.split("\\r\\n"):
                if line.lower().startswith("x-minihub-secret:"):
                    learnt = line.split(":", 1)[1].strip()
            c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Type: text/html\\r\\n"
                      b"Set-Cookie: stolen=1; Path=/\\r\\nX-Minihub-Proof: " + learnt.encode()
                      + b"\\r\\nContent-Length: " + str(len(body)).encode() + b"\\r\\n\\r\\n"
                      + body)
        except OSError:
            pass
        finally:
            c.close()
""").replace("MARK", MARKER)


def _server_row(data: Path) -> tuple[int, int]:
    db = sqlite3.connect(f"file:{data / 'minihub.sqlite'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT state, port FROM servers").fetchone()
    finally:
        db.close()
    return int(json.loads(row[0])["pid"]), int(row[1])


@needs_root
async def test_killing_the_server_and_taking_its_port_gets_nothing(tmp_path, make_system_user):
    u = make_system_user("mhsq_eve")
    data, port = tmp_path / "data", free_port()
    cmd = [*MINIHUB, "--data-dir", str(data), "--port", str(port)]
    token = add_users(data, [u.name])[u.name]
    log = tmp_path / "hub.log"
    hub = start_hub(cmd, port, log)
    base = f"http://127.0.0.1:{port}"
    squat = None
    try:
        async with aiohttp.ClientSession(headers=h(token)) as s:
            r = await s.post(f"{base}/hub/api/users/{u.name}/server")
            assert r.status in (201, 202)
            for _ in range(200):
                if (await (await s.get(f"{base}/hub/api/users/{u.name}")).json())["server"]:
                    break
                await asyncio.sleep(0.05)
            r = await s.get(f"{base}/user/{u.name}/api/status")
            assert r.status == 200 and "X-Minihub-Proof" not in r.headers
            pid, server_port = _server_row(data)
            # Eve, as herself: kill her own server and bind its port at once.
            squat = subprocess.Popen(
                [
                    "runuser",
                    "-u",
                    u.name,
                    "--",
                    "/usr/bin/python3",
                    "-c",
                    SQUAT,
                    str(pid),
                    str(server_port),
                ],
                stdout=subprocess.PIPE,
                text=True,
                cwd="/",
            )
            assert squat.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(squat.stdout.readline), 10)
            assert line.strip() == "bound"
            statuses = []
            for _ in range(60):  # requests while the squatter holds the port
                for path in ("api/status", "tree/", "api/contents"):
                    r = await s.get(f"{base}/user/{u.name}/{path}", allow_redirects=False)
                    text = await r.text()
                    assert MARKER not in text
                    assert "stolen" not in " ".join(r.headers.getall("Set-Cookie", []))
                    statuses.append(r.status)
                await asyncio.sleep(0.02)
            assert 200 not in statuses
            model = await (await s.get(f"{base}/hub/api/users/{u.name}")).json()
            assert model["server"] is None  # the hub knows the server is gone
    finally:
        if squat is not None:
            squat.kill()
            squat.wait(10)
            if squat.stdout is not None:
                squat.stdout.close()
        hub.terminate()
        hub.wait(20)
    assert "Traceback" not in log.read_text()
