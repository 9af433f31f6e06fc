"""Keeps jsonschema's optional format checkers out of minihub's server.

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
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

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


class _NoFormatCheckers(importlib.abc.MetaPathFinder):
    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if fullname.partition(".")[0] in FORMAT_CHECKERS:
            raise ImportError(f"{fullname} is not used by minihub's server", name=fullname)
        return None


def install() -> None:
    if not any(isinstance(f, _NoFormatCheckers) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoFormatCheckers())
