"""Keeps jsonschema's optional format checkers out of minihub's server, aiodns out of all.

nbformat imports jsonschema, which imports every format-checker library it finds installed
(lark and its grammars, arrow, webcolors, uri_template, isoduration, fqdn, ...: 18 MiB
resident, measured). They come with the hub's venv for jupyter_server's sake; notebook
validation never uses them (nbformat's schemas have no `format` keyword, and its validator is
fastjsonschema). Refused here, jsonschema just registers fewer checkers. Installed in the
server's process (and the fork server it is forked from) before anything imports nbformat;
kernels and terminals run other interpreters and are untouched.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

from .. import trust

FORMAT_CHECKERS = frozenset(
    {
        "arrow",
        "fqdn",
        "isoduration",
        "jsonpointer",
        "lark",
        "rfc3339_validator",
        "rfc3986_validator",
        "rfc3987",
        "rfc3987_syntax",
        "uri_template",
        "webcolors",
    }
)


# aiohttp takes aiodns (c-ares) when it is installed, as JupyterHub's dependency it is in a
# venv that has both: 0.9 MiB and ~27 ms of start-up in every minihub process, for DNS lookups
# the hub and its servers hardly make (servers, kernels and the proxy's targets are addresses).
# Refused, aiohttp resolves with getaddrinfo in a thread, as where aiodns is not installed.
RESOLVERS = frozenset({"aiodns", "pycares"})


class _Refuse(importlib.abc.MetaPathFinder):
    def __init__(self, names: frozenset[str], who: str) -> None:
        self.names, self.who = names, who

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if fullname.partition(".")[0] in self.names:
            raise ImportError(f"{fullname} is not used by {self.who}", name=fullname)
        return None


def _refuse(names: frozenset[str], who: str) -> None:
    if not any(isinstance(f, _Refuse) and f.names == names for f in sys.meta_path):
        sys.meta_path.insert(0, _Refuse(names, who))


def install() -> None:
    """In minihub's server: no format checkers, no aiodns."""
    _refuse(FORMAT_CHECKERS, "minihub's server")
    install_hub()


def install_hub() -> None:
    """In any minihub process (before aiohttp is imported): no aiodns, no CA bundle read, no
    C++ runtime for frozenlist."""
    _refuse(RESOLVERS, "minihub")
    _import_aiohttp()


def _import_aiohttp() -> None:
    """Import aiohttp with the environment it reads at import time set for that import only:
    - aiohttp makes its two default client contexts as it is imported, each reading the
      whole CA bundle (~0.9 MiB, ~45 ms: see minihub.trust). With the bundle named away
      (SSL_CERT_FILE) they keep OpenSSL's default directory and read a CA from it when a
      handshake needs one; only where that directory has hashed names, so that they trust
      exactly what they would have.
    - frozenlist's compiled FrozenList is C++: it alone loads libstdc++ into the hub (~0.9
      MiB of the hub's PSS at rest, measured). Its pure-Python one (FROZENLIST_NO_EXTENSIONS,
      its documented switch) holds aiohttp's signal handlers, walked a few times a request.
    """
    if "aiohttp" in sys.modules:
        return
    env = {"FROZENLIST_NO_EXTENSIONS": "1"}
    if trust.hashed_ca_dir():
        env["SSL_CERT_FILE"] = os.devnull
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import aiohttp  # noqa: F401 - imported here, in this environment
    finally:
        for k, v in before.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v
