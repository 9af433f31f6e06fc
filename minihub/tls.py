"""TLS for the hub's listener: a modern server context, reload on SIGHUP, HTTP→HTTPS redirects.

Certificate problems stop start-up with one line naming the file; a failed reload keeps the
certificate already in use.
"""

from __future__ import annotations

import logging
import re
import ssl
from pathlib import Path

from aiohttp import web

from .errors import StartupError

log = logging.getLogger(__name__)

# TLS 1.2 suites with forward secrecy and AEAD only; TLS 1.3 suites are all modern already.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
HSTS_VALUE = "max-age=31536000"  # one year; no includeSubDomains, other hosts are not ours

_CERT_MARK = "-----BEGIN CERTIFICATE-----"
_KEY_MARK = re.compile(r"-----BEGIN (?:RSA |EC |ENCRYPTED )?PRIVATE KEY-----")
_ACME_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")  # base64url: no dots, no slashes
_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::\d{1,5})?$")


def make_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """A server-side context for `cert` (PEM chain) and `key`; StartupError if they are bad."""
    ctx = _new_context()
    _load(ctx, Path(cert), Path(key))
    return ctx


def reload(ctx: ssl.SSLContext, cert: str | Path, key: str | Path) -> bool:
    """Load a renewed certificate into the live `ctx` (e.g. on SIGHUP).

    New handshakes use the new certificate, open connections keep going. If the files are
    bad, the old certificate stays in use, the problem is logged and False is returned.
    """
    cert, key = Path(cert), Path(key)
    try:
        _load(_new_context(), cert, key)  # check first: a half-loaded live context would break
        _load(ctx, cert, key)
    except StartupError as e:
        log.error("TLS certificate not reloaded, still using the previous one: %s", e)
        return False
    log.info("TLS certificate reloaded from %s", cert)
    return True


def _new_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= ssl.OP_SINGLE_ECDH_USE | ssl.OP_NO_RENEGOTIATION
    return ctx


def _load(ctx: ssl.SSLContext, cert: Path, key: Path) -> None:
    cert_text = _read(cert, "certificate")
    key_text = _read(key, "private key")
    if _CERT_MARK not in cert_text:
        raise StartupError(f"{cert}: not a PEM certificate (no '{_CERT_MARK}' line)")
    if not _KEY_MARK.search(key_text):
        raise StartupError(f"{key}: not a PEM private key (no 'BEGIN ... PRIVATE KEY' line)")
    if "ENCRYPTED" in key_text:
        raise StartupError(
            f"{key}: the private key is protected by a passphrase; "
            "minihub needs an unencrypted key (chmod 600 it instead)"
        )
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as e:
        raise StartupError(_explain(e, cert, key)) from None


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        raise StartupError(f"{path}: {what} file not found") from None
    except OSError as e:
        raise StartupError(f"{path}: cannot read {what} file: {e.strerror or e}") from None


def _no_password() -> str:
    raise StartupError("the private key is protected by a passphrase")


def _explain(e: ssl.SSLError, cert: Path, key: Path) -> str:
    reason = (e.reason or str(e)).upper()
    if "MISMATCH" in reason:
        return f"{key}: private key does not match the certificate in {cert}"
    if "KEY" in reason and "CERT" not in reason:
        return f"{key}: not a usable PEM private key ({e.reason or e})"
    return f"{cert}: not a usable PEM certificate chain ({e.reason or e})"


def hsts_headers(response: web.StreamResponse) -> None:
    """Tell browsers to use HTTPS only; call on responses served over TLS."""
    response.headers.setdefault("Strict-Transport-Security", HSTS_VALUE)


async def _hsts_on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    if request.secure:
        hsts_headers(response)


def add_hsts(app: web.Application) -> None:
    """Add HSTS to every response `app` sends over TLS, error pages and streams included."""
    app.on_response_prepare.append(_hsts_on_prepare)


def redirect_app(
    https_port: int, base_url: str = "/", acme_webroot: str | Path | None = None
) -> web.Application:
    """The plain-HTTP listener: every request gets a 301 to the same place over HTTPS.

    Paths outside `base_url` are sent to `base_url` itself. With `acme_webroot`, files under
    <acme_webroot>/.well-known/acme-challenge/ are served as they are, so
    `certbot --webroot -w <acme_webroot>` can renew while this listener holds port 80.
    """
    app = web.Application()
    port = "" if https_port == 443 else f":{https_port}"
    base = "/" + base_url.strip("/") + "/" if base_url.strip("/") else "/"

    async def redirect(request: web.Request) -> web.StreamResponse:
        host = request.headers.get("Host", "")
        if not _HOST.match(host):
            return web.json_response(
                {"status": 400, "message": "Missing or bad Host header."}, status=400
            )
        path = request.raw_path if request.path.startswith(base) else base
        # Location set as text: building a URL object would re-quote the client's path.
        return web.Response(
            status=301,
            text="Moved to HTTPS.\n",
            headers={"Location": f"https://{_strip_port(host)}{port}{path}"},
        )

    if acme_webroot is not None:
        challenges = Path(acme_webroot) / ".well-known" / "acme-challenge"

        async def challenge(request: web.Request) -> web.StreamResponse:
            token = request.match_info["token"]
            file = challenges / token
            if not _ACME_TOKEN.match(token) or not file.is_file():
                return web.Response(status=404, text="No such challenge.\n")
            return web.FileResponse(file, headers={"Content-Type": "text/plain"})

        app.router.add_get("/.well-known/acme-challenge/{token}", challenge)
    app.router.add_route("*", "/{tail:.*}", redirect)
    return app


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host[: host.index("]") + 1]
    return host.split(":", 1)[0]
