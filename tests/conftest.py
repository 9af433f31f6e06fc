"""Shared fixtures: real system users (tests run as root), temporary data dirs."""

from __future__ import annotations

import os
import pwd
import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

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
    subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True,
                   capture_output=True)
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


def _dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


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
from typing import Any  # noqa: E402

from minihub import config as _config  # noqa: E402


def hub_config(data_dir: str, **settings: Any) -> _config.Config:
    """A validated Config; settings as {"auth.authenticator": "native", ...}."""
    overrides: dict[str, Any] = {"hub.data_dir": data_dir,
                                 "auth.login_max_delay_seconds": 0.0}
    overrides.update({k.replace("__", "."): v for k, v in settings.items()})
    return _config.load(None, overrides)


async def login(client: Any, name: str, password: str, next: str = "") -> Any:
    """Log in through the form; return the response (redirects not followed)."""
    url = "/hub/login" + (f"?next={next}" if next else "")
    return await client.post(url, data={"username": name, "password": password},
                             allow_redirects=False)


def xsrf_of(client: Any) -> str:
    for c in client.session.cookie_jar:
        if c.key == "_xsrf":
            return str(c.value)
    return ""
