"""Kernel messages on the websocket: the legacy JSON/binary format and the v1 subprotocol.

Messages travel inside minihub as `parts`: [header, parent_header, metadata, content,
*buffers] as packed bytes, exactly as they sit on zmq after the signature.
"""

from __future__ import annotations

import json
import struct
from typing import Any

V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
CHANNELS = ("shell", "iopub", "stdin", "control")

Parts = list[bytes]


class WireError(ValueError):
    """A websocket frame that is not a kernel message."""


def to_v1(channel: str, parts: Parts) -> bytes:
    """Frame parts for the v1 subprotocol: offsets (u64 little-endian), channel, parts."""
    chan = channel.encode("utf-8")
    offsets = [8 * (1 + 1 + len(parts) + 1)]
    offsets.append(offsets[-1] + len(chan))
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    head = len(offsets).to_bytes(8, "little") + b"".join(o.to_bytes(8, "little") for o in offsets)
    return b"".join([head, chan, *parts])


def from_v1(frame: bytes) -> tuple[str, Parts]:
    if len(frame) < 8:
        raise WireError("frame too short")
    count = int.from_bytes(frame[:8], "little")
    if count < 6 or len(frame) < 8 * (count + 1):
        raise WireError("bad offset table")
    offsets = [int.from_bytes(frame[8 * (i + 1) : 8 * (i + 2)], "little") for i in range(count)]
    if offsets != sorted(offsets) or offsets[-1] > len(frame):
        raise WireError("bad offsets")
    channel = frame[offsets[0] : offsets[1]].decode("utf-8", "replace")
    parts = [frame[offsets[i] : offsets[i + 1]] for i in range(1, count - 1)]
    return channel, parts


def to_legacy(channel: str, parts: Parts) -> str | bytes:
    """The JSON message jupyter_server sends without a subprotocol (binary if it has buffers)."""
    header = json.loads(parts[0])
    msg: dict[str, Any] = {
        "header": header,
        "msg_id": header.get("msg_id"),
        "msg_type": header.get("msg_type"),
        "parent_header": json.loads(parts[1]),
        "metadata": json.loads(parts[2]),
        "content": json.loads(parts[3]),
        "channel": channel,
    }
    buffers = parts[4:]
    if not buffers:
        msg["buffers"] = []
        return json.dumps(msg)
    return _legacy_binary(json.dumps(msg).encode("utf-8"), buffers)


def _legacy_binary(head: bytes, buffers: Parts) -> bytes:
    # Big-endian u32 count and offsets, then the JSON, then each buffer.
    chunks = [head, *buffers]
    offsets = [4 * (len(chunks) + 1)]
    for chunk in chunks[:-1]:
        offsets.append(offsets[-1] + len(chunk))
    return struct.pack("!" + "I" * (len(chunks) + 1), len(chunks), *offsets) + b"".join(chunks)


def from_legacy(data: str | bytes) -> tuple[str, dict[str, Any], Parts]:
    """A client's JSON (or legacy binary) message: (channel, message dict, buffers)."""
    buffers: Parts = []
    try:
        if isinstance(data, bytes):
            data, buffers = _split_legacy_binary(data)
        msg = json.loads(data)
    except (ValueError, struct.error) as e:
        raise WireError(f"not a kernel message: {e}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("header"), dict):
        raise WireError("message has no header")
    channel = msg.pop("channel", None) or "shell"
    return str(channel), msg, buffers


def _split_legacy_binary(data: bytes) -> tuple[bytes, Parts]:
    (count,) = struct.unpack("!I", data[:4])
    offsets = list(struct.unpack("!" + "I" * count, data[4 : 4 * (count + 1)])) + [len(data)]
    chunks = [data[offsets[i] : offsets[i + 1]] for i in range(count)]
    return chunks[0], chunks[1:]


def pack_legacy(msg: dict[str, Any], buffers: Parts) -> Parts:
    """Parts for a client's JSON message, keeping the client's own header (it matches replies)."""

    def dump(key: str) -> bytes:
        value = msg.get(key) or {}
        return json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")

    return [dump("header"), dump("parent_header"), dump("metadata"), dump("content"), *buffers]


def msg_type(parts: Parts) -> str:
    try:
        return str(json.loads(parts[0]).get("msg_type", ""))
    except (ValueError, AttributeError, IndexError):
        return ""
