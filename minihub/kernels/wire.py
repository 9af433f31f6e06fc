"""Kernel messages on the websocket: the legacy JSON/binary format and the v1 subprotocol.

Messages travel inside minihub as `parts`: [header, parent_header, metadata, content,
*buffers] as packed bytes, exactly as they sit on zmq after the signature.

Every count, offset and length a client sends is checked against the frame's own size and
`Limits` before anything is built from it: what a bad frame can allocate is bounded by the
frame (the legacy parser once built a struct format from a 32-bit count and asked for 24 GB).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
CHANNELS = ("shell", "iopub", "stdin", "control")
MESSAGE_KEYS = ("header", "parent_header", "metadata", "content")

DEFAULT_MAX_MESSAGE = 64 << 20  # as the hub's proxy: it refuses bigger frames anyway
# Parsed JSON takes up to ~25x its text ("[[],[],..."): what the server parses is bounded
# apart from the frame (as jupyter_server's 10 MiB websocket limit bounds it there).
DEFAULT_MAX_JSON = 8 << 20
DEFAULT_MAX_BUFFERS = 64

Parts = list[bytes]


class WireError(ValueError):
    """A websocket frame that is not a kernel message."""


@dataclass(frozen=True)
class Limits:
    """What one message from a client may be: bytes of the websocket message (aiohttp
    closes the socket with 1009 past it), bytes of JSON in its four JSON parts (the server
    parses them: the kernel would log a traceback for each bad one), and binary buffers."""

    max_message: int = DEFAULT_MAX_MESSAGE
    max_json: int = DEFAULT_MAX_JSON
    max_buffers: int = DEFAULT_MAX_BUFFERS


DEFAULT_LIMITS = Limits()


def to_v1(channel: str, parts: Parts) -> bytes:
    """Frame parts for the v1 subprotocol: offsets (u64 little-endian), channel, parts."""
    chan = channel.encode("utf-8")
    offsets = [8 * (1 + 1 + len(parts) + 1)]
    offsets.append(offsets[-1] + len(chan))
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    head = len(offsets).to_bytes(8, "little") + b"".join(o.to_bytes(8, "little") for o in offsets)
    return b"".join([head, chan, *parts])


def from_v1(frame: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[str, Parts]:
    """(channel, parts) of a v1 frame: u64 count, count offsets, channel, then the parts."""
    if len(frame) < 8:
        raise WireError("frame too short")
    count = int.from_bytes(frame[:8], "little")
    # count offsets delimit the channel and count - 2 parts.
    if not 6 <= count <= len(MESSAGE_KEYS) + limits.max_buffers + 2:
        raise WireError(f"bad offset count {count}")
    offsets = _offsets(frame, count, width=8, byteorder="little")
    try:
        channel = frame[offsets[0] : offsets[1]].decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("the channel name is not UTF-8") from None
    if offsets[5] - offsets[1] > limits.max_json:
        raise WireError(f"JSON parts longer than {limits.max_json} bytes (kernel_ws_max_json)")
    parts = [frame[offsets[i] : offsets[i + 1]] for i in range(1, count - 1)]
    objects = [_json_object(key, part) for key, part in zip(MESSAGE_KEYS, parts, strict=False)]
    check_header(objects[0])
    return channel, parts


def _json_object(key: str, part: bytes) -> dict[str, Any]:
    try:
        value = _loads(part.decode("utf-8"))
    except UnicodeDecodeError:
        raise WireError(f"{key} is not UTF-8") from None
    if not isinstance(value, dict):
        raise WireError(f"{key} must be an object")
    return value


def check_header(header: Any) -> None:
    """What the kernel's Session.deserialize reads from every header."""
    if not isinstance(header, dict):
        raise WireError("message has no header")
    for key in ("msg_id", "msg_type"):
        if not isinstance(header.get(key), str):
            raise WireError(f"the header has no {key} string")


def _offsets(
    frame: bytes, count: int, width: int, byteorder: Literal["little", "big"]
) -> list[int]:
    """count offsets after the count field, each inside the frame, past the table, in order.

    The caller has bounded count; the table must fit in the frame before it is read.
    """
    table_end = width * (count + 1)
    if table_end > len(frame):
        raise WireError("offset table longer than the frame")
    offsets = [
        int.from_bytes(frame[width * (i + 1) : width * (i + 2)], byteorder) for i in range(count)
    ]
    previous = table_end
    for offset in offsets:
        if not previous <= offset <= len(frame):
            raise WireError("offsets out of order or outside the frame")
        previous = offset
    return offsets


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
    table = b"".join(n.to_bytes(4, "big") for n in [len(chunks), *offsets])
    return table + b"".join(chunks)


def from_legacy(
    data: str | bytes, limits: Limits = DEFAULT_LIMITS
) -> tuple[str, dict[str, Any], Parts]:
    """A client's JSON (or legacy binary) message: (channel, message dict, buffers)."""
    buffers: Parts = []
    head = data
    if isinstance(data, bytes):
        head, buffers = _split_legacy_binary(data, limits)
    if len(head) > limits.max_json:
        raise WireError(f"JSON message longer than {limits.max_json} (kernel_ws_max_json)")
    try:
        text = head.decode("utf-8") if isinstance(head, bytes) else head
    except UnicodeDecodeError:
        raise WireError("the message is not UTF-8") from None
    msg = _loads(text)
    if not isinstance(msg, dict):
        raise WireError("the message is not a JSON object")
    check_header(msg.get("header"))
    channel = msg.pop("channel", None) or "shell"
    if not isinstance(channel, str):
        raise WireError("channel must be a string")
    return channel, msg, buffers


def _loads(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise WireError("the message is nested too deeply") from None
    except ValueError as e:
        raise WireError(f"not a kernel message: {e}"[:200]) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _split_legacy_binary(data: bytes, limits: Limits) -> tuple[bytes, Parts]:
    """u32 big-endian count, count offsets, then the JSON and each buffer (jupyter_server's
    serialize_binary_message); the last chunk runs to the end of the frame."""
    if len(data) < 8:
        raise WireError("binary frame too short")
    count = int.from_bytes(data[:4], "big")
    if not 1 <= count <= limits.max_buffers + 1:
        raise WireError(f"bad buffer count {count}")
    offsets = _offsets(data, count, width=4, byteorder="big") + [len(data)]
    chunks = [data[offsets[i] : offsets[i + 1]] for i in range(count)]
    return chunks[0], chunks[1:]


def pack_legacy(msg: dict[str, Any], buffers: Parts) -> Parts:
    """Parts for a client's JSON message, keeping the client's own header (it matches replies).

    Each of the four parts must be an object (or absent); the kernel gets strict UTF-8 JSON.
    """
    return [_dump(key, msg.get(key)) for key in MESSAGE_KEYS] + buffers


def _dump(key: str, value: Any) -> bytes:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise WireError(f"{key} must be an object")
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except RecursionError:
        raise WireError(f"{key} is nested too deeply") from None
    except ValueError as e:  # NaN can't be here (parse_constant); a lone surrogate can
        raise WireError(f"{key} is not valid JSON text: {e}"[:200]) from None


def msg_type(parts: Parts) -> str:
    try:
        header = json.loads(parts[0])
        return str(header.get("msg_type", "")) if isinstance(header, dict) else ""
    except (ValueError, RecursionError, IndexError):
        return ""
