"""Every secret the hub handles, in one place: generation, hashing, comparison, derivation.

Tokens and session ids are random; only their SHA-256 is stored. Derived values (XSRF tokens,
per-server secrets) are HMACs of the cookie secret so that nothing derivable is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from ..errors import StartupError

TOKEN_BYTES = 32
PREFIX_LEN = 4


def new_token() -> str:
    return secrets.token_hex(TOKEN_BYTES)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def equal(a: str, b: str) -> bool:
    return hmac.compare_digest(
        a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape")
    )


def derive(key: bytes, purpose: str, value: str) -> str:
    msg = f"{purpose}\x00{value}".encode("utf-8", "surrogateescape")
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def xsrf_token(key: bytes, session_id: str) -> str:
    return derive(key, "xsrf", session_id)


def server_secret(key: bytes, username: str, nonce: str) -> str:
    """The secret a user server requires; a restarted hub derives it again from the nonce."""
    return derive(key, "server", f"{username}\x00{nonce}")


def server_proof(key: bytes, username: str, nonce: str) -> str:
    """What a user server answers back on every response to the hub's requests, so the hub
    knows it talks to the process it started (not one that took the port after it died).

    Independent of the secret: the secret travels in every request, and a process that took
    the port would learn it from the first one; the proof only ever travels hub-ward."""
    return derive(key, "server-proof", f"{username}\x00{nonce}")


def load_or_create_key(path: Path) -> bytes:
    """Read the cookie secret (hex), creating it with mode 0600 if missing."""
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
        st = path.stat()
        if st.st_mode & 0o077:
            raise StartupError(
                f"{path}: cookie secret file is readable by others "
                f"(mode {oct(st.st_mode & 0o777)}); run chmod 600 {path}"
            )
        text = path.read_text().strip()
    except OSError as e:
        raise StartupError(
            f"{path}: cannot read or create the cookie secret: {e.strerror}"
        ) from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = text.encode()
    if len(key) < 16:
        raise StartupError(f"{path}: cookie secret is too short (need at least 16 bytes)")
    return key
