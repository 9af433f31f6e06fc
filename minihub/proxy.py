"""The in-process reverse proxy: /user/<name>/... HTTP requests and websockets to user servers.

The hub authenticates a request, normalises its path with `normalise_path`, then calls
`Proxy.forward` with the user server's `Upstream`; bodies and frames stream, never buffer.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from . import proxy_client as pc
from . import trust
from .errors import BadRequest, HubError
from .singleuser import PROOF_HEADER, SECRET_HEADER

log = logging.getLogger(__name__)

CHUNK_SIZE = 256 * 1024  # upstream read buffer: large reads, few syscalls and writes
SMALL_BODY = 64 * 1024  # bodies up to this size are read whole and sent in one write
ACTIVITY_EVERY = 1.0  # seconds between on_activity calls for one connection

# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection and are never forwarded.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
# What a client may not send to a user server: hub credentials, a forged secret, forged
# forwarding information (the proxy sets its own) and headers the proxy rebuilds itself.
_REQUEST_DROP = _HOP_BY_HOP | {
    "authorization",
    SECRET_HEADER.lower(),
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-real-ip",
    "expect",
    "cookie",
    "host",
}
_WS_REQUEST_DROP = _REQUEST_DROP | {
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "sec-websocket-accept",
    "content-length",
}
_RESPONSE_DROP = _HOP_BY_HOP | {"content-length", PROOF_HEADER.lower()}
# The plain-HTTP path copies the client's raw header lines: the same names as bytes, plus
# the body framing, which it rewrites itself.
_HTTP_DROP = frozenset(n.encode() for n in _REQUEST_DROP | {"content-length"})
# A request target never contains controls or spaces (they would split the request line).
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")
# Close codes that may not be sent in a close frame (RFC 6455 7.4.1).
_UNSENDABLE_CLOSE = frozenset({0, 1005, 1006, 1015})

# %2E and %2F are decoded before dot-segments are resolved, so an encoded ".." cannot reach
# a server that decodes it after the hub chose a route on the raw text.
_ENCODED_DOT_SLASH = re.compile(r"%2[eEfF]")
# What a failed exchange with a user server can raise (aiohttp wraps most in ClientError).
_UPSTREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError)


class ProxyError(HubError):
    """The user server could not answer; rendered by the hub's error handler."""

    status = 502


class UpstreamUnavailable(ProxyError):
    """Connection refused or no route: the server is gone or not started."""

    status = 503


class UpstreamFailed(ProxyError):
    """The server broke the connection or sent something that is not HTTP."""

    status = 502


class UpstreamTimeout(ProxyError):
    """The server accepted the request but did not answer in time."""

    status = 504


class UpstreamNotGenuine(UpstreamFailed):
    """The answer lacks the server's proof: another process holds its port (it died)."""


# A websocket handshake the server would refuse anyway (RFC 6455 4.1): a base64 16-byte key.
_WS_KEY = re.compile(r"^[A-Za-z0-9+/]{22}==$")


@dataclass(frozen=True)
class Upstream:
    """A user server: it listens on host:port and requires `X-Minihub-Secret: <secret>`.

    With a `proof`, every answer must carry `X-Minihub-Proof: <proof>` or it is refused: the
    server the hub started has it, a process that bound the port after that server died
    does not (see minihub.singleuser's launch contract).
    """

    host: str
    port: int
    secret: str = field(repr=False)
    proof: str = field(default="", repr=False)
    scheme: str = "http"  # or "https": the server's certificate is verified
    origin: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        host = f"[{self.host}]" if ":" in self.host else self.host
        object.__setattr__(self, "origin", f"{self.scheme}://{host}:{self.port}")


def normalise_path(raw_path: str) -> str:
    """The path part of a raw request target, made canonical and still percent-encoded.

    `%2E`/`%2F` are decoded, `.`/`..` segments resolved (never above `/`), runs of `/`
    collapsed; other escapes are kept, so `%252F` stays a literal `%2F` in a name. A
    trailing slash is kept; a query string or fragment is dropped.
    """
    return _resolve(_decode_dot_slash(raw_path.split("?", 1)[0].split("#", 1)[0]))


def _decode_dot_slash(path: str) -> str:
    """`%2E` and `%2F` (either case) decoded, every other escape kept."""
    if "%" not in path:
        return path
    return _ENCODED_DOT_SLASH.sub(lambda m: "." if m[0][2] in "eE" else "/", path)


def _resolve(path: str) -> str:
    """`.`/`..` segments resolved (never above `/`), runs of `/` collapsed."""
    parts = path.split("/")
    out: list[str] = []
    for part in parts:
        if part == "..":
            if out:
                out.pop()
        elif part and part != ".":
            out.append(part)
    trailing = parts[-1] in ("", ".", "..") and bool(out)
    return "/" + "/".join(out) + ("/" if trailing else "")


def canonical_path(request: web.Request) -> str:
    """The request's path from normalise_path, unless that took a segment back (`.` or `..`,
    also encoded): then a GET or HEAD is redirected there and anything else is refused
    (400). A browser reads `..%2F` as part of a segment, so for
    `/user/ta/..%2Falice/tree` it sends the cookies of ta's server's URL space (a
    jupyterhub-singleuser OAuth cookie, which holds a token) to what normalises to alice's.
    """
    raw, _, query = request.raw_path.partition("?")
    decoded = _decode_dot_slash(raw)
    path = _resolve(decoded)
    if not any(part in (".", "..") for part in decoded.split("/")):
        # Only %2F decoded and runs of / collapsed: no segment of the browser's path is
        # taken back, so it is not sent another server's cookies (clients that encode the
        # whole file path, slashes too, keep working).
        return path
    if request.method in ("GET", "HEAD") and not _is_websocket(request):
        raise web.HTTPFound(path + (f"?{query}" if query else ""))
    raise BadRequest(f"Ask for this path as {path[:200]!r}: {raw[:200]!r} is not canonical.")


@dataclass
class _WsCheck:
    """What an open websocket is asked again: its permission, its credential."""

    allowed: Callable[[], bool] | None
    signed_in: Callable[[], Awaitable[bool]] | None
    revoked: asyncio.Event = field(default_factory=asyncio.Event)


class _Ticker:
    """Calls on_activity at most once per ACTIVITY_EVERY seconds."""

    __slots__ = ("_callback", "_loop", "_next")

    def __init__(self, callback: Callable[[], None] | None) -> None:
        self._callback = callback
        self._loop = asyncio.get_running_loop()
        self._next = 0.0

    def __call__(self) -> None:
        if self._callback is None:
            return
        now = self._loop.time()
        if now >= self._next:
            self._next = now + ACTIVITY_EVERY
            _touch(self._callback)


class Proxy:
    """Forwards requests to user servers over pooled keep-alive connections: plain HTTP
    through minihub.proxy_client, websockets through one aiohttp client session.

    Create it inside a running loop (e.g. in a cleanup_ctx) and `await close()` at shutdown.
    """

    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 300.0,
        ws_max_msg_size: int = 64 * 1024 * 1024,
        ws_close_timeout: float = 10.0,
        server_ca_file: str = "",
    ) -> None:
        self._ws_max_msg_size = ws_max_msg_size
        self._ws_close_timeout = ws_close_timeout
        self._websockets: dict[web.WebSocketResponse, aiohttp.ClientWebSocketResponse[Any]] = {}
        self._ws_allowed: dict[web.WebSocketResponse, _WsCheck] = {}
        self._rechecks: set[asyncio.Task[None]] = set()
        self._recheck_again = False
        # Plain HTTP goes through a lean keep-alive client: aiohttp's ClientSession costs
        # more CPU per request than the rest of the proxy; websockets stay on aiohttp.
        self._pool = pc.Pool(connect_timeout=connect_timeout, read_timeout=read_timeout)
        # Servers reached over https (e.g. pods with their own certificate) are verified
        # against the system's CAs, or the file [hub] server_ca_file names (made at first use).
        self._ca_file = server_ca_file
        # limit=0: every open websocket holds a connection; a cap would stall the next.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=15.0)
        self._session = aiohttp.ClientSession(
            connector=connector,
            # A shared jar would carry one user's cookies to another user's server.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(
                total=None, connect=connect_timeout, sock_read=read_timeout
            ),
            read_bufsize=CHUNK_SIZE,
            raise_for_status=False,
        )

    async def close(self) -> None:
        for task in list(self._rechecks):
            task.cancel()
        await self.close_websockets()
        await self._pool.close()
        await self._session.close()

    async def forward(
        self,
        request: web.Request,
        upstream: Upstream,
        *,
        path: str,
        strip_cookies: Collection[str] = (),
        on_activity: Callable[[], None] | None = None,
        keep_authorization: bool = False,
        cookie_path: str = "/",
        allowed: Callable[[], bool] | None = None,
        signed_in: Callable[[], Awaitable[bool]] | None = None,
    ) -> web.StreamResponse:
        """Send `request` to `upstream` at `path` (from normalise_path) plus its query string.

        Handles plain HTTP and websocket upgrades. Cookies named in `strip_cookies` and the
        Authorization header never reach the server, and it cannot set those cookies.
        `on_activity` is called once per HTTP request and at most once a second while a body
        or a websocket is flowing.
        Raises a ProxyError (503/502/504) if no response was started; if the server fails
        after the response started, the client connection is aborted instead.
        `keep_authorization` forwards the client's Authorization header after all: for a
        server that authenticates API clients itself (jupyterhub-singleuser checks the token
        with the hub); the caller decides whose tokens may reach which server.
        The server may only set cookies for `cookie_path` and below (its own URL space),
        never for another path or a Domain.
        `allowed`: asked again for an open websocket by `recheck_websockets` (after a change
        of permissions); once it says False the websocket is closed (1008).
        `signed_in`: asked again for an open websocket by `recheck_credentials` (after a
        logout, a token's deletion, a password change): is the credential it was opened with
        still good? Once it says False the websocket is closed (1008).
        """
        if not path.startswith("/"):
            raise ValueError("path must start with /")
        raw = request.raw_path
        q = raw.find("?")
        target = path + raw[q:] if q >= 0 else path
        if _BAD_TARGET.search(target):
            raise BadRequest("Invalid characters in the request path.")
        policy = _CookiePolicy(frozenset(strip_cookies), cookie_path)
        if _is_websocket(request):
            _check_ws_handshake(request)
            url = URL(upstream.origin + target, encoded=True)
            keep = ("Authorization",) if keep_authorization else ()
            check = _WsCheck(allowed, signed_in)
            return await self._forward_ws(request, upstream, url, policy, on_activity, keep, check)
        return await self._forward_http(
            request, upstream, target, policy, on_activity, keep_authorization
        )

    async def _forward_http(
        self,
        request: web.Request,
        upstream: Upstream,
        target: str,
        policy: _CookiePolicy,
        on_activity: Callable[[], None] | None,
        keep_authorization: bool,
    ) -> web.StreamResponse:
        head, length, has_body = _request_head(
            request, upstream, target, policy.hub, keep_authorization
        )
        body = request.content if has_body else None
        try:
            up = await self._pool.request(
                upstream.host,
                upstream.port,
                request.method,
                head,
                body,
                length,
                trust.client_context(self._ca_file) if upstream.scheme == "https" else None,
            )
        except pc.UpstreamError as e:
            raise _upstream_error(e, upstream) from None
        try:
            return await _relay(request, up, upstream, policy, on_activity)
        except UpstreamNotGenuine:
            up.close()  # never reuse a connection to an impostor
            raise
        finally:
            up.release()

    async def _forward_ws(
        self,
        request: web.Request,
        upstream: Upstream,
        url: URL,
        policy: _CookiePolicy,
        on_activity: Callable[[], None] | None,
        keep: tuple[str, ...],
        check: _WsCheck,
    ) -> web.StreamResponse:
        headers = _request_headers(request, upstream, policy.hub, _WS_REQUEST_DROP, keep)
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        try:
            up_ws = await self._session.ws_connect(
                url,
                protocols=[p for p in offered if p],
                headers=headers,
                autoclose=False,
                autoping=False,
                max_msg_size=self._ws_max_msg_size,
                compress=0,
                decode_text=False,
                ssl=trust.client_context(self._ca_file) if upstream.scheme == "https" else True,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self._ws_close_timeout),
            )
        except aiohttp.WSServerHandshakeError as e:
            status = e.status if 400 <= e.status < 600 else 502
            raise ProxyError(f"The server refused the websocket ({e.status}).", status) from None
        except _UPSTREAM_ERRORS as e:
            raise _upstream_error(e, upstream) from None
        try:
            _check_proof(up_ws._response.headers.getall(PROOF_HEADER, ()), upstream)
        except UpstreamNotGenuine:
            await up_ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION)
            raise
        client_ws = web.WebSocketResponse(
            protocols=(up_ws.protocol,) if up_ws.protocol else (),
            autoclose=False,
            autoping=False,
            compress=False,
            max_msg_size=self._ws_max_msg_size,
            timeout=self._ws_close_timeout,
            decode_text=False,
        )
        try:
            await client_ws.prepare(request)
            self._websockets[client_ws] = up_ws
            if check.allowed is not None or check.signed_in is not None:
                self._ws_allowed[client_ws] = check
            await _bridge(client_ws, up_ws, _Ticker(on_activity), check.revoked)
        finally:
            self._websockets.pop(client_ws, None)
            self._ws_allowed.pop(client_ws, None)
            await up_ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)
        return client_ws

    def recheck_websockets(self) -> None:
        """Close (1008, policy violation) every websocket its `allowed` no longer allows:
        a revoked permission ends an open connection, not only the next request."""
        for client_ws, check in list(self._ws_allowed.items()):
            if check.allowed is not None and not check.allowed():
                self._revoke(client_ws, check)

    def recheck_credentials(self) -> None:
        """Close (1008) every websocket whose credential is no longer good, soon: each
        `signed_in` asks the store, so this runs as a task of its own."""
        if not any(c.signed_in for c in self._ws_allowed.values()):
            return
        if self._rechecks:  # one pass at a time; a change during it gets one more pass
            self._recheck_again = True
            return
        task = asyncio.get_running_loop().create_task(self._recheck_credentials())
        self._rechecks.add(task)
        task.add_done_callback(self._rechecks.discard)

    async def _recheck_credentials(self) -> None:
        while True:
            self._recheck_again = False
            await self._recheck_pass()
            if not self._recheck_again:
                return

    async def _recheck_pass(self) -> None:
        for client_ws, check in list(self._ws_allowed.items()):
            if check.signed_in is None or check.revoked.is_set():
                continue
            try:
                good = await check.signed_in()
            except Exception:  # unsure is not good: the client reconnects
                log.exception("checking a websocket's credential failed: closing it")
                good = False
            if not good:
                self._revoke(client_ws, check)

    def _revoke(self, client_ws: web.WebSocketResponse, check: _WsCheck) -> None:
        self._ws_allowed.pop(client_ws, None)
        check.revoked.set()  # the bridge stops relaying and closes both sides

    async def close_websockets(self) -> None:
        """Close every proxied websocket with 1001 (going away): clients reconnect.

        The server side goes first, so a kernel's output from then on waits in the user
        server's replay buffer instead of being relayed to a client that is leaving.
        """
        pairs = list(self._websockets.items())
        await asyncio.gather(
            *(up.close(code=aiohttp.WSCloseCode.GOING_AWAY) for _, up in pairs),
            return_exceptions=True,
        )
        await asyncio.gather(
            *(
                c.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"hub restarting")
                for c, _ in pairs
            ),
            return_exceptions=True,
        )


def _is_websocket(request: web.Request) -> bool:
    return (
        request.headers.get("Upgrade", "").lower() == "websocket"
        and "upgrade" in request.headers.get("Connection", "").lower()
    )


def _check_ws_handshake(request: web.Request) -> None:
    """Refuse, as the client's fault, a handshake no server could accept (it was a 502)."""
    if request.method != "GET":
        raise BadRequest("A websocket handshake must be a GET request.")
    if request.headers.get("Sec-WebSocket-Version", "").strip() != "13":
        raise BadRequest("Unsupported websocket version: send Sec-WebSocket-Version: 13.")
    if not _WS_KEY.match(request.headers.get("Sec-WebSocket-Key", "").strip()):
        raise BadRequest("Missing or invalid Sec-WebSocket-Key in the websocket handshake.")


def _check_proof(values: Collection[str], upstream: Upstream) -> None:
    if not upstream.proof:
        return
    if len(values) == 1 and hmac.compare_digest(
        next(iter(values)).encode(), upstream.proof.encode()
    ):
        return
    log.warning(
        "answer from %s without the server's proof: another process holds its port", upstream
    )
    raise UpstreamNotGenuine("The server's port is held by another process: it has stopped.")


@dataclass(frozen=True)
class _CookiePolicy:
    """Which cookies never cross the proxy (`hub`), and where a server may set its own."""

    hub: frozenset[str]
    path: str

    def allows(self, set_cookie: str) -> bool:
        name, _, rest = set_cookie.partition("=")
        if name.strip() in self.hub:
            return False
        for attr in rest.split(";")[1:]:
            key, _, value = attr.partition("=")
            key = key.strip().lower()
            if key == "domain":
                return False
            if key == "path" and not _within(value.strip(), self.path):
                return False
        return True


def _within(path: str, prefix: str) -> bool:
    """`path` is `prefix` (with or without its final slash) or below it."""
    return path == prefix.rstrip("/") or path.startswith(
        prefix if prefix.endswith("/") else prefix + "/"
    )


def _request_headers(
    request: web.Request,
    upstream: Upstream,
    strip_cookies: Collection[str],
    drop: frozenset[str],
    keep: tuple[str, ...] = (),
) -> CIMultiDict[str]:
    src = request.headers
    extra = _connection_tokens(src.get("Connection"))
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in src.items():
        low = name.lower()
        if low not in drop and (extra is None or low not in extra):
            out.add(name, value)
    out["Host"] = request.host
    cookie = _filter_cookies(src.getall("Cookie", ()), strip_cookies)
    if cookie:
        out["Cookie"] = cookie
    out["X-Forwarded-For"] = request.remote or ""
    out["X-Forwarded-Proto"] = request.scheme
    out["X-Forwarded-Host"] = request.host
    if upstream.secret:  # a user server's; a service (minihub.service_proxy) has none
        out[SECRET_HEADER] = upstream.secret
    for name in keep:
        if name in src:
            out[name] = src[name]
    return out


def _request_head(
    request: web.Request,
    upstream: Upstream,
    target: str,
    strip_cookies: Collection[str],
    keep_authorization: bool,
) -> tuple[bytes, int | None, bool]:
    """The request head for the server from the client's raw header lines, and its body
    framing: (head, Content-Length or None for chunked, whether a body follows)."""
    tokens = _connection_tokens(request.headers.get("Connection"))
    extra = frozenset(t.encode() for t in tokens) if tokens else None
    out = [f"{request.method} {target} HTTP/1.1\r\n".encode("utf-8", "surrogateescape")]
    cookies, length, chunked = [], None, False
    for name, value in request.raw_headers:
        low = name.lower()
        if low in _HTTP_DROP:
            if low == b"cookie":
                cookies.append(value.decode("utf-8", "surrogateescape"))
            elif low == b"content-length":
                length = int(value)  # aiohttp's parser checked it is digits
            elif low == b"transfer-encoding":
                chunked = True
            elif low == b"authorization" and keep_authorization:
                out.append(name + b": " + value + b"\r\n")
        elif extra is None or low not in extra:
            out.append(name + b": " + value + b"\r\n")
    host = request.host
    cookie = _filter_cookies(cookies, strip_cookies) if cookies else ""
    out.append(
        (
            f"Host: {host}\r\n"
            + (f"Cookie: {cookie}\r\n" if cookie else "")
            + f"X-Forwarded-For: {request.remote or ''}\r\n"
            f"X-Forwarded-Proto: {request.scheme}\r\n"
            f"X-Forwarded-Host: {host}\r\n"
            + (f"{SECRET_HEADER}: {upstream.secret}\r\n" if upstream.secret else "")
            + (
                "Transfer-Encoding: chunked\r\n\r\n"
                if chunked
                else f"Content-Length: {length}\r\n\r\n"
                if length is not None
                else "\r\n"
            )
        ).encode("utf-8", "surrogateescape")
    )
    if chunked:
        return b"".join(out), None, True
    return b"".join(out), length, bool(length)


def _connection_tokens(value: str | None) -> frozenset[str] | None:
    """Header names listed in Connection, which are hop-by-hop for this message."""
    if not value or "," not in value and value.lower() in ("keep-alive", "close", "upgrade"):
        return None
    return frozenset(t.strip().lower() for t in value.split(","))


def _filter_cookies(values: Collection[str], strip: Collection[str]) -> str:
    kept = []
    for value in values:
        for item in value.split(";"):
            item = item.strip()
            if item and item.split("=", 1)[0].strip() not in strip:
                kept.append(item)
    return "; ".join(kept)


def _response_headers(
    pairs: list[tuple[str, str]], upstream: Upstream, policy: _CookiePolicy
) -> list[tuple[str, str]]:
    """The server's headers for the client (a list: the response builds its CIMultiDict).
    Raises UpstreamNotGenuine if the server's proof is missing or wrong."""
    out = []
    proofs = []
    for name, value in pairs:
        low = name.lower()
        if low in _RESPONSE_DROP:
            if low == _PROOF:
                proofs.append(value)
            continue
        if low == "location" and value.startswith(upstream.origin):
            value = value[len(upstream.origin) :] or "/"
        elif low == "set-cookie" and not policy.allows(value):
            log.warning(
                "dropped a Set-Cookie outside %s from %s: %.40s",
                policy.path,
                upstream,
                value.split("=", 1)[0].encode("unicode_escape").decode(),
            )
            continue
        out.append((name, value))
    _check_proof(proofs, upstream)
    return out


_PROOF = PROOF_HEADER.lower()


async def _relay(
    request: web.Request,
    up: pc.Response,
    upstream: Upstream,
    policy: _CookiePolicy,
    on_activity: Callable[[], None] | None,
) -> web.StreamResponse:
    headers = _response_headers(up.headers, upstream, policy)
    length = up.content_length
    if on_activity is not None:
        _touch(on_activity)
    if length is not None and length <= SMALL_BODY and request.method != "HEAD":
        body = up.buffered_body()  # usually the whole body came with the head
        if body is None:
            try:
                body = await up.read_all()
            except pc.UpstreamError as e:
                raise _upstream_error(e, upstream) from None
        return web.Response(status=up.status, reason=up.reason, body=body, headers=headers)
    out = web.StreamResponse(status=up.status, reason=up.reason, headers=headers)
    if length is not None:
        out.content_length = length
    try:
        await out.prepare(request)
        await _stream_body(request, up, out, upstream, on_activity)
    except ConnectionResetError:
        up.close()  # the client went away: drop the half-read upstream connection too
    return out


async def _stream_body(
    request: web.Request,
    up: pc.Response,
    out: web.StreamResponse,
    upstream: Upstream,
    on_activity: Callable[[], None] | None,
) -> None:
    loop = asyncio.get_running_loop()
    next_tick = loop.time() + ACTIVITY_EVERY
    while True:
        try:
            chunk = await up.read()
        except pc.UpstreamError as e:
            _abort(request, up, upstream, e)
            return
        if not chunk:
            break
        await out.write(chunk)
        if on_activity is not None and loop.time() >= next_tick:
            next_tick = loop.time() + ACTIVITY_EVERY
            _touch(on_activity)
    await out.write_eof()


def _touch(on_activity: Callable[[], None]) -> None:
    try:
        on_activity()
    except Exception:  # a broken counter must not break the request
        log.exception("on_activity callback failed")


def _abort(request: web.Request, up: pc.Response, upstream: Upstream, exc: BaseException) -> None:
    """The server failed mid-response: cut the client off so it sees an incomplete body."""
    log.warning(
        "user server %s failed mid-response for %s %s: %s",
        upstream,
        request.method,
        request.path,
        type(exc).__name__,
    )
    up.close()
    if request.transport is not None:
        request.transport.abort()


def _upstream_error(exc: BaseException, upstream: Upstream) -> ProxyError:
    if isinstance(exc, (aiohttp.ClientConnectorError, ConnectionRefusedError, pc.ConnectFailed)):
        log.info("user server %s unavailable: %s", upstream, exc)
        return UpstreamUnavailable("The server is not running or not reachable.")
    if isinstance(exc, (asyncio.TimeoutError, pc.Timeout)):
        log.warning("user server %s timed out", upstream)
        return UpstreamTimeout("The server did not answer in time.")
    log.warning("user server %s failed: %s: %.200s", upstream, type(exc).__name__, exc)
    return UpstreamFailed("The server failed to answer.")


async def _bridge(
    client: web.WebSocketResponse,
    up: aiohttp.ClientWebSocketResponse[Any],
    tick: _Ticker,
    revoked: asyncio.Event,
) -> None:
    """Relay frames both ways until either side closes; each pump closes the other side.
    Once `revoked` is set the relaying stops and both sides are closed with 1008."""
    pumps = (
        asyncio.create_task(_pump(client, up, tick)),
        asyncio.create_task(_pump(up, client, tick)),
    )
    stop = asyncio.create_task(revoked.wait())
    relay = asyncio.gather(*pumps)
    try:
        await asyncio.wait((relay, stop), return_when=asyncio.FIRST_COMPLETED)
        if relay.done():
            await relay  # a pump's error, as before
    finally:
        for task in (*pumps, stop):
            task.cancel()
        await asyncio.gather(relay, stop, return_exceptions=True)
    if revoked.is_set():
        code = aiohttp.WSCloseCode.POLICY_VIOLATION
        await client.close(code=code, message=b"access revoked")
        await up.close(code=code)


_WS = web.WebSocketResponse | aiohttp.ClientWebSocketResponse[Any]


async def _pump(src: _WS, dst: _WS, tick: _Ticker) -> None:
    """Copy frames from src to dst. Each send awaits the writer's drain, so a slow reader on
    dst stops us reading src, and src's own flow control then stops its peer."""
    try:
        while True:
            msg = await src.receive()
            kind = msg.type
            if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                await dst.send_frame(msg.data, kind)
            elif kind is WSMsgType.PING:
                await dst.ping(msg.data)
            elif kind is WSMsgType.PONG:
                await dst.pong(msg.data)
            elif kind is WSMsgType.CLOSE:
                code = msg.data if msg.data not in _UNSENDABLE_CLOSE else 1000
                reason = (msg.extra or "").encode()[:123]
                await dst.close(code=code, message=reason)
                await src.close(code=code, message=reason)
                return
            elif kind is WSMsgType.CLOSING:
                return  # the other pump is closing src
            else:  # CLOSED or ERROR: src vanished without a close frame
                await dst.close(
                    code=aiohttp.WSCloseCode.INTERNAL_ERROR
                    if kind is WSMsgType.ERROR
                    else aiohttp.WSCloseCode.GOING_AWAY
                )
                return
            tick()
    except ConnectionError:
        await src.close(code=aiohttp.WSCloseCode.GOING_AWAY)
