"""Shared fixtures: real system users (tests run as root), temporary data dirs."""

from __future__ import annotations

import os
import pwd
import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from kube_cluster import kube_cluster, kube_namespace  # noqa: F401 (fixtures: a real cluster)

from minihub import procfs

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root to create system users")


@dataclass
class SystemUser:
    name: str
    password: str
    uid: int
    gid: int
    home: str


def _create_user(name: str, password: str, groups: list[str] | None = None) -> SystemUser:
    subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
    subprocess.run(["userdel", "-r", "-f", name], capture_output=True)
    cmd = ["useradd", "-m", "-s", "/bin/bash"]
    if groups:
        cmd += ["-G", ",".join(groups)]
    subprocess.run(cmd + [name], check=True, capture_output=True)
    subprocess.run(
        ["chpasswd"], input=f"{name}:{password}\n", text=True, check=True, capture_output=True
    )
    pw = pwd.getpwnam(name)
    return SystemUser(name, password, pw.pw_uid, pw.pw_gid, pw.pw_dir)


@pytest.fixture(scope="session")
def make_system_user() -> Iterator[Callable[..., SystemUser]]:
    """Factory: make_system_user("mhx_alice") creates a real account with a random password.

    Every account made is removed (with its home) at the end of the session. Use a prefix
    per test module so modules never share accounts.
    """
    if not ROOT:
        pytest.skip("needs root to create system users")
    made: list[str] = []

    def make(name: str, groups: list[str] | None = None) -> SystemUser:
        made.append(name)
        return _create_user(name, "pw-" + secrets.token_urlsafe(12), groups)

    yield make
    for name in made:
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
        subprocess.run(["userdel", "-r", "-f", name], capture_output=True)


@pytest.fixture(scope="session", autouse=True)
def minihub_bytecode() -> None:
    """minihub byte-compiled once (its __pycache__ is git-ignored). With PYTHONDONTWRITEBYTECODE
    set, as in CI's environment, no process writes it: on a fresh clone every hub, server and
    CLI process the suite starts compiled ~50 modules from source, 0.1-0.2 s each."""
    import compileall

    import minihub

    compileall.compile_dir(os.path.dirname(minihub.__file__), quiet=1)


def _dead(pid: int) -> bool:
    return not procfs.alive(pid)


async def gone(pid: int) -> bool:
    """True once the process has exited (bounded wait). A zombie counts: a hub app that was
    closed in this same test process no longer reaps the servers it started."""
    import asyncio

    for _ in range(50):
        if _dead(pid):
            return True
        await asyncio.sleep(0.1)
    return False


@pytest.fixture
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("data")
    os.chmod(d, 0o711)
    return str(d)


# --- an in-process hub ---------------------------------------------------------------------
from typing import Any

from minihub import config as _config


def hub_config(data_dir: str, **settings: Any) -> _config.Config:
    """A validated Config; settings as {"auth.authenticator": "native", ...}."""
    overrides: dict[str, Any] = {"hub.data_dir": data_dir, "auth.login_failure_delay_seconds": 0.0}
    overrides.update({k.replace("__", "."): v for k, v in settings.items()})
    return _config.load(None, overrides)


async def login(
    client: Any, name: str, password: str, next: str = "", headers: dict[str, str] | None = None
) -> Any:
    """Log in through the form; return the response (redirects not followed)."""
    url = "/hub/login" + (f"?next={next}" if next else "")
    return await client.post(
        url, data={"username": name, "password": password}, allow_redirects=False, headers=headers
    )


def xsrf_of(client: Any) -> str:
    for c in client.session.cookie_jar:
        if c.key == "_xsrf":
            return str(c.value)
    return ""


# --- no 500s and no tracebacks from the hub, in any test -------------------------------------
import logging
import re
from pathlib import Path

# Which answers are the hub's own failure: 500 and the rare 5xx it never means to send.
# 502/503/504 say a user's server is dead, not running or slow (tests provoke those on
# purpose); 499 is minihub's log-only mark for a client that went away.
UPSTREAM_STATUSES = frozenset({502, 503, 504})
# Only minihub's loggers: tests run fake user servers on aiohttp in this process too, and
# their own errors are not the hub's (the hub's errors middleware lets no exception reach
# aiohttp; a hub process's stderr, where aiohttp's count, is read by hub_log_faults).
_FAULT_LOGGERS = ("minihub",)


def is_hub_fault(record: logging.LogRecord) -> bool:
    """A 5xx access line the hub should never write, or a traceback a minihub logger wrote
    at ERROR (the errors middleware's "unhandled error", a failed spawn's exception)."""
    status = getattr(record, "status", None)
    if record.name == "minihub.access" and isinstance(status, int):
        return 500 <= status < 600 and status not in UPSTREAM_STATUSES
    return (
        record.levelno >= logging.ERROR
        and record.exc_info is not None
        and record.name.startswith(_FAULT_LOGGERS)
    )


class _FaultCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.faults: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if is_hub_fault(record):
            self.faults.append(f"{record.name}: {record.getMessage()}"[:300])


@pytest.fixture(autouse=True)
def no_hub_500(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails a test during which an in-process hub answered 500 or logged a traceback
    (a server that fails to start is a 502: the hub worked, its upstream did not)."""
    collector = _FaultCollector()
    loggers = [logging.getLogger(n) for n in _FAULT_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(collector)
        if lg.getEffectiveLevel() > logging.WARNING:
            lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(collector)
            lg.setLevel(level)
    if collector.faults:
        pytest.fail("the hub answered 500 or logged a traceback:\n" + "\n".join(collector.faults))


# A hub subprocess's log (its stderr): an access line with a 5xx status other than
# 502/503/504, minihub's "unhandled error", aiohttp's "Error handling request", a traceback.
_LOG_FAULT = re.compile(
    r"minihub\.access\] (?!50[234] )5\d\d |unhandled error in |"
    r"Error handling request|Traceback \(most recent call last\)"
)


def hub_log_faults(log: str | Path) -> list[str]:
    """The lines of a hub process's log that show a 500 or a traceback; process tests call
    `assert not hub_log_faults(path)` after the hub has stopped or settled."""
    text = Path(log).read_text(errors="replace") if isinstance(log, Path) else log
    return [line[:300] for line in text.splitlines() if _LOG_FAULT.search(line)]


# Every hub process a test starts through test_config_cli.start_hub logs to a file; at the
# end of the session none of them may show a 500 or a traceback (issue 12: "no 500 appears
# in the hub's log during the whole suite").
HUB_LOGS: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def no_500_in_hub_process_logs() -> Iterator[None]:
    yield
    faults = [f"{log}: {line}" for log in HUB_LOGS if log.exists() for line in hub_log_faults(log)]
    if faults:
        pytest.fail("a hub process answered 500 or logged a traceback:\n" + "\n".join(faults))
