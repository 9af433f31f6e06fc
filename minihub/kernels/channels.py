"""The kernel websocket: bridges a browser's websocket to a kernel's zmq channels.

Speaks the legacy JSON protocol and the v1 binary subprotocol. While a client is away its
sockets stay open and fill a bounded replay buffer, so reconnecting with the same session_id
loses no output or reply. What a client sends is bounded by `wire.Limits`; a frame that is
not a kernel message closes the socket (1007), as jupyter_server does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections import OrderedDict, deque
from typing import Any

import zmq
import zmq.asyncio
from aiohttp import WSCloseCode, WSMsgType, web

from .kernel import Kernel
from .manager import KernelManager
from .wire import (
    DEFAULT_LIMITS,
    V1_PROTOCOL,
    Limits,
    Parts,
    WireError,
    from_legacy,
    from_v1,
    msg_type,
    pack_legacy,
    to_legacy,
    to_v1,
)

log = logging.getLogger("minihub.kernels")

MAX_QUEUED = 5000  # messages kept for a client; the oldest go first
MAX_QUEUED_BYTES = 32 << 20
MAX_AWAY = 4  # absent client sessions kept per kernel
# Messages a client socket holds for a kernel that does not read (stopped, hung): past it the
# send waits, the websocket is not read, and TCP pushes back on the client (zmq's 1000 would
# be 1000 frames of up to max_message each).
SEND_HWM = 8
CLIENT_CHANNELS = ("shell", "stdin", "control")


class Client:
    """One client session's shell/stdin/control sockets and the messages waiting for it."""

    def __init__(self, kernel: Kernel, session_id: str) -> None:
        self.kernel = kernel
        self.session_id = session_id
        # shell and stdin share an identity: the kernel routes input_request by it.
        identity = os.urandom(16)
        self.sockets: dict[str, zmq.asyncio.Socket] = {
            ch: kernel.connect(ch, identity) for ch in CLIENT_CHANNELS
        }
        for sock in self.sockets.values():
            sock.setsockopt(zmq.SNDHWM, SEND_HWM)  # libzmq applies it to the connected pipe
        self.queue: deque[tuple[str, Parts]] = deque()
        self.queued_bytes = 0
        self.ws: web.WebSocketResponse | None = None
        self.closing = False
        self.wakeup = asyncio.Event()
        self.tasks = [asyncio.create_task(self._read(ch)) for ch in CLIENT_CHANNELS]
        kernel.listeners.add(self.deliver)

    def deliver(self, channel: str, parts: Parts) -> None:
        self.queue.append((channel, parts))
        self.queued_bytes += sum(len(p) for p in parts)
        while len(self.queue) > MAX_QUEUED or self.queued_bytes > MAX_QUEUED_BYTES:
            _, dropped = self.queue.popleft()
            self.queued_bytes -= sum(len(p) for p in dropped)
        self.wakeup.set()

    async def _read(self, channel: str) -> None:
        sock = self.sockets[channel]
        while True:
            parts = self.kernel.verify(await sock.recv_multipart())
            if parts is not None:
                self.deliver(channel, parts)

    async def send(self, channel: str, parts: Parts) -> None:
        await self.sockets[channel].send_multipart(self.kernel.signed(parts))

    async def pump(self, ws: web.WebSocketResponse, v1: bool) -> None:
        """Send queued messages (the replay first) until detached; close ws if closing."""
        while True:
            while self.queue:
                # Dequeue only once sent: a message that meets a dying socket stays for the
                # next connection of this session instead of being lost.
                channel, parts = self.queue[0]
                if ws.closed:
                    return
                try:
                    await _send(ws, channel, parts, v1)
                except (ConnectionError, RuntimeError):
                    return  # the client went away; the message waits for its return
                if self.queue and self.queue[0][1] is parts:
                    self.queue.popleft()
                    self.queued_bytes -= sum(len(p) for p in parts)
            if self.closing:
                await ws.close()
                return
            self.wakeup.clear()
            await self.wakeup.wait()

    def close(self) -> None:
        self.kernel.listeners.discard(self.deliver)
        for task in self.tasks:
            task.cancel()
        for sock in self.sockets.values():
            sock.close(linger=0)
        self.closing = True
        self.wakeup.set()


async def _send(ws: web.WebSocketResponse, channel: str, parts: Parts, v1: bool) -> None:
    if v1:
        await ws.send_bytes(to_v1(channel, parts))
        return
    try:
        frame = to_legacy(channel, parts)
    except ValueError:
        log.warning("dropped a kernel message that is not JSON")
        return
    if isinstance(frame, bytes):
        await ws.send_bytes(frame)
    else:
        await ws.send_str(frame)


def _stop_heartbeat(ws: web.WebSocketResponse) -> None:
    """aiohttp (3.14) re-arms the heartbeat when the client's close frame arrives during a
    close() we started, which keeps each closed response (~11 KB) alive 45 s longer: 2,000
    refused frames held 45 MB. Nothing public cancels it."""
    cancel = getattr(ws, "_cancel_heartbeat", None)
    if callable(cancel):
        cancel()


def _reason(e: WireError) -> bytes:
    # A close frame's reason is at most 123 bytes.
    return str(e).encode("utf-8", "replace")[:120]


def refuse_debug(kernel: Kernel, request: Parts) -> Parts:
    """A failed debug_reply: ipykernel's debugger (debugpy) listens on loopback TCP with no
    authentication, so any local account could attach to it and run code as this user."""
    try:
        req = json.loads(request[3])
    except ValueError:
        req = None
    req = req if isinstance(req, dict) else {}
    content: dict[str, Any] = {
        "type": "response",
        "request_seq": req.get("seq", 0),
        "success": False,
        "command": req.get("command", ""),
        "message": "The debugger is disabled on this server.",
        "body": {},
    }
    reply = kernel.make_message("debug_reply", content)
    return [reply[0], request[0], reply[2], reply[3]]


class Bridge:
    """Every kernel's client sessions; serves GET api/kernels/{kernel_id}/channels."""

    def __init__(self, kernels: KernelManager, limits: Limits = DEFAULT_LIMITS) -> None:
        self.kernels = kernels
        self.limits = limits
        self.clients: dict[str, OrderedDict[str, Client]] = {}
        kernels.on_removed.append(self.kernel_gone)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        kernel = self.kernels.get(request.match_info["kernel_id"])
        session_id = request.query.get("session_id") or uuid.uuid4().hex
        ws = web.WebSocketResponse(
            protocols=(V1_PROTOCOL,), heartbeat=30, max_msg_size=self.limits.max_message
        )
        await ws.prepare(request)
        v1 = ws.ws_protocol == V1_PROTOCOL
        client = self._attach(kernel, session_id, ws)
        pump = asyncio.create_task(client.pump(ws, v1))
        kernel.connections += 1
        try:
            async for msg in ws:
                data_frame = msg.type in (WSMsgType.TEXT, WSMsgType.BINARY)
                if data_frame and not await self._forward(client, msg.data, v1):
                    break
        finally:
            kernel.connections -= 1
            pump.cancel()
            self._detach(client, ws)
            _stop_heartbeat(ws)
        return ws

    def _attach(self, kernel: Kernel, session_id: str, ws: web.WebSocketResponse) -> Client:
        sessions = self.clients.setdefault(kernel.id, OrderedDict())
        client = sessions.pop(session_id, None)
        if client is None:
            client = Client(kernel, session_id)
        elif client.ws is not None:
            # The same session connecting again takes over; the old socket is closed.
            asyncio.get_running_loop().create_task(client.ws.close())
        client.ws = ws
        sessions[session_id] = client
        return client

    def _detach(self, client: Client, ws: web.WebSocketResponse) -> None:
        if client.ws is not ws:
            return
        client.ws = None
        sessions = self.clients.get(client.kernel.id)
        if sessions is None or client.closing:
            return
        sessions.move_to_end(client.session_id)
        away = [c for c in sessions.values() if c.ws is None]
        for old in away[:-MAX_AWAY] if len(away) > MAX_AWAY else []:
            sessions.pop(old.session_id, None)
            old.close()

    async def _forward(self, client: Client, data: str | bytes, v1: bool) -> bool:
        """Send one client message on to the kernel; False if it was malformed (the socket
        is then closed: one log line per connection, not one per bad frame)."""
        try:
            channel, parts = self._parse(data, v1)
        except WireError as e:
            log.warning("kernel %s: closed a websocket: %s", client.kernel.id, e)
            if client.ws is not None:
                await client.ws.close(code=WSCloseCode.INVALID_TEXT, message=_reason(e))
            return False
        if channel not in CLIENT_CHANNELS:
            log.warning(
                "kernel %s: ignored a message for channel %r", client.kernel.id, channel[:40]
            )
            return True
        client.kernel.touch()
        if channel == "control" and msg_type(parts) == "debug_request":
            client.deliver("control", refuse_debug(client.kernel, parts))
            return True
        if channel == "shell":
            await client.kernel.until_ready()
        await client.send(channel, parts)
        return True

    def _parse(self, data: str | bytes, v1: bool) -> tuple[str, Parts]:
        if not v1:
            channel, msg, buffers = from_legacy(data, self.limits)
            return channel, pack_legacy(msg, buffers)
        if isinstance(data, str):
            raise WireError("text frame on the v1 protocol")
        return from_v1(data, self.limits)

    def kernel_gone(self, kernel_id: str) -> None:
        for client in self.clients.pop(kernel_id, {}).values():
            client.close()

    async def close(self) -> None:
        for kernel_id in list(self.clients):
            self.kernel_gone(kernel_id)
