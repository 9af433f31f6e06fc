"""The hub's client TLS contexts read CAs on demand from a hashed directory (minihub.trust).

Real TLS on loopback: a server with a certificate from a trustme CA, and a fresh Python
process that installs what the hub installs (lean.install_hub) with SSL_CERT_DIR naming a
directory that holds that CA under OpenSSL's hashed name. Its contexts hold no certificate
up front, yet verify the server, and refuse one from a CA the directory does not hold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import trustme

from tests.test_tls import write_pair

CHILD = textwrap.dedent(
    """
    import asyncio, json, ssl, sys
    from minihub.singleuser import lean
    lean.install_hub()
    import aiohttp
    import aiohttp.connector as connector
    from minihub import trust

    async def fetch(url, **kw):
        try:
            async with aiohttp.ClientSession() as s:
                async with s.get(url, timeout=aiohttp.ClientTimeout(total=10), **kw) as r:
                    return await r.text()
        except aiohttp.ClientConnectorCertificateError:
            return "refused"

    async def main():
        good, bad = sys.argv[1], sys.argv[2]
        print(json.dumps({
            "dir": trust.hashed_ca_dir(),
            "held": [connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509"],
                     trust.client_context().cert_store_stats()["x509"]],
            "default": [await fetch(good), await fetch(bad)],
            "trust": [await fetch(good, ssl=trust.client_context()),
                      await fetch(bad, ssl=trust.client_context())],
        }))
    asyncio.run(main())
    """
)


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _serve(ca: trustme.CA, tmp: Path, name: str) -> Iterator[str]:
    import ssl

    cert, key = write_pair(ca, tmp, name)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    httpd = HTTPServer(("127.0.0.1", 0), _Hello)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    t = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    t.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_port}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[Path, str, str, Path]]:
    """(hashed dir holding the good CA, good server URL, bad server URL, good CA's PEM)."""
    good, bad = trustme.CA(), trustme.CA()
    pem = tmp_path / "good-ca.pem"
    good.cert_pem.write_to_path(str(pem))
    digest = subprocess.run(
        ["openssl", "x509", "-subject_hash", "-noout", "-in", str(pem)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    cadir = tmp_path / "cas"
    cadir.mkdir()
    (cadir / f"{digest}.0").write_bytes(pem.read_bytes())
    g, b = _serve(good, tmp_path, "good"), _serve(bad, tmp_path, "bad")
    yield cadir, next(g), next(b), pem
    for gen in (g, b):
        next(gen, None)


def _child(env: dict[str, str], good: str, bad: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, good, bad],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_contexts_hold_no_ca_up_front_yet_verify(
    servers: tuple[Path, str, str, Path],
) -> None:
    cadir, good, bad, _ = servers
    env = {k: v for k, v in os.environ.items() if k != "SSL_CERT_FILE"}
    env["SSL_CERT_DIR"] = str(cadir)
    got = _child(env, good, bad)
    assert got["dir"] == str(cadir)
    assert got["held"] == [0, 0]  # nothing read before a handshake asks
    assert got["default"] == ["hello", "refused"]  # aiohttp's own default context
    assert got["trust"] == ["hello", "refused"]


def test_an_operators_bundle_is_read_as_before(servers: tuple[Path, str, str, Path]) -> None:
    cadir, good, bad, pem = servers
    env = dict(os.environ, SSL_CERT_DIR=str(cadir), SSL_CERT_FILE=str(pem))
    got = _child(env, good, bad)
    assert got["dir"] == ""  # SSL_CERT_FILE names another bundle than the system's
    assert got["held"] == [1, 1]  # the operator's bundle, read up front as always
    assert got["default"] == ["hello", "refused"]
    assert got["trust"] == ["hello", "refused"]
