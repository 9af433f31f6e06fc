"""The hub as an operator runs it: a real process, TLS, signals, restarts with live kernels."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import subprocess
import uuid
import warnings
from pathlib import Path

import aiohttp
import pytest
import trustme
from conftest import needs_root
from helpers import add_users, execute_request
from test_config_cli import MINIHUB, free_port, start_hub
from test_hub_spawn import h


def make_cert(tmp: Path, ca: trustme.CA, name: str) -> tuple[str, str]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    c, k = tmp / f"{name}.pem", tmp / f"{name}.key"
    cert.private_key_and_cert_chain_pem.write_to_path(str(c))
    cert.private_key_pem.write_to_path(str(k))
    return str(c), str(k)


def peer_cert(port: int, ca: trustme.CA) -> bytes:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    import socket

    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s,
    ):
        der = s.getpeercert(binary_form=True)
        assert der is not None
        return der


async def test_tls_hsts_secure_cookie_sighup_and_redirect(tmp_path):
    ca = trustme.CA()
    cert, key = make_cert(tmp_path, ca, "one")
    port, rport = free_port(), free_port()
    toml = tmp_path / "m.toml"
    toml.write_text(
        f'[hub]\nssl_cert = "{cert}"\nssl_key = "{key}"\nredirect_port = {rport}\n'
        '[auth]\nauthenticator = "native"\n'
    )
    data = tmp_path / "data"
    add_users(data, ["tess"], toml, tokens=[], passwords={"tess": "tess-password"})
    hub = start_hub(
        [*MINIHUB, "-f", str(toml), "--data-dir", str(data), "--port", str(port)],
        port,
        tmp_path / "hub.log",
    )
    try:
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx), cookie_jar=jar
        ) as s:
            r = await s.get(f"https://127.0.0.1:{port}/hub/login")
            assert r.status == 200 and "max-age" in r.headers["Strict-Transport-Security"]
            r = await s.post(
                f"https://127.0.0.1:{port}/hub/login",
                allow_redirects=False,
                data={"username": "tess", "password": "tess-password"},
            )
            assert r.status == 302 and r.cookies["minihub-session"]["secure"]
            # an old connection stays up across the reload
            first = peer_cert(port, ca)
            cert2, key2 = make_cert(tmp_path, ca, "two")
            Path(cert).write_bytes(Path(cert2).read_bytes())
            Path(key).write_bytes(Path(key2).read_bytes())
            hub.send_signal(signal.SIGHUP)
            for _ in range(50):
                if peer_cert(port, ca) != first:
                    break
                await asyncio.sleep(0.1)
            assert peer_cert(port, ca) != first
            r = await s.get(f"https://127.0.0.1:{port}/hub/home")
            assert r.status == 200
            # TLS 1.1 is refused
            old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ca.configure_trust(old)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
            with pytest.raises((ssl.SSLError, OSError, aiohttp.ClientError)):
                await s.get(f"https://127.0.0.1:{port}/hub/login", ssl=old)
        async with aiohttp.ClientSession() as s:
            r = await s.get(f"http://127.0.0.1:{rport}/hub/login?x=1", allow_redirects=False)
            assert r.status in (301, 308)
            assert r.headers["Location"] == f"https://127.0.0.1:{port}/hub/login?x=1"
    finally:
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(20) == 0


def test_bad_certificate_is_one_line(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    r = subprocess.run(
        [
            *MINIHUB,
            "--data-dir",
            str(tmp_path / "d"),
            "--ssl-cert",
            str(bad),
            "--ssl-key",
            str(bad),
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "bad.pem" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


async def _execute(s: aiohttp.ClientSession, url: str, code: str, session_id: str) -> str:
    msg_id = uuid.uuid4().hex
    async with s.ws_connect(url + f"?session_id={session_id}") as ws:
        await ws.send_json(execute_request(code, msg_id, session_id))
        await asyncio.sleep(0.5)  # the execution has started; now the hub goes away
        return msg_id


@needs_root
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
async def test_hub_restart_keeps_kernel_running(tmp_path, make_system_user, sig):
    u = make_system_user(f"mhpr_{sig.name.lower()}")
    data, port = tmp_path / "data", free_port()
    cmd = [*MINIHUB, "--data-dir", str(data), "--port", str(port)]
    token = add_users(data, [u.name])[u.name]
    log = tmp_path / "hub.log"
    hub = start_hub(cmd, port, log)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(headers=h(token)) as s:
            r = await s.post(f"{base}/hub/api/users/{u.name}/server")
            assert r.status in (201, 202)
            for _ in range(100):
                if (await (await s.get(f"{base}/hub/api/users/{u.name}")).json())["server"]:
                    break
                await asyncio.sleep(0.1)
            kernel = await (await s.post(f"{base}/user/{u.name}/api/kernels", json={})).json()
            url = f"{base}/user/{u.name}/api/kernels/{kernel['id']}/channels"
            session_id = uuid.uuid4().hex
            ws = await s.ws_connect(url + f"?session_id={session_id}")
            msg_id = uuid.uuid4().hex
            # 'done' is printed only once the test says so, after the hub (and so its
            # client) is gone; then the kernel says it has printed (bounded: 60 s).
            go, printed = Path(u.home) / "mhpr-go", Path(u.home) / "mhpr-printed"
            sleeper = (
                f"import os, time\nfor _ in range(1200):\n    if os.path.exists({str(go)!r}):"
                "\n        break\n    time.sleep(0.05)\nprint('done', flush=True)\n"
                f"open({str(printed)!r}, 'w').close()"
            )
            await ws.send_json(execute_request(sleeper, msg_id, session_id))
            async with asyncio.timeout(30):  # the execution has started; now the hub goes away
                async for m in ws:
                    msg = json.loads(m.data)
                    if msg.get("parent_header", {}).get("msg_id") == msg_id and (
                        msg["msg_type"] == "status" and msg["content"]["execution_state"] == "busy"
                    ):
                        break
            hub.send_signal(sig)
            code = await asyncio.to_thread(hub.wait, 20)  # the client keeps answering meanwhile
            assert code == (0 if sig == signal.SIGTERM else -9)
            async with asyncio.timeout(10):
                closed = await ws.receive()
                while closed.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    closed = await ws.receive()
            assert closed.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.ERROR,
            )
            if sig == signal.SIGTERM:
                assert closed.data == aiohttp.WSCloseCode.GOING_AWAY
            await ws.close()
        go.touch()  # 'done' is printed while no client is connected
        for _ in range(300):
            if printed.exists():
                break
            await asyncio.sleep(0.05)
        assert printed.exists(), "the kernel did not print while the hub was down"
        hub = start_hub(cmd, port, log)
        async with aiohttp.ClientSession(headers=h(token)) as s:
            r = await s.get(f"{base}/user/{u.name}/api/kernels/{kernel['id']}")
            assert r.status == 200
            texts = []
            async with s.ws_connect(url + f"?session_id={session_id}") as ws:
                async with asyncio.timeout(20):
                    seen = set()
                    async for m in ws:
                        msg = json.loads(m.data)
                        if msg.get("parent_header", {}).get("msg_id") != msg_id:
                            continue
                        if msg["msg_type"] == "stream":
                            texts.append(msg["content"]["text"])
                        if msg["msg_type"] == "execute_reply" or (
                            msg["msg_type"] == "status"
                            and msg["content"]["execution_state"] == "idle"
                        ):
                            seen.add(msg["msg_type"])
                        if seen == {"execute_reply", "status"}:
                            break
            assert "done" in "".join(texts)
            await s.delete(f"{base}/hub/api/users/{u.name}/server")
        text = log.read_text()
        assert "spawned " + u.name in text and token not in text
        assert u.password not in text
    finally:
        if hub.poll() is None:
            hub.send_signal(signal.SIGTERM)
            hub.wait(20)
