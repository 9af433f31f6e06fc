"""Issue 12 item 2: a few bytes on a kernel websocket must not allocate more than the frame.

`ff ff ff ff 7b 7d` sent by a user to her own kernel took the user server to 23.6 GB (a
struct format built from the count); `02 00 00 00 ...` kept 1.1 GB for good. Reproduced
against a real hub process: PAM login, the hub's proxy, a real user server and ipykernel,
under a 1G memory limit so a regression kills only that server. Then both parsers under
Hypothesis: nothing but WireError, nothing bigger than the frame, round trips.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import struct
import subprocess
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import SystemUser, needs_root
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_config_cli import MINIHUB, free_port, start_hub
from test_singleuser_harness import V1, decode_v1, encode_v1, message

from minihub.kernels import wire
from minihub.kernels.wire import Limits, WireError

MB = 1 << 20
BAD_FRAME = aiohttp.WSCloseCode.INVALID_TEXT  # 1007
TOO_BIG = aiohttp.WSCloseCode.MESSAGE_TOO_BIG  # 1009
# The settings the hub passes to the server: small, so the test can cross them.
MAX_MESSAGE, MAX_JSON, MAX_BUFFERS = 1 * MB, 64 << 10, 4

LEGACY_BOMBS = [
    bytes.fromhex("ffffffff7b7d"),  # the frame: 2**32-1 offsets claimed
    bytes.fromhex("020000007b7d"),  # 2**25 offsets: a 1.1 GB struct format, cached
    bytes.fromhex("02000000") + bytes(8) + b"{}",
    struct.pack("!III", 2, 100, 12) + b"{}",  # offsets out of order
    struct.pack("!II", 1, 2**32 - 1) + b"{}",  # offset past the end of the frame
    struct.pack("!II", 0, 8),  # no JSON at all
]
V1_BOMBS = [
    b"\xff" * 8 + b"{}",
    (2**32).to_bytes(8, "little") + b"{}",
    (2**63).to_bytes(8, "little") + bytes(64),
    (6).to_bytes(8, "little") + b"".join(o.to_bytes(8, "little") for o in [56] * 5 + [2**40]),
    (6).to_bytes(8, "little") + b"".join(o.to_bytes(8, "little") for o in [60, 58, 58, 58, 58, 58]),
]


# --- the hub, a user, her server and kernel ---------------------------------------------


@dataclass
class Hub:
    base: str
    user: SystemUser
    proc: subprocess.Popen[bytes]
    data: Path
    log: Path


@pytest.fixture(scope="module")
def hub(make_system_user: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    user = make_system_user("mhwb_ann")
    tmp = tmp_path_factory.mktemp("mhwb")
    toml = tmp / "minihub.toml"
    toml.write_text(
        '[spawner]\nmem_limit = "1G"\n'
        f"kernel_ws_max_message = {MAX_MESSAGE}\nkernel_ws_max_json = {MAX_JSON}\n"
        f"kernel_ws_max_buffers = {MAX_BUFFERS}\n"
    )
    port, data = free_port(), tmp / "data"
    log = tmp / "hub.log"
    proc = start_hub(
        [*MINIHUB, "-f", str(toml), "--data-dir", str(data), "--port", str(port)], port, log
    )
    yield Hub(f"http://127.0.0.1:{port}", user, proc, data, log)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


@dataclass
class Session:
    http: aiohttp.ClientSession
    hub: Hub
    kernel: str
    xsrf: str

    @property
    def channels(self) -> str:
        return f"{self.hub.base}/user/{self.hub.user.name}/api/kernels/{self.kernel}/channels"

    async def ws(self, v1: bool) -> aiohttp.ClientWebSocketResponse:
        ws = await self.http.ws_connect(
            self.channels, headers={"Origin": self.hub.base}, protocols=(V1,) if v1 else ()
        )
        assert (ws.protocol == V1) == v1
        return ws


@pytest.fixture
async def session(hub: Hub) -> AsyncIterator[Session]:
    """Her browser: logged in through PAM, her server spawned, one python3 kernel."""
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(
        cookie_jar=jar, timeout=aiohttp.ClientTimeout(total=60)
    ) as http:
        r = await http.post(
            f"{hub.base}/hub/login",
            allow_redirects=False,
            data={"username": hub.user.name, "password": hub.user.password},
        )
        assert r.status == 302, await r.text()
        xsrf = next(c.value for c in jar if c.key == "_xsrf")
        await _wait_for_server(http, hub)
        r = await http.post(
            f"{hub.base}/user/{hub.user.name}/api/kernels",
            json={"name": "python3"},
            headers={"X-XSRFToken": xsrf},
        )
        assert r.status == 201, await r.text()
        yield Session(http, hub, (await r.json())["id"], xsrf)


async def _wait_for_server(http: aiohttp.ClientSession, hub: Hub) -> None:
    url = f"{hub.base}/hub/spawn-pending/{hub.user.name}"
    for _ in range(300):
        r = await http.get(url, allow_redirects=False)
        if r.status == 302 and f"/user/{hub.user.name}/" in r.headers["Location"]:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no server: {hub.log.read_text()[-2000:]}")


def server_pid(uid: int) -> int:
    """The user's notebook server: her process whose parent is not hers (the hub forked it),
    other than her kernels (the hub's kernel template forked those)."""
    found = [
        pid
        for pid in _pids_of(uid)
        if _status(_status(pid)["PPid"]).get("Uid") != uid and not _is_zygote(pid)
    ]
    assert len(found) == 1, found
    return found[0]


def _is_zygote(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"minihub.kernels import" in f.read()
    except OSError:
        return False


def _pids_of(uid: int) -> list[int]:
    return [
        int(p) for p in os.listdir("/proc") if p.isdigit() and _status(int(p)).get("Uid") == uid
    ]


def _status(pid: Any) -> dict[str, Any]:
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return {}
    return {
        "Uid": int(fields["Uid"].split()[0]),
        "PPid": int(fields["PPid"]),
        "VmRSS": int(fields.get("VmRSS", "0 kB").split()[0]) * 1024,
    }


def rss(pid: int) -> int:
    value = _status(pid).get("VmRSS")
    assert value, f"server {pid} is gone (killed for memory?)"
    return int(value)


async def closed_with(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    """The close code the server sends next (anything else it sends first is skipped)."""
    async with asyncio.timeout(20):
        while True:
            msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                continue
            await ws.close()
            return ws.close_code


async def stays_open(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> bool:
    """False if the server closes ws within the time (what it sends meanwhile is skipped)."""
    try:
        async with asyncio.timeout(seconds):
            while True:
                msg = await ws.receive()
                if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    return False
    except TimeoutError:
        return True


async def execute(s: Session, v1: bool, code: str) -> str:
    """Run code over one protocol; its stdout."""
    ws = await s.ws(v1)
    msg = message("execute_request", {"code": code, "silent": False}, uuid.uuid4().hex)
    if v1:
        await ws.send_bytes(encode_v1("shell", msg))
    else:
        await ws.send_str(json.dumps({**msg, "channel": "shell"}))
    out = []
    async with asyncio.timeout(30):
        while True:
            frame = await ws.receive()
            assert frame.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), frame
            reply = decode_v1(frame.data) if v1 else json.loads(frame.data)
            if reply["parent_header"].get("msg_id") != msg["header"]["msg_id"]:
                continue
            if reply["header"]["msg_type"] == "stream":
                out.append(reply["content"]["text"])
            if reply["header"]["msg_type"] == "execute_reply":
                break
    await ws.close()
    return "".join(out)


# --- against the real hub -----------------------------------------------------------------


@needs_root
@pytest.mark.timeout(300)
async def test_bomb_frames_through_the_hub_allocate_nothing(session: Session) -> None:
    pid = server_pid(session.hub.user.uid)
    before = rss(pid)
    for v1, bombs in ((False, LEGACY_BOMBS), (True, V1_BOMBS)):
        for frame in bombs:
            ws = await session.ws(v1)
            await ws.send_bytes(frame)
            assert await closed_with(ws) == BAD_FRAME, frame.hex()
    ws = await session.ws(True)
    await ws.send_str("{}")  # text on the binary protocol
    assert await closed_with(ws) == BAD_FRAME
    grown = rss(pid) - before
    assert grown < 32 * MB, f"the server grew by {grown / MB:.0f} MiB"
    # The kernel and both protocols still work; the server kept its pid.
    assert await execute(session, False, "print(6 * 7)") == "42\n"
    assert await execute(session, True, "print(6 * 7)") == "42\n"
    assert server_pid(session.hub.user.uid) == pid
    text = (session.hub.data / "logs" / f"{session.hub.user.name}.log").read_text(
        "utf-8", "replace"
    )
    assert "Traceback" not in text and "closed a websocket" in text


@needs_root
@pytest.mark.timeout(300)
async def test_fuzzed_frames_leave_the_server_as_it_was(session: Session) -> None:
    pid = server_pid(session.hub.user.uid)
    before = rss(pid)
    rnd = random.Random(12)
    for v1 in (False, True):
        refused = 0
        for _ in range(150):
            ws = await session.ws(v1)
            await ws.send_bytes(_fuzz_frame(rnd, v1))
            refused += not await stays_open(ws, 5)
            await ws.close()
        assert refused >= 140  # a random frame is now and then a message
    assert rss(pid) - before < 32 * MB
    assert await execute(session, True, "print('still here')") == "still here\n"


def _fuzz_frame(rnd: random.Random, v1: bool) -> bytes:
    """A frame whose count and offsets are random, often huge, sometimes plausible."""
    width, order = (8, "little") if v1 else (4, "big")
    count = rnd.choice(
        [0, 1, 2, 5, 6, 7, 70, 2**16, 2 ** (8 * width) - 1, rnd.getrandbits(8 * width)]
    )
    n = min(count, rnd.randint(0, 12))
    offsets = [rnd.choice([0, 8, 56, rnd.getrandbits(16), 2 ** (8 * width) - 1]) for _ in range(n)]
    body = rnd.randbytes(rnd.randint(0, 256))
    head = count.to_bytes(width, order) + b"".join(o.to_bytes(width, order) for o in offsets)
    return head + body


@needs_root
@pytest.mark.timeout(300)
async def test_size_limits_are_the_settings(session: Session) -> None:
    """[spawner] kernel_ws_max_message, _max_json and _max_buffers reach the server."""
    ws = await session.ws(True)
    await ws.send_bytes(bytes(MAX_MESSAGE + 1))
    assert await closed_with(ws) == TOO_BIG
    ws = await session.ws(False)
    await ws.send_str(
        json.dumps({**message("kernel_info_request", {}, "s"), "pad": "x" * MAX_JSON})
    )
    assert await closed_with(ws) == BAD_FRAME
    msg = message("comm_msg", {"comm_id": "c", "data": {}}, "s")
    for count, closed in ((MAX_BUFFERS, False), (MAX_BUFFERS + 1, True)):
        ws = await session.ws(False)
        await ws.send_bytes(legacy_binary(json.dumps(msg).encode(), [b"buf"] * count))
        if closed:
            assert await closed_with(ws) == BAD_FRAME
        else:
            assert await stays_open(ws, 2)  # accepted
        await ws.close()


def legacy_binary(head: bytes, buffers: list[bytes]) -> bytes:
    """jupyter_server's serialize_binary_message, written out from the protocol."""
    chunks = [head, *buffers]
    offsets = [4 * (len(chunks) + 1)]
    for chunk in chunks[:-1]:
        offsets.append(offsets[-1] + len(chunk))
    return struct.pack(f"!{len(chunks) + 1}I", len(chunks), *offsets) + b"".join(chunks)


# --- the parsers under Hypothesis ---------------------------------------------------------

LIMITS = Limits(max_message=1 * MB, max_json=64 << 10, max_buffers=8)
fast = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _u(width: int) -> st.SearchStrategy[int]:
    top = 2 ** (8 * width) - 1
    return st.one_of(st.integers(0, 80), st.integers(0, top), st.sampled_from([top, top - 1]))


@st.composite
def framed(draw: st.DrawFn, width: int) -> bytes:
    """count, offsets (random or plausible) and a body: what a hostile client can send."""
    order = "little" if width == 8 else "big"
    count = draw(_u(width))
    n = min(count, draw(st.integers(0, 12)))
    offsets = draw(st.lists(_u(width), min_size=n, max_size=n))
    if draw(st.booleans()):
        offsets.sort()
    body = draw(st.binary(max_size=512))
    return count.to_bytes(width, order) + b"".join(o.to_bytes(width, order) for o in offsets) + body


def _peak(fn: Any, *args: Any) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        try:
            result: Any = fn(*args)
        except WireError as e:
            result = e
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@fast
@given(st.one_of(framed(4), st.binary(max_size=64)))
def test_legacy_parser_raises_only_wire_error_and_stays_within_the_frame(frame: bytes) -> None:
    result, peak = _peak(wire.from_legacy, frame, LIMITS)
    assert peak < 32 * len(frame) + (64 << 10)
    if not isinstance(result, WireError):
        _, msg, buffers = result
        assert isinstance(msg["header"], dict)
        assert sum(len(b) for b in buffers) <= len(frame)
        assert len(buffers) <= LIMITS.max_buffers


@fast
@given(st.one_of(framed(8), st.binary(max_size=64)))
def test_v1_parser_raises_only_wire_error_and_stays_within_the_frame(frame: bytes) -> None:
    result, peak = _peak(wire.from_v1, frame, LIMITS)
    assert peak < 32 * len(frame) + (64 << 10)
    if not isinstance(result, WireError):
        _, parts = result
        assert 4 <= len(parts) <= 4 + LIMITS.max_buffers
        assert sum(len(p) for p in parts) <= len(frame)


@fast
@given(st.text(max_size=300))
def test_legacy_text_raises_only_wire_error(text: str) -> None:
    try:
        channel, msg, _ = wire.from_legacy(text, LIMITS)
        wire.pack_legacy(msg, [])
    except WireError:
        return
    assert isinstance(channel, str)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)
headers = st.fixed_dictionaries(
    {"msg_id": st.text(max_size=8), "msg_type": st.text(max_size=8)},
    optional={"session": st.text(max_size=8), "x": json_values},
)
channels = st.sampled_from(wire.CHANNELS)
buffer_lists = st.lists(st.binary(max_size=64), max_size=8)


@fast
@given(channels, headers, objects, objects, buffer_lists)
def test_legacy_round_trip(
    channel: str,
    header: dict[str, Any],
    meta: dict[str, Any],
    content: dict[str, Any],
    buffers: list[bytes],
) -> None:
    parts = [json.dumps(x).encode() for x in (header, {}, meta, content)] + buffers
    got_channel, msg, got_buffers = wire.from_legacy(wire.to_legacy(channel, parts), LIMITS)
    assert (got_channel, got_buffers) == (channel, buffers)
    packed = wire.pack_legacy(msg, got_buffers)
    assert [json.loads(p) for p in packed[:4]] == [header, {}, meta, content]


@fast
@given(st.text(max_size=20), headers, objects, objects, buffer_lists)
def test_v1_round_trip(
    channel: str,
    header: dict[str, Any],
    meta: dict[str, Any],
    content: dict[str, Any],
    buffers: list[bytes],
) -> None:
    parts = [json.dumps(x).encode() for x in (header, {}, meta, content)] + buffers
    assert wire.from_v1(wire.to_v1(channel, parts), LIMITS) == (channel, parts)


@fast
@given(st.sampled_from([0, 1, 2, 3]), st.binary(max_size=40))
def test_v1_json_parts_must_be_objects(which: int, junk: bytes) -> None:
    parts = [json.dumps(message("x", {}, "s")["header"]).encode(), b"{}", b"{}", b"{}"]
    parts[which] = junk
    try:
        ok = isinstance(json.loads(junk), dict) and (
            which or {"msg_id", "msg_type"} <= set(json.loads(junk))
        )
    except ValueError:
        ok = False
    if ok:
        return
    with pytest.raises(WireError):
        wire.from_v1(wire.to_v1("shell", parts), LIMITS)


@fast
@given(st.integers(0, 12))
def test_buffer_count_is_the_limit(count: int) -> None:
    msg = message("comm_msg", {}, "s")
    frame = legacy_binary(json.dumps(msg).encode(), [b"x"] * count)
    v1 = wire.to_v1(
        "shell", [json.dumps(msg["header"]).encode(), b"{}", b"{}", b"{}"] + [b"x"] * count
    )
    if count <= LIMITS.max_buffers:
        assert len(wire.from_legacy(frame, LIMITS)[2]) == count
        assert len(wire.from_v1(v1, LIMITS)[1]) == 4 + count
    else:
        with pytest.raises(WireError):
            wire.from_legacy(frame, LIMITS)
        with pytest.raises(WireError):
            wire.from_v1(v1, LIMITS)


@pytest.mark.parametrize("frame", LEGACY_BOMBS)
def test_legacy_bombs_are_refused_at_once(frame: bytes) -> None:
    _, peak = _peak(wire.from_legacy, frame, wire.DEFAULT_LIMITS)
    assert peak < 64 << 10
    with pytest.raises(WireError):
        wire.from_legacy(frame)


@pytest.mark.parametrize("frame", V1_BOMBS)
def test_v1_bombs_are_refused_at_once(frame: bytes) -> None:
    _, peak = _peak(wire.from_v1, frame, wire.DEFAULT_LIMITS)
    assert peak < 64 << 10
    with pytest.raises(WireError):
        wire.from_v1(frame)


def test_bad_json_is_a_wire_error() -> None:
    ok = '"header": {"msg_id": "1", "msg_type": "execute_request"}'
    for text in (
        "[" * 100_000,
        f'{{{ok}, "content": {{"x": NaN}}}}',
        f'{{{ok}, "content": {{"x": "\\ud800"}}}}',
        f'{{{ok}, "content": 5}}',
        f'{{{ok}, "channel": 5}}',
        '{"header": {"msg_type": "x"}}',
        "1" * 5000,
    ):
        with pytest.raises(WireError):
            _channel, msg, buffers = wire.from_legacy(text)
            wire.pack_legacy(msg, buffers)
