"""A lean keep-alive HTTP/1.1 client for the proxy's plain-HTTP path to user servers.

Idle connections are pooled per upstream address; bodies stream both ways with flow control;
a connection is reused only after its response was read whole and its request body sent.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import Callable
from typing import cast

from aiohttp import StreamReader

Key = tuple[str, int, "ssl.SSLContext | None"]  # host, port, TLS (None: plain HTTP)
MAX_HEAD = 64 * 1024  # status line + headers of one response
MAX_LINE = 4 * 1024  # one chunk-size line or trailer line
READ_HIGH = 512 * 1024  # stop reading the socket while this much sits unconsumed
SEND_CHUNK = 256 * 1024  # request body pieces taken from the client at once
MAX_INTERIM = 8  # 1xx responses before the final one
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

# A response head, checked in two linear passes (not one match per line): the status line,
# then CRLF-separated lines that each start with a header name and a colon (no obs-fold, no
# space before the colon) and hold no control characters but tab.
_STATUS_LINE = re.compile(r"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
_HEADER_LINES = re.compile(r"(?:\r\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*)*")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?")


class UpstreamError(Exception):
    """The exchange with the server failed; `Proxy` turns it into a 502/503/504."""


class ConnectFailed(UpstreamError):
    """Nothing accepted the connection (refused, unreachable)."""


class Timeout(UpstreamError):
    """Connecting, or waiting for the next bytes of the response, took too long."""


class Disconnected(UpstreamError):
    """The server closed the connection before the response was complete."""


class BadResponse(UpstreamError):
    """What the server sent is not an HTTP/1.1 response this client accepts."""


class _Conn(asyncio.Protocol):
    """One connection: buffers what the server sends and wakes the single reader."""

    def __init__(self, loop: asyncio.AbstractEventLoop, key: Key) -> None:
        self.loop = loop
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.eof = False
        self.active = True  # a request is using it; bytes while idle are a protocol error
        self.answered = False  # bytes arrived since it was last taken from the pool
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._read_paused = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None

    # --- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if not self.active:  # nothing was asked: the stream is out of step
            self.close()
            return
        self.buf += data
        self.answered = True
        if len(self.buf) >= READ_HIGH and not self._read_paused and self.transport:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.transport = None
        self._wake()
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(Disconnected("connection lost while sending"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # --- used by the exchange
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def usable(self) -> bool:
        return not self.eof and self.transport is not None and not self.transport.is_closing()

    def resume_reading(self) -> None:
        if self._read_paused and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.eof = True
        if self.transport is not None:
            self.transport.abort()  # unread or unsent bytes: no graceful close owed

    async def fill(self, timeout: float) -> None:
        """Wait for more bytes; Disconnected at end of stream, Timeout after `timeout`."""
        if self.eof:
            raise Disconnected("the server closed the connection")
        self.resume_reading()
        waiter = self._waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        if self.eof and not self.buf:
            raise Disconnected("the server closed the connection")

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise Disconnected("connection lost while sending")
        self.transport.write(data)

    async def drain(self) -> None:
        if self.transport is None:
            raise Disconnected("connection lost while sending")
        if self._write_paused:
            self._drain = self.loop.create_future()
            try:
                await self._drain
            finally:
                self._drain = None


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(Timeout("the server did not answer in time"))


class Response:
    """A response being read: status and headers now, the body in pieces with `read`."""

    def __init__(self, conn: _Conn, pool: Pool, request_task: asyncio.Task[None] | None) -> None:
        self._conn = conn
        self._pool = pool
        self._sending = request_task
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.content_length: int | None = None  # the header's value (also for HEAD)
        self._left = 0  # body bytes (or bytes of the current chunk) still to read
        self._chunked = False
        self._until_eof = False
        self._keep_alive = True
        self.done = False  # the body has been read to its end
        self._released = False

    # --- the head
    async def _read_head(self, head_request: bool, timeout: float) -> None:
        for _ in range(MAX_INTERIM + 1):
            version, status, reason, headers = await _head(self._conn, timeout)
            if status >= 200:
                break
            if status == 101:
                raise BadResponse("the server switched protocols on a plain request")
            # 1xx interim responses (103 Early Hints, a stray 100): the real one follows
        else:
            raise BadResponse("too many interim responses")
        self.status, self.reason, self.headers = status, reason, headers
        self._keep_alive = version == 1
        self._frame(headers, head_request or status in (204, 304))

    def _frame(self, headers: list[tuple[str, str]], bodiless: bool) -> None:
        """How the body ends (RFC 9112 6.3): nothing, chunked, a length, or at close."""
        lengths, codings = set(), []
        for name, value in headers:
            low = name.lower()
            if low == "content-length":
                lengths.add(value)
            elif low == "transfer-encoding":
                codings += [c.strip().lower() for c in value.split(",")]
            elif low == "connection" and "close" in value.lower():
                self._keep_alive = False
        if lengths:
            if len(lengths) > 1 or not next(iter(lengths)).isdigit():
                raise BadResponse("invalid Content-Length")
            self.content_length = int(next(iter(lengths)))
        if bodiless:
            self.done = True
        elif codings:
            self._keep_alive = self._keep_alive and not lengths  # ambiguous framing: no reuse
            self._chunked = codings[-1] == "chunked"
            self._until_eof = not self._chunked
            self.content_length = None
        elif self.content_length is not None:
            self._left = self.content_length
            self.done = self._left == 0
        else:
            self._until_eof = True

    # --- the body
    def buffered_body(self) -> bytes | None:
        """The whole body if it already arrived (a small response in one read), else None."""
        conn = self._conn
        if self.done:
            return b""
        if self._chunked or self._until_eof or len(conn.buf) < self._left:
            return None
        body = bytes(conn.buf[: self._left])
        del conn.buf[: self._left]
        self._left = 0
        self.done = True
        return body

    async def read_all(self) -> bytes:
        body = self.buffered_body()
        if body is not None:
            return body
        parts = []
        while piece := await self.read():
            parts.append(piece)
        return b"".join(parts)

    async def read(self) -> bytes:
        """The next piece of the body, b"" at its end."""
        if self.done:
            return b""
        if self._chunked:
            return await self._read_chunked()
        conn = self._conn
        timeout = self._pool.read_timeout
        if not conn.buf:
            if self._until_eof and conn.eof:
                self._end()
                return b""
            try:
                await conn.fill(timeout)
            except Disconnected:
                if not self._until_eof:
                    raise
                self._end()
                return b""
        if self._until_eof:
            data = bytes(conn.buf)
            conn.buf.clear()
            return data
        data = bytes(conn.buf[: self._left])
        del conn.buf[: len(data)]
        self._left -= len(data)
        if not self._left:
            self._end()
        return data

    async def _read_chunked(self) -> bytes:
        conn = self._conn
        timeout = self._pool.read_timeout
        if not self._left:
            line = await _line(conn, timeout)
            m = _CHUNK_SIZE.fullmatch(line)
            if m is None:
                raise BadResponse("invalid chunk size")
            self._left = int(m[1], 16)
            if not self._left:
                while await _line(conn, timeout):  # trailers: read and dropped
                    pass
                self._end()
                return b""
        while not conn.buf:
            await conn.fill(timeout)
        data = bytes(conn.buf[: self._left])
        del conn.buf[: len(data)]
        self._left -= len(data)
        if not self._left and await _line(conn, timeout):
            raise BadResponse("chunk data longer than its size")
        return data

    def _end(self) -> None:
        self.done = True
        self._keep_alive = self._keep_alive and not self._until_eof

    # --- giving the connection back
    def release(self) -> None:
        """Return the connection to the pool if the exchange ended cleanly, else close it."""
        if self._released:
            return
        self._released = True
        sending, conn = self._sending, self._conn
        sent = sending is None or (
            sending.done() and not sending.cancelled() and sending.exception() is None
        )
        if sending is not None and not sending.done():
            sending.cancel()  # the server answered without reading all of the body
        reusable = self.done and self._keep_alive and sent and not conn.buf
        self._pool._release(conn, reusable)

    def close(self) -> None:
        """Give up on the rest: the connection is closed, never reused."""
        self._keep_alive = False
        self.release()


async def _line(conn: _Conn, timeout: float) -> bytes:
    """One CRLF-terminated line (without it), bounded by MAX_LINE."""
    start = 0
    while True:
        i = conn.buf.find(b"\r\n", start)
        if i >= 0:
            line = bytes(conn.buf[:i])
            del conn.buf[: i + 2]
            return line
        if len(conn.buf) > MAX_LINE:
            raise BadResponse("line too long")
        start = max(0, len(conn.buf) - 1)
        await conn.fill(timeout)


async def _head(conn: _Conn, timeout: float) -> tuple[int, int, str, list[tuple[str, str]]]:
    """Status line and headers: (minor version, status, reason, [(name, value)])."""
    start = 0
    while True:
        i = conn.buf.find(b"\r\n\r\n", start)
        if i > MAX_HEAD or i < 0 and len(conn.buf) > MAX_HEAD:
            raise BadResponse("response head too large")
        if i >= 0:
            break
        start = max(0, len(conn.buf) - 3)
        await conn.fill(timeout)
    text = conn.buf[:i].decode("utf-8", "surrogateescape")  # as aiohttp's parser does
    del conn.buf[: i + 4]
    m = _STATUS_LINE.match(text)
    if m is None or _HEADER_LINES.fullmatch(text, m.end()) is None:
        raise BadResponse("invalid response head")
    headers = []
    for line in text[m.end() + 2 :].split("\r\n") if m.end() < len(text) else ():
        name, _, value = line.partition(":")
        headers.append((name, value.strip(" \t")))
    return int(m[1]), int(m[2]), m[3] or "", headers


class Pool:
    """Keep-alive connections to upstreams, most recently used first.

    `request` sends a request head (and body) and returns the `Response` once its head
    arrived; the caller reads the body and must call `release()` (or `close()`).
    """

    def __init__(
        self, *, connect_timeout: float, read_timeout: float, keepalive_timeout: float = 15.0
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive_timeout = keepalive_timeout
        self._idle: dict[Key, list[_Conn]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def request(
        self,
        host: str,
        port: int,
        method: str,
        head: bytes,
        body: StreamReader | None = None,
        length: int | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> Response:
        """Send `head` (the complete request head) then the body from `body`: `length`
        bytes, or chunked when `length` is None. A request without body that failed on a
        reused connection before any answer is sent again once on a new connection (the
        server may have closed the idle connection meanwhile). With `tls`, the connection
        is HTTPS, verified by that context."""
        key = (host, port, tls)
        conn, reused = await self._acquire(key)
        try:
            return await self._exchange(conn, method, head, body, length)
        except Disconnected:
            if not (reused and not conn.answered and body is None and method in IDEMPOTENT):
                raise
        conn, _ = await self._acquire(key, fresh=True)
        return await self._exchange(conn, method, head, None, None)

    async def _exchange(
        self, conn: _Conn, method: str, head: bytes, body: StreamReader | None, length: int | None
    ) -> Response:
        sending = None
        try:
            conn.write(head)
            if body is not None:
                sending = asyncio.ensure_future(_send_body(conn, body, length))
                sending.add_done_callback(_retrieve)
            resp = Response(conn, self, sending)
            await resp._read_head(method == "HEAD", self.read_timeout)
            return resp
        except BaseException:
            if sending is not None:
                sending.cancel()
            conn.close()
            raise

    async def _acquire(self, key: Key, fresh: bool = False) -> tuple[_Conn, bool]:
        idle = self._idle.get(key)
        while idle and not fresh:
            conn = idle.pop()
            if conn.usable():
                conn.active, conn.answered = True, False
                return conn, True
            conn.close()
        if self._closed:
            raise ConnectFailed("the proxy is shutting down")
        return await self._connect(key), False

    async def _connect(self, key: Key) -> _Conn:
        loop = asyncio.get_running_loop()
        factory: Callable[[], _Conn] = lambda: _Conn(loop, key)
        try:
            async with asyncio.timeout(self.connect_timeout):
                host, port, tls = key
                transport, conn = await loop.create_connection(
                    factory, host, port, ssl=tls, server_hostname=host if tls else None
                )
        except TimeoutError:
            raise Timeout("connecting timed out") from None
        except OSError as e:
            raise ConnectFailed(str(e)) from None
        sock = transport.get_extra_info("socket")
        if sock is not None:  # small requests and responses go out at once
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _release(self, conn: _Conn, reusable: bool) -> None:
        if not reusable or self._closed or not conn.usable():
            conn.close()
            return
        conn.active = False
        conn.resume_reading()  # an idle connection must see the server close it
        conn.idle_since = conn.loop.time()
        self._idle.setdefault(conn.key, []).append(conn)
        if self._sweeper is None:
            self._sweeper = conn.loop.call_later(self.keepalive_timeout, self._sweep)

    def _sweep(self) -> None:
        """Close connections idle for longer than keepalive_timeout."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        cutoff = loop.time() - self.keepalive_timeout
        for key, idle in list(self._idle.items()):
            keep = [c for c in idle if c.idle_since > cutoff and c.usable()]
            for c in idle:
                if c not in keep:
                    c.close()
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        if self._idle:
            self._sweeper = loop.call_later(self.keepalive_timeout, self._sweep)

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def _retrieve(task: asyncio.Task[None]) -> None:
    """The sender's failure shows in the response (the connection is cut); no log noise."""
    if not task.cancelled():
        task.exception()


async def _send_body(conn: _Conn, body: StreamReader, length: int | None) -> None:
    """Copy the client's body to the server, waiting for the socket to drain as it goes.
    If the client's body ends short or breaks, the server connection is cut so the server
    never takes a truncated body for a whole one."""
    sent = 0
    try:
        # with a length, stop at it: waiting for the client's end of body could lose the
        # race with a server that already answered, and the connection with it
        while length is None or sent < length:
            data = await body.readany()
            if not data:
                break
            sent += len(data)
            if length is None:
                conn.write(b"%x\r\n%s\r\n" % (len(data), data))
            elif sent > length:
                raise BadResponse("request body longer than its Content-Length")
            else:
                conn.write(data)
            await conn.drain()
        if length is None:
            conn.write(b"0\r\n\r\n")
        elif sent != length:
            raise Disconnected("the client's body ended early")
    except BaseException:
        conn.close()
        raise
