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
    subprocess.run(["userdel", "-r", name], capture_output=True)
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


@pytest.fixture
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("data")
    os.chmod(d, 0o711)
    return str(d)
