"""TLS with real certificates (trustme) served by a real aiohttp server on loopback.

Protocol versions, reload with a renewed certificate, the HTTP→HTTPS redirect listener and
the one-line start-up errors for bad certificate files.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestClient
from yarl import URL

from minihub import tls
from minihub.errors import StartupError

ROOT = Path(__file__).resolve().parent.parent


def write_pair(ca: trustme.CA, tmp: Path, name: str) -> tuple[Path, Path]:
    issued = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = tmp / f"{name}.pem", tmp / f"{name}.key"
    issued.private_key_pem.write_to_path(str(key))
    cert.write_bytes(b"".join(p.bytes() for p in issued.cert_chain_pems))
    return cert, key


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def pair(ca: trustme.CA, tmp_path: Path) -> tuple[Path, Path]:
    return write_pair(ca, tmp_path, "server")


def client_ctx(ca: trustme.CA, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
        if version < ssl.TLSVersion.TLSv1_2:
            ctx.set_ciphers("ALL:@SECLEVEL=0")  # let the client at least try the old protocol
    return ctx


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


@pytest.fixture
async def tls_server(pair: tuple[Path, Path]) -> AsyncIterator[tuple[int, ssl.SSLContext]]:
    ctx = tls.make_context(*pair)
    app = web.Application()
    tls.add_hsts(app)
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = runner.addresses[0][1]
    yield port, ctx
    await runner.cleanup()


async def handshake(
    port: int, ctx: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost"), 10
    )


def peer_cert(writer: asyncio.StreamWriter) -> bytes:
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    assert der is not None
    return der  # type: ignore[no-any-return]


def der_of(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(
        cert.read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    )


async def get_over(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    body = await asyncio.wait_for(reader.readexactly(5), 10)
    return head + body


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 5)
    except (ConnectionError, ssl.SSLError):
        pass


# ---------------------------------------------------------------- protocol versions


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_modern_tls_accepted(
    tls_server: tuple[int, ssl.SSLContext], ca: trustme.CA, version: ssl.TLSVersion
) -> None:
    port, _ = tls_server
    reader, writer = await handshake(port, client_ctx(ca, version))
    try:
        assert writer.get_extra_info("ssl_object").version() == version.name.replace("_", ".")
        answer = await get_over(reader, writer)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello")
        assert b"Strict-Transport-Security: max-age=" in answer
    finally:
        await close(writer)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
async def test_old_tls_refused(
    tls_server: tuple[int, ssl.SSLContext], ca: trustme.CA, version: ssl.TLSVersion
) -> None:
    port, ctx = tls_server
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    try:
        old = client_ctx(ca, version)
    except ssl.SSLError:
        pytest.skip("this OpenSSL cannot even build an old-TLS client")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _, writer = await handshake(port, old)
        await close(writer)


def test_ciphers_are_modern(pair: tuple[Path, Path]) -> None:
    ctx = tls.make_context(*pair)
    tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    for c in tls12:
        assert c["kea"] == "kx-ecdhe" and c["aead"], c["name"]


# ---------------------------------------------------------------- reload


async def test_reload_new_cert_for_new_connections(
    tls_server: tuple[int, ssl.SSLContext], ca: trustme.CA, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    port, ctx = tls_server
    old_reader, old_writer = await handshake(port, client_ctx(ca))
    try:
        assert peer_cert(old_writer) == der_of(pair[0])
        new_cert, new_key = write_pair(ca, tmp_path, "renewed")
        assert tls.reload(ctx, new_cert, new_key)
        _, new_writer = await handshake(port, client_ctx(ca))
        assert peer_cert(new_writer) == der_of(new_cert) != der_of(pair[0])
        await close(new_writer)
        # the connection made before the reload keeps working
        assert (await get_over(old_reader, old_writer)).endswith(b"hello")
    finally:
        await close(old_writer)


async def test_failed_reload_keeps_old_cert(
    tls_server: tuple[int, ssl.SSLContext],
    ca: trustme.CA,
    pair: tuple[Path, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port, ctx = tls_server
    other_cert, _ = write_pair(ca, tmp_path, "other")
    assert not tls.reload(ctx, other_cert, pair[1])  # key of a different certificate
    assert "does not match" in caplog.text
    _, writer = await handshake(port, client_ctx(ca))
    assert peer_cert(writer) == der_of(pair[0])
    await close(writer)


# ---------------------------------------------------------------- start-up errors


def one_line_error(cert: Path, key: Path) -> str:
    with pytest.raises(StartupError) as info:
        tls.make_context(cert, key)
    msg = str(info.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_missing_files(pair: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = pair
    msg = one_line_error(tmp_path / "nope.pem", key)
    assert msg.startswith(str(tmp_path / "nope.pem")) and "not found" in msg
    msg = one_line_error(cert, tmp_path / "nope.key")
    assert msg.startswith(str(tmp_path / "nope.key")) and "not found" in msg


def test_unreadable_file(pair: tuple[Path, Path], tmp_path: Path) -> None:
    msg = one_line_error(tmp_path, pair[1])  # a directory: root can read any mode bits
    assert msg.startswith(str(tmp_path)) and "cannot read" in msg


def test_garbage_files(pair: tuple[Path, Path], tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("this is not a certificate\n")
    assert one_line_error(junk, pair[1]).startswith(f"{junk}: not a PEM certificate")
    assert one_line_error(pair[0], junk).startswith(f"{junk}: not a PEM private key")
    # PEM armour around garbage
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    msg = one_line_error(broken, pair[1])
    assert msg.startswith(f"{broken}: not a usable PEM certificate")
    # swapped arguments: the key given as the certificate
    assert one_line_error(pair[1], pair[0]).startswith(f"{pair[1]}: not a PEM certificate")


def test_mismatched_key(ca: trustme.CA, pair: tuple[Path, Path], tmp_path: Path) -> None:
    _, other_key = write_pair(ca, tmp_path, "other")
    msg = one_line_error(pair[0], other_key)
    assert msg == f"{other_key}: private key does not match the certificate in {pair[0]}"


def test_encrypted_key(pair: tuple[Path, Path], tmp_path: Path) -> None:
    enc = tmp_path / "enc.key"
    subprocess.run(
        [
            "openssl",
            "pkey",
            "-in",
            str(pair[1]),
            "-out",
            str(enc),
            "-aes256",
            "-passout",
            "pass:secret",
        ],
        check=True,
        capture_output=True,
    )
    assert "passphrase" in one_line_error(pair[0], enc)


# ---------------------------------------------------------------- redirect listener and helper

Client = TestClient[web.Request, web.Application]


@pytest.mark.parametrize(
    "https_port, host, path, expected",
    [
        (
            443,
            "hub.example.org",
            "/hub/login?next=%2Fuser%2Fa",
            "https://hub.example.org/hub/login?next=%2Fuser%2Fa",
        ),
        (8443, "hub.example.org:8080", "/user/a/tree", "https://hub.example.org:8443/user/a/tree"),
        (443, "[::1]:80", "/", "https://[::1]/"),
        (443, "10.0.0.1", "/x", "https://10.0.0.1/x"),
    ],
)
async def test_redirect_app(
    aiohttp_client: Callable[..., Awaitable[Client]],
    https_port: int,
    host: str,
    path: str,
    expected: str,
) -> None:
    client = await aiohttp_client(tls.redirect_app(https_port, "/"))
    for method in ("GET", "POST"):
        url = URL(f"http://127.0.0.1:{client.port}{path}", encoded=True)
        r = await client.session.request(method, url, headers={"Host": host}, allow_redirects=False)
        assert r.status == 301
        assert r.headers["Location"] == expected


async def test_redirect_app_base_url(aiohttp_client: Callable[..., Awaitable[Client]]) -> None:
    client = await aiohttp_client(tls.redirect_app(443, "/jupyter/"))
    r = await client.get("/jupyter/hub/home", headers={"Host": "h.org"}, allow_redirects=False)
    assert r.headers["Location"] == "https://h.org/jupyter/hub/home"
    r = await client.get("/other", headers={"Host": "h.org"}, allow_redirects=False)
    assert r.headers["Location"] == "https://h.org/jupyter/"


async def test_redirect_app_bad_host(aiohttp_client: Callable[..., Awaitable[Client]]) -> None:
    client = await aiohttp_client(tls.redirect_app(443))
    r = await client.get("/", headers={"Host": "evil.org/x@y"}, allow_redirects=False)
    assert r.status == 400
    assert (await r.json())["status"] == 400


async def test_redirect_app_serves_acme_challenges(
    aiohttp_client: Callable[..., Awaitable[Client]], tmp_path: Path
) -> None:
    challenges = tmp_path / ".well-known" / "acme-challenge"
    challenges.mkdir(parents=True)
    (challenges / "tok_EN-1").write_text("tok_EN-1.thumbprint")
    (tmp_path / "secret.txt").write_text("not for the web")
    client = await aiohttp_client(tls.redirect_app(443, "/", acme_webroot=tmp_path))
    r = await client.get("/.well-known/acme-challenge/tok_EN-1", headers={"Host": "h.org"})
    assert r.status == 200 and await r.text() == "tok_EN-1.thumbprint"
    for bad in ("missing", "..%2F..%2Fsecret.txt", "%2E%2E"):
        url = URL(f"http://127.0.0.1:{client.port}/.well-known/acme-challenge/{bad}", encoded=True)
        r = await client.session.get(url, allow_redirects=False)
        assert r.status in (301, 404)
        assert "not for the web" not in await r.text()


def test_hsts_helper() -> None:
    resp = web.Response()
    tls.hsts_headers(resp)
    assert resp.headers["Strict-Transport-Security"] == tls.HSTS_VALUE


# ---------------------------------------------------------------- the cert helper script


def test_make_self_signed_cert_script(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "make-self-signed-cert"), "hub.test", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    cert, key = tmp_path / "hub.test.crt", tmp_path / "hub.test.key"
    assert key.stat().st_mode & 0o077 == 0
    ctx = tls.make_context(cert, key)
    assert isinstance(ctx, ssl.SSLContext)
    text = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-text"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "DNS:hub.test" in text
