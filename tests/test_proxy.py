"""The reverse proxy against real aiohttp servers on loopback: headers, streaming, websockets.

A tiny "hub" app routes /user/x/{tail} through Proxy.forward to an upstream app that checks
the per-server secret like a real user server.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from minihub.errors import HubError
from minihub.proxy import Proxy, Upstream, normalise_path

SECRET = "s3cret-for-tests"
HUB_COOKIE = "minihub-session"
V1 = "v1.kernel.websocket.jupyter.org"
CHUNK = b"x" * (256 * 1024)
MB = 1 << 20

STATE = web.AppKey("state", dict)
UPSTREAM = web.AppKey("upstream", Upstream)
PROXY = web.AppKey("proxy", Proxy)
ACTIVITY = web.AppKey("activity", list)


# ---------------------------------------------------------------- the upstream "user server"


@web.middleware
async def require_secret(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.headers.get("X-Minihub-Secret") != SECRET:
        return web.json_response({"message": "bad secret"}, status=403)
    return await handler(request)  # type: ignore[no-any-return]


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    headers: dict[str, list[str]] = {}
    for k, v in request.headers.items():
        headers.setdefault(k.lower(), []).append(v)
    return web.json_response(
        {
            "method": request.method,
            "path": request.raw_path,
            "headers": headers,
            "body": body.decode(errors="replace"),
        }
    )


async def upload(request: web.Request) -> web.Response:
    digest, n = hashlib.sha256(), 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        n += len(chunk)
    return web.json_response(
        {
            "n": n,
            "sha": digest.hexdigest(),
            "chunked": "chunked" in request.headers.get("Transfer-Encoding", ""),
        }
    )


async def download(request: web.Request) -> web.StreamResponse:
    total = int(request.query["n"])
    resp = web.StreamResponse()
    if request.query.get("length"):
        resp.content_length = total
    await resp.prepare(request)
    sent = 0 if request.method != "HEAD" else total
    try:
        while sent < total:
            part = CHUNK[: min(len(CHUNK), total - sent)]
            await resp.write(part)
            sent += len(part)
        await resp.write_eof()
    finally:
        request.app[STATE]["download_ended"].set()
    return resp


async def die(request: web.Request) -> web.StreamResponse:
    if request.query.get("early"):
        assert request.transport is not None
        request.transport.abort()
        raise asyncio.CancelledError  # never answer
    resp = web.StreamResponse()
    if request.query.get("length"):
        resp.content_length = 10 * MB
    await resp.prepare(request)
    await resp.write(CHUNK)
    await resp.drain()
    assert request.transport is not None
    request.transport.abort()
    return resp


async def misc_headers(request: web.Request) -> web.Response:
    origin = f"http://127.0.0.1:{request.app[STATE]['port']}"
    resp = web.Response(
        status=302,
        text="moved",
        headers={
            "Location": origin + "/user/x/echo?a=1",
            "Content-Security-Policy": "frame-ancestors 'self'",
            "Keep-Alive": "timeout=5",
        },
    )
    resp.set_cookie(HUB_COOKIE, "evil", path="/hub/")
    resp.set_cookie("_xsrf", "ok", path="/user/x/")
    return resp


async def ws_handler(request: web.Request) -> web.WebSocketResponse:
    state = request.app[STATE]
    ws = web.WebSocketResponse(protocols=(V1,), max_msg_size=0)
    await ws.prepare(request)
    state["protocol"] = ws.ws_protocol
    async for msg in ws:
        if msg.type is aiohttp.WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
        elif msg.data.startswith("close:"):
            await ws.close(code=int(msg.data[6:]), message=b"bye")
        elif msg.data == "die":
            assert request.transport is not None
            request.transport.abort()
        elif msg.data == "ping-me":
            await ws.ping(b"from-upstream")
        elif msg.data.startswith("flood:"):
            state["flood_sent"] = 0
            try:
                for _ in range(int(msg.data[6:])):
                    await ws.send_bytes(CHUNK)
                    state["flood_sent"] += len(CHUNK)
                state["flood_done"] = True
            finally:
                state["flood_ended"].set()
        else:
            await ws.send_str(msg.data)
    state["close_code"] = ws.close_code
    state["ws_closed"].set()
    return ws


def upstream_app() -> web.Application:
    app = web.Application(middlewares=[require_secret], client_max_size=1 << 40)
    app[STATE] = {
        "ws_closed": asyncio.Event(),
        "flood_ended": asyncio.Event(),
        "download_ended": asyncio.Event(),
    }
    app.router.add_route("*", "/user/x/echo", echo)
    app.router.add_route("*", "/user/x/echo/{tail:.*}", echo)
    app.router.add_post("/user/x/upload", upload)
    app.router.add_get("/user/x/download", download)
    app.router.add_get("/user/x/die", die)
    app.router.add_get("/user/x/headers", misc_headers)
    app.router.add_get("/user/x/ws", ws_handler)
    return app


# ---------------------------------------------------------------- the "hub"


@web.middleware
async def render_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except HubError as e:
        return web.json_response({"status": e.status, "message": e.message}, status=e.status)


async def hub_route(request: web.Request) -> web.StreamResponse:
    app = request.app
    return await app[PROXY].forward(
        request,
        app[UPSTREAM],
        path=normalise_path(request.raw_path),
        strip_cookies={HUB_COOKIE},
        on_activity=lambda: app[ACTIVITY].append(1),
    )


def hub_app(upstream: Upstream, read_timeout: float = 30) -> web.Application:
    app = web.Application(middlewares=[render_errors], client_max_size=1 << 40)
    app[UPSTREAM] = upstream
    app[ACTIVITY] = []

    async def proxy_ctx(app: web.Application) -> AsyncIterator[None]:
        app[PROXY] = Proxy(connect_timeout=5, read_timeout=read_timeout)
        yield
        await app[PROXY].close()

    app.cleanup_ctx.append(proxy_ctx)
    app.router.add_route("*", "/user/x/{tail:.*}", hub_route)
    return app


Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def up_server(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> TestServer:
    server = await aiohttp_server(upstream_app(), host="127.0.0.1")
    server.app[STATE]["port"] = server.port
    return server


@pytest.fixture
async def hub(up_server: TestServer, aiohttp_client: Callable[..., Awaitable[Client]]) -> Client:
    assert up_server.port is not None
    return await aiohttp_client(hub_app(Upstream("127.0.0.1", up_server.port, SECRET)))


def up_state(up_server: TestServer) -> dict[str, Any]:
    return up_server.app[STATE]  # type: ignore[no-any-return]


# ---------------------------------------------------------------- path normalisation


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("/user/bob/../alice/", "/user/alice/"),
        ("/user/bob/%2E%2E/alice", "/user/alice"),
        ("/user/bob/%2e%2e/alice/api", "/user/alice/api"),
        ("/user/bob/..%2Falice/", "/user/alice/"),
        ("/user/bob/..%2falice", "/user/alice"),
        ("/user//alice", "/user/alice"),
        ("//user///alice//tree/", "/user/alice/tree/"),
        ("/user/bob/./x/.", "/user/bob/x/"),
        ("/user/bob/..", "/user/"),
        ("/../../etc/passwd", "/etc/passwd"),
        ("/", "/"),
        ("", "/"),
        ("/..", "/"),
        ("/user/bob/a%20b.ipynb?x=../y", "/user/bob/a%20b.ipynb"),
        ("/user/bob/a%252Fb", "/user/bob/a%252Fb"),
        ("/user/bob/files/x#frag", "/user/bob/files/x"),
    ],
)
def test_normalise_path(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected


async def test_hub_route_sees_normalised_path(hub: Client) -> None:
    # encoded=True: the client must send the raw text, not resolve it itself
    url = URL(
        f"http://127.0.0.1:{hub.port}/user/x/a/%2E%2E/echo/b/./c//d?q=%2E%2E&r=1", encoded=True
    )
    r = await hub.session.get(url)
    assert r.status == 200
    assert (await r.json())["path"] == "/user/x/echo/b/c/d?q=%2E%2E&r=1"


# ---------------------------------------------------------------- HTTP


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"])
async def test_every_method(hub: Client, method: str) -> None:
    r = await hub.request(method, "/user/x/echo/m", data=b"body" if method != "GET" else None)
    assert r.status == 200
    got = await r.json()
    assert got["method"] == method
    assert got["body"] == ("body" if method != "GET" else "")


async def test_head(hub: Client) -> None:
    r = await hub.head("/user/x/download?n=1000&length=1")
    assert r.status == 200
    assert r.headers["Content-Length"] == "1000"
    assert await r.read() == b""


async def test_request_headers(hub: Client) -> None:
    r = await hub.get(
        "/user/x/echo",
        headers={
            "Host": "hub.example.org:8443",
            "Cookie": f"{HUB_COOKIE}=sessionvalue; other=1; _xsrf=abc",
            "Authorization": "token hub-token",
            "X-Minihub-Secret": "forged",
            "X-Forwarded-For": "6.6.6.6",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "evil.example",
            "Forwarded": "for=6.6.6.6",
            "Connection": "keep-alive, X-Private",
            "X-Private": "hop",
            "TE": "trailers",
            "Proxy-Authorization": "Basic x",
            "X-Custom": "kept",
        },
    )
    assert r.status == 200
    h = (await r.json())["headers"]
    assert h["cookie"] == ["other=1; _xsrf=abc"]
    assert "sessionvalue" not in json.dumps(h)
    assert "authorization" not in h and "proxy-authorization" not in h
    assert h["x-minihub-secret"] == [SECRET]
    assert h["x-forwarded-for"] == ["127.0.0.1"]
    assert h["x-forwarded-proto"] == ["http"]
    assert h["x-forwarded-host"] == ["hub.example.org:8443"]
    assert h["host"] == ["hub.example.org:8443"]
    assert "forwarded" not in h and "x-private" not in h and "te" not in h
    assert h["x-custom"] == ["kept"]


async def test_only_hub_cookie_means_no_cookie_header(hub: Client) -> None:
    r = await hub.get("/user/x/echo", headers={"Cookie": f"{HUB_COOKIE}=v"})
    assert "cookie" not in (await r.json())["headers"]


async def test_response_headers(hub: Client) -> None:
    r = await hub.get("/user/x/headers", allow_redirects=False)
    assert r.status == 302
    assert r.headers["Location"] == "/user/x/echo?a=1"
    assert r.headers["Content-Security-Policy"] == "frame-ancestors 'self'"
    assert "Keep-Alive" not in r.headers
    cookies = r.headers.getall("Set-Cookie")
    assert len(cookies) == 1 and cookies[0].startswith("_xsrf=ok")


async def test_secret_is_required_upstream(
    up_server: TestServer, aiohttp_client: Callable[..., Awaitable[Client]]
) -> None:
    assert up_server.port is not None
    hub = await aiohttp_client(hub_app(Upstream("127.0.0.1", up_server.port, "wrong")))
    r = await hub.get("/user/x/echo", headers={"X-Minihub-Secret": SECRET})
    assert r.status == 403


async def test_connection_reuse(hub: Client, up_server: TestServer) -> None:
    peers = set()
    for _ in range(5):
        r = await hub.get("/user/x/echo")
        assert r.status == 200
        await r.read()
    # the upstream server saw every request arrive on one kept-alive connection
    for conn in up_server.runner.server.connections if up_server.runner.server else []:
        peers.add(id(conn))
    assert len(peers) == 1


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def _gen(total: int) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        part = CHUNK[: min(len(CHUNK), total - sent)]
        sent += len(part)
        yield part


def _sha_of(total: int) -> str:
    d = hashlib.sha256()
    for i in range(0, total, len(CHUNK)):
        d.update(CHUNK[: min(len(CHUNK), total - i)])
    return d.hexdigest()


@pytest.mark.parametrize("length", [False, True])
async def test_streamed_download_keeps_memory_flat(hub: Client, length: bool) -> None:
    total = 300 * MB + 12345
    base, peak, got = _rss(), 0, 0
    r = await hub.get(f"/user/x/download?n={total}" + ("&length=1" if length else ""))
    assert r.status == 200
    assert ("Content-Length" in r.headers) is length
    assert (r.headers.get("Transfer-Encoding") == "chunked") is not length
    n = 0
    async for chunk in r.content.iter_chunked(1 * MB):
        got += len(chunk)
        n += 1
        if n % 16 == 0:
            peak = max(peak, _rss())
    assert got == total
    assert peak - base < 64 * MB


@pytest.mark.parametrize("length", [False, True])
async def test_streamed_upload_keeps_memory_flat(hub: Client, length: bool) -> None:
    total = 300 * MB + 777
    base = _rss()
    peak = base
    headers = {"Content-Length": str(total)} if length else {}

    async def body() -> AsyncIterator[bytes]:
        nonlocal peak
        n = 0
        async for part in _gen(total):
            n += 1
            if n % 64 == 0:
                peak = max(peak, _rss())
            yield part

    r = await hub.post("/user/x/upload", data=body(), headers=headers)
    assert r.status == 200
    got = await r.json()
    assert got == {"n": total, "sha": _sha_of(total), "chunked": not length}
    assert peak - base < 64 * MB


async def test_refused_connection_is_503(aiohttp_client: Callable[..., Awaitable[Client]]) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    hub = await aiohttp_client(hub_app(Upstream("127.0.0.1", port, SECRET)))
    for path in ("/user/x/api/status", "/user/x/ws"):
        r = await hub.get(
            path,
            headers={
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            }
            if path.endswith("ws")
            else None,
        )
        assert r.status == 503
        body = await r.json()
        assert body["status"] == 503 and "not running" in body["message"]
        assert "Traceback" not in json.dumps(body)


async def test_death_before_headers_is_502(hub: Client) -> None:
    r = await hub.get("/user/x/die?early=1")
    assert r.status == 502
    assert (await r.json())["status"] == 502


@pytest.mark.parametrize("length", [False, True])
async def test_death_mid_response_aborts_client(hub: Client, length: bool) -> None:
    r = await hub.get("/user/x/die" + ("?length=1" if length else ""))
    assert r.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await r.read()
    r = await hub.get("/user/x/echo")  # the hub and its pool are fine afterwards
    assert r.status == 200


# ---------------------------------------------------------------- websockets


async def test_ws_text_binary_and_subprotocol(hub: Client, up_server: TestServer) -> None:
    async with hub.ws_connect("/user/x/ws", protocols=("other", V1)) as ws:
        assert ws.protocol == V1
        await ws.send_str("héllo")
        assert await ws.receive_str(timeout=5) == "héllo"
        await ws.send_bytes(b"\x00\x01binary")
        assert await ws.receive_bytes(timeout=5) == b"\x00\x01binary"
        big = os.urandom(3 * MB)
        await ws.send_bytes(big)
        assert await ws.receive_bytes(timeout=5) == big
    assert up_state(up_server)["protocol"] == V1
    assert len(hub.app[ACTIVITY]) >= 1


async def test_ws_no_subprotocol(hub: Client, up_server: TestServer) -> None:
    async with hub.ws_connect("/user/x/ws") as ws:
        assert ws.protocol is None
        await ws.send_str("a")
        assert await ws.receive_str(timeout=5) == "a"
    assert up_state(up_server)["protocol"] is None


async def test_ws_close_code_from_upstream(hub: Client) -> None:
    async with hub.ws_connect("/user/x/ws") as ws:
        await ws.send_str("close:4001")
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == 4001 and msg.extra == "bye"


async def test_ws_close_code_from_client(hub: Client, up_server: TestServer) -> None:
    ws = await hub.ws_connect("/user/x/ws")
    await ws.send_str("x")
    await ws.receive_str(timeout=5)
    await ws.close(code=4002, message=b"done")
    await asyncio.wait_for(up_state(up_server)["ws_closed"].wait(), 5)
    assert up_state(up_server)["close_code"] == 4002


async def test_ws_upstream_death_closes_client(hub: Client) -> None:
    async with hub.ws_connect("/user/x/ws") as ws:
        await ws.send_str("die")
        msg = await ws.receive(timeout=10)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data in (1001, 1011)
    r = await hub.get("/user/x/echo")  # the hub is fine afterwards
    assert r.status == 200


async def test_client_gone_mid_download(hub: Client, up_server: TestServer) -> None:
    r = await hub.get(f"/user/x/download?n={200 * MB}")
    assert r.status == 200
    await r.content.readexactly(MB)
    r.close()  # the client hangs up with most of the body unsent
    # the upstream's download handler is released rather than left blocked on a full pipe
    await asyncio.wait_for(up_state(up_server)["download_ended"].wait(), 10)
    r = await hub.get("/user/x/echo")
    assert r.status == 200


async def test_ws_ping_pong_both_ways(hub: Client) -> None:
    async with hub.ws_connect("/user/x/ws", autoping=False) as ws:
        await ws.ping(b"from-client")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.PONG, b"from-client")
        await ws.send_str("ping-me")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.PING, b"from-upstream")


async def test_ws_activity_is_rate_limited(hub: Client) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with hub.ws_connect("/user/x/ws") as ws:
        for i in range(200):
            await ws.send_str(str(i))
            assert await ws.receive_str(timeout=5) == str(i)
    elapsed = loop.time() - start
    calls = len(hub.app[ACTIVITY])
    assert 1 <= calls <= 2 + elapsed  # at most about once a second


async def test_ws_refused_by_upstream_passes_status(
    up_server: TestServer, aiohttp_client: Callable[..., Awaitable[Client]]
) -> None:
    assert up_server.port is not None
    hub = await aiohttp_client(hub_app(Upstream("127.0.0.1", up_server.port, "wrong")))
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await hub.ws_connect("/user/x/ws")
    assert info.value.status == 403


async def _raw_ws_that_never_reads(port: int) -> socket.socket:
    """A websocket client with a tiny receive buffer that stops reading after the handshake."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(s, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(
        s,
        (
            "GET /user/x/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode(),
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += await asyncio.wait_for(loop.sock_recv(s, 1), 5)
    assert head.startswith(b"HTTP/1.1 101")
    return s


def _client_frame(text: str) -> bytes:
    payload = text.encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


async def test_ws_slow_client_backpressure(hub: Client, up_server: TestServer) -> None:
    """A flood to a client that never reads stalls the upstream instead of filling the hub,
    and other connections keep working meanwhile."""
    state = up_state(up_server)
    assert hub.port is not None
    base = _rss()
    s = await _raw_ws_that_never_reads(hub.port)
    flood = 800  # 200 MB in 256 KB frames
    try:
        await asyncio.get_running_loop().sock_sendall(s, _client_frame(f"flood:{flood}"))
        last, still = -1, 0
        for _ in range(100):  # wait (bounded) until the upstream's sends stop progressing
            await asyncio.sleep(0.1)
            sent = state.get("flood_sent", 0)
            still = still + 1 if sent == last else 0
            last = sent
            if still >= 5 or state.get("flood_done"):
                break
        assert not state.get("flood_done")
        assert state["flood_sent"] < 40 * MB
        assert _rss() - base < 64 * MB
        # other clients are not blocked by the stalled one
        r = await hub.get("/user/x/echo")
        assert r.status == 200
        async with hub.ws_connect("/user/x/ws") as ws:
            await ws.send_str("still here")
            assert await ws.receive_str(timeout=5) == "still here"
    finally:
        s.close()
    await asyncio.wait_for(state["flood_ended"].wait(), 10)  # the hub let go of it


# ---------------------------------------------------------------- the hub's event loop


async def _loop_kind() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_hub_runs_on_uvloop_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    from minihub.serve import run

    pytest.importorskip("uvloop")
    assert run(_loop_kind()).startswith("uvloop")
    monkeypatch.setenv("MINIHUB_EVENT_LOOP", "asyncio")
    assert run(_loop_kind()).startswith("asyncio")


async def _smoke() -> str:
    """The proxy's main paths, for a run on the loop the hub process uses (uvloop)."""
    runners = []
    try:
        up = web.AppRunner(upstream_app())
        await up.setup()
        runners.append(up)
        await web.TCPSite(up, "127.0.0.1", 0).start()
        up_port = up.addresses[0][1]
        up.app[STATE]["port"] = up_port
        hub_runner = web.AppRunner(hub_app(Upstream("127.0.0.1", up_port, SECRET)))
        await hub_runner.setup()
        runners.append(hub_runner)
        await web.TCPSite(hub_runner, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{hub_runner.addresses[0][1]}"
        async with aiohttp.ClientSession() as s, asyncio.timeout(60):
            r = await s.get(base + "/user/x/echo", headers={"Authorization": "token t"})
            got = await r.json()
            assert got["headers"]["x-minihub-secret"] == [SECRET]
            assert "authorization" not in got["headers"]
            total = 20 * MB + 3
            r = await s.post(base + "/user/x/upload", data=_gen(total))
            assert await r.json() == {"n": total, "sha": _sha_of(total), "chunked": True}
            for length in ("", "&length=1"):
                r = await s.get(f"{base}/user/x/download?n={total}{length}")
                assert len(await r.read()) == total
            r = await s.head(base + "/user/x/download?n=1000&length=1")
            assert r.headers["Content-Length"] == "1000" and await r.read() == b""
            r = await s.get(base + "/user/x/die")
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()
            async with s.ws_connect(base + "/user/x/ws", protocols=(V1,)) as ws:
                assert ws.protocol == V1
                await ws.send_bytes(b"\x00bin")
                assert await ws.receive_bytes() == b"\x00bin"
                await ws.send_str("close:4003")
                msg = await ws.receive()
                assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 4003)
        return await _loop_kind()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


def test_proxy_on_uvloop() -> None:
    from minihub.serve import run

    pytest.importorskip("uvloop")
    assert run(_smoke()).startswith("uvloop")


# ---------------------------------------------------------------- HTTP/1.1 edge cases
# A scripted server on raw sockets sends what aiohttp's server never would (interim
# responses, trailers, broken framing, early closes), to test the proxy's own client.


@dataclass
class Reply:
    data: bytes = b""
    close: bool = False  # close the connection after sending `data`
    read_body: bool = True  # False: answer as soon as the head arrived
    only_first: bool = False  # a later request on the same connection gets no answer
    hang: bool = False  # never answer


def ok(body: bytes = b"ok", extra: str = "") -> Reply:
    return Reply(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body)


class RawUpstream:
    def __init__(self) -> None:
        self.replies: dict[str, Reply] = {}
        self.seen: list[tuple[int, str, str, bytes]] = []  # (connection, method, path, body)
        self.truncated: list[tuple[str, int]] = []  # (path, body bytes) of cut-off requests
        self.heads: list[str] = []  # paths of request heads received, bodies read or not
        self._conns = 0
        self._writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self._writers:
            w.close()
        await self.server.wait_closed()

    def conns(self, path: str) -> list[int]:
        return [c for c, _, p, _ in self.seen if p == path]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns += 1
        self._writers.append(writer)
        conn, n = self._conns, 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ")
                path = target.split("?")[0]
                self.heads.append(path)
                reply = self.replies[path]
                if reply.only_first and n:
                    return  # closes the connection without an answer
                if reply.hang:
                    await reader.read()  # until the proxy gives up on us
                    return
                body = await _read_body(reader, head, path, self) if reply.read_body else b""
                self.seen.append((conn, method, path, body))
                n += 1
                writer.write(reply.data)
                await writer.drain()
                if reply.close:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


async def _read_body(
    reader: asyncio.StreamReader, head: bytes, path: str, up: RawUpstream
) -> bytes:
    low = head.lower()
    got = b""
    try:
        if b"transfer-encoding: chunked" in low:
            while True:
                size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
                if not size:
                    await reader.readuntil(b"\r\n")
                    return got
                got += await reader.readexactly(size)
                await reader.readexactly(2)
        m = __import__("re").search(rb"content-length: *(\d+)", low)
        if m:
            total = int(m[1])
            while len(got) < total:
                part = await reader.read(total - len(got))
                if not part:
                    raise asyncio.IncompleteReadError(got, total)
                got += part
        return got
    except (asyncio.IncompleteReadError, ConnectionError):
        up.truncated.append((path, len(got)))
        raise


@pytest.fixture
async def raw() -> AsyncIterator[RawUpstream]:
    up = RawUpstream()
    await up.start()
    yield up
    await up.stop()


@pytest.fixture
async def raw_hub(raw: RawUpstream, aiohttp_client: Callable[..., Awaitable[Client]]) -> Client:
    assert raw.server is not None
    port = raw.server.sockets[0].getsockname()[1]
    return await aiohttp_client(hub_app(Upstream("127.0.0.1", port, SECRET), read_timeout=2))


async def _get(hub: Client, path: str, method: str = "GET", **kw: Any) -> tuple[int, bytes]:
    r = await hub.request(method, path, **kw)
    return r.status, await r.read()


async def test_interim_responses_are_skipped(raw: RawUpstream, raw_hub: Client) -> None:
    raw.replies["/user/x/hints"] = Reply(
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Real: 1\r\n\r\nok"
    )
    for _ in range(2):
        r = await raw_hub.get("/user/x/hints")
        assert (r.status, await r.read(), r.headers["X-Real"]) == (200, b"ok", "1")
        assert "Link" not in r.headers
    assert len(set(raw.conns("/user/x/hints"))) == 1  # and the connection was reused


async def test_bodiless_responses_and_reuse(raw: RawUpstream, raw_hub: Client) -> None:
    raw.replies["/user/x/head"] = Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    raw.replies["/user/x/204"] = Reply(b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n")
    raw.replies["/user/x/304"] = Reply(
        b'HTTP/1.1 304 Not Modified\r\nETag: "e"\r\nContent-Length: 50\r\n\r\n'
    )
    raw.replies["/user/x/ok"] = ok()
    r = await raw_hub.head("/user/x/head")
    assert (r.status, r.headers["Content-Length"], await r.read()) == (200, "1000", b"")
    assert await _get(raw_hub, "/user/x/204") == (204, b"")
    r = await raw_hub.get("/user/x/304")
    assert (r.status, r.headers["ETag"], await r.read()) == (304, '"e"', b"")
    assert await _get(raw_hub, "/user/x/ok") == (200, b"ok")
    # no response left the proxy waiting for a body that never comes: one connection
    assert len({c for c, *_ in raw.seen}) == 1


async def test_chunked_response_with_extensions_and_trailers(
    raw: RawUpstream, raw_hub: Client
) -> None:
    raw.replies["/user/x/chunked"] = Reply(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: abc\r\nX-More: 1\r\n\r\n"
    )
    raw.replies["/user/x/ok"] = ok()
    r = await raw_hub.get("/user/x/chunked")
    assert (r.status, await r.read()) == (200, b"hello world")
    assert "X-Sum" not in r.headers and "Trailer" not in r.headers
    assert await _get(raw_hub, "/user/x/ok") == (200, b"ok")
    assert len({c for c, *_ in raw.seen}) == 1


async def test_connection_close_and_http10(raw: RawUpstream, raw_hub: Client) -> None:
    raw.replies["/user/x/close"] = ok(b"bye", "Connection: close\r\n")
    raw.replies["/user/x/old"] = Reply(
        b"HTTP/1.0 200 OK\r\nX-Old: 1\r\n\r\n" + b"z" * 100_000, close=True
    )
    assert await _get(raw_hub, "/user/x/close") == (200, b"bye")
    assert await _get(raw_hub, "/user/x/old") == (200, b"z" * 100_000)  # read until close
    assert await _get(raw_hub, "/user/x/close") == (200, b"bye")
    assert len({c for c, *_ in raw.seen}) == 3


@pytest.mark.parametrize(
    "reply",
    [
        Reply(close=True),  # closed before any answer
        Reply(b"HTTP/1.1 2OO OK\r\n\r\n"),
        Reply(b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n"),
        Reply(b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n"),
        Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
        Reply(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
        Reply(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"),
        Reply(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"),
        Reply(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"),
        Reply(b"HTTP/1.1 103 Early Hints\r\n\r\n" * 9 + ok().data),
    ],
)
async def test_broken_responses_are_502_and_the_next_request_works(
    raw: RawUpstream, raw_hub: Client, reply: Reply
) -> None:
    raw.replies["/user/x/bad"] = reply
    raw.replies["/user/x/ok"] = ok()
    r = await raw_hub.get("/user/x/bad")
    assert r.status == 502
    assert (await r.json())["status"] == 502
    assert await _get(raw_hub, "/user/x/ok") == (200, b"ok")
    assert await _get(raw_hub, "/user/x/ok") == (200, b"ok")
    assert len(set(raw.conns("/user/x/ok"))) == 1  # a good connection is reused again


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"a" * 70_000,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabcd\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n0\r\n\r\n",
    ],
)
async def test_body_cut_short_aborts_the_client(
    raw: RawUpstream, raw_hub: Client, data: bytes
) -> None:
    raw.replies["/user/x/cut"] = Reply(data, close=True)
    raw.replies["/user/x/ok"] = ok()
    r = await raw_hub.get("/user/x/cut")
    assert r.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await r.read()
    assert await _get(raw_hub, "/user/x/ok") == (200, b"ok")


async def test_stale_keepalive_connection_is_retried_for_idempotent_requests(
    raw: RawUpstream, raw_hub: Client
) -> None:
    # the server drops every connection after one answer, without saying so: the proxy's
    # pooled connection is dead when the next request is written to it
    raw.replies["/user/x/once"] = Reply(ok().data, only_first=True)
    for _ in range(3):
        assert await _get(raw_hub, "/user/x/once") == (200, b"ok")
    assert len(set(raw.conns("/user/x/once"))) == 3
    # a request with a body is never sent twice: its failure is the client's to see
    r = await raw_hub.post("/user/x/once", data=b"x" * 10)
    assert r.status == 502
    r = await raw_hub.post("/user/x/once", data=b"x" * 10)
    assert r.status == 200  # on a new connection


async def test_read_timeout_is_504(raw: RawUpstream, raw_hub: Client) -> None:
    raw.replies["/user/x/slow"] = Reply(hang=True)
    raw.replies["/user/x/ok"] = ok()
    r = await raw_hub.get("/user/x/slow")
    assert r.status == 504
    assert await _get(raw_hub, "/user/x/ok") == (200, b"ok")


async def test_early_answer_without_reading_the_body(raw: RawUpstream, raw_hub: Client) -> None:
    raw.replies["/user/x/reject"] = Reply(
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!", read_body=False
    )
    raw.replies["/user/x/ok"] = ok()
    r = await raw_hub.post("/user/x/reject", data=b"b" * 200_000)
    assert (r.status, await r.read()) == (413, b"big!")
    assert await _get(raw_hub, "/user/x/ok") == (200, b"ok")
    # the half-sent body makes that connection unusable: the next request used another
    assert raw.conns("/user/x/ok")[0] != raw.seen[0][0]


@pytest.mark.parametrize("chunked", [False, True])
async def test_client_hanging_up_mid_upload_never_completes_the_upstream_body(
    raw: RawUpstream, raw_hub: Client, chunked: bool
) -> None:
    raw.replies["/user/x/put"] = ok()
    assert raw_hub.port is not None
    framing = (
        "Transfer-Encoding: chunked\r\n\r\n" + "1000\r\n"
        if chunked
        else "Content-Length: 1000000\r\n\r\n"
    )
    _, w = await asyncio.open_connection("127.0.0.1", raw_hub.port)
    w.write(f"PUT /user/x/put HTTP/1.1\r\nHost: h\r\n{framing}".encode() + b"p" * 4096)
    await w.drain()
    async with asyncio.timeout(10):
        while not raw.heads:  # the proxy is forwarding the request
            await asyncio.sleep(0.02)
        w.close()
        while not (raw.truncated or raw.seen):
            await asyncio.sleep(0.02)
    assert raw.seen == [] and raw.truncated[0][0] == "/user/x/put"


async def test_request_body_framing_to_upstream(raw: RawUpstream, raw_hub: Client) -> None:
    raw.replies["/user/x/echo"] = ok()
    assert await _get(raw_hub, "/user/x/echo", "POST", data=b"") == (200, b"ok")
    assert await _get(raw_hub, "/user/x/echo", "POST", data=b"abc") == (200, b"ok")
    assert await _get(raw_hub, "/user/x/echo", "POST", data=_gen(3 * MB + 1)) == (200, b"ok")
    bodies = [b for *_, b in raw.seen]
    assert [len(b) for b in bodies] == [0, 3, 3 * MB + 1]
    assert len({c for c, *_ in raw.seen}) == 1


async def test_pooled_connection_closed_by_server_is_not_used(
    raw: RawUpstream, raw_hub: Client
) -> None:
    # the server closes after answering, without Connection: close; the idle connection
    # sees the close, so even a request with a body (never retried) gets a new connection
    raw.replies["/user/x/bye"] = Reply(ok().data, close=True)
    assert await _get(raw_hub, "/user/x/bye") == (200, b"ok")
    pool = raw_hub.app[PROXY]._pool
    async with asyncio.timeout(10):
        while any(c.usable() for idle in pool._idle.values() for c in idle):
            await asyncio.sleep(0.02)
    assert await _get(raw_hub, "/user/x/bye", "POST", data=b"body") == (200, b"ok")
    assert len({c for c, *_ in raw.seen}) == 2


async def test_credential_rechecks_are_one_pass_at_a_time() -> None:
    """Every logout and token deletion asks open websockets' credentials again: a burst of
    them (a create-and-delete loop) must not start a pass, each a store query per
    websocket, for every one, only the pass running and one more after it."""
    from minihub.proxy import _WsCheck

    proxy = Proxy()
    asked = 0

    async def signed_in() -> bool:
        nonlocal asked
        asked += 1
        await asyncio.sleep(0.01)
        return True

    proxy._ws_allowed[object()] = _WsCheck(None, signed_in)  # type: ignore[index]
    try:
        for _ in range(100):
            proxy.recheck_credentials()
            await asyncio.sleep(0)
        while proxy._rechecks:
            await asyncio.gather(*proxy._rechecks)
        assert 1 <= asked <= 2, asked
    finally:
        proxy._ws_allowed.clear()
        await proxy.close()
