"""Client TLS contexts that read the system's CAs when a handshake needs one, not up front.

A client context made the usual way (`ssl.create_default_context()`) reads the whole CA
bundle, 144 certificates on Debian: ~0.9 MiB of memory and ~45 ms each (measured). The hub
made four (aiohttp's two at import, the proxy's, the readiness probes') although it mostly
talks plain HTTP to servers on loopback. Where the system also keeps its CAs in a directory of
OpenSSL's hashed names (Debian's /etc/ssl/certs, which update-ca-certificates builds from the
same certificates as the bundle), a context pointed at that directory reads a certificate only
when a handshake asks for its issuer: the same trust, verified the same way. Elsewhere (no
hashed directory), or when SSL_CERT_FILE names another bundle than the system's, contexts read
the bundle as before.

No aiohttp here: minihub.singleuser.lean uses this before aiohttp is imported.
"""

from __future__ import annotations

import functools
import os
import re
import ssl

_HASHED_NAME = re.compile(r"^[0-9a-f]{8}\.[0-9]+$")


@functools.cache
def hashed_ca_dir() -> str:
    """The system's CA directory if it holds OpenSSL's hashed names, else ""."""
    paths = ssl.get_default_verify_paths()
    chosen = os.environ.get("SSL_CERT_FILE")
    if chosen and os.path.realpath(chosen) != os.path.realpath(paths.openssl_cafile):
        return ""  # the operator chose another bundle: it counts
    capath = paths.capath
    if not capath:
        return ""
    try:
        names = os.listdir(capath)
    except OSError:
        return ""
    return capath if any(_HASHED_NAME.match(n) for n in names) else ""


@functools.cache
def client_context(cafile: str = "") -> ssl.SSLContext:
    """A verifying client context: against `cafile` if given, else the system's CAs (read on
    demand where hashed_ca_dir() has them). One per file, made at first use and shared."""
    if cafile:
        return ssl.create_default_context(cafile=cafile)
    capath = hashed_ca_dir()
    return ssl.create_default_context(capath=capath) if capath else ssl.create_default_context()
