"""Issue 12, item 4: one student's kernel cannot read the notebooks another student saved.

Servers and kernels run with umask 0o077 ([spawner] umask), so notebooks, checkpoints,
uploads and files a (forked) kernel writes are 0600 even in a home Debian's useradd made
0755; accounts minihub creates get a 0700 home ([users] home_mode); the hub says at
start-up which hub users' homes others can read.
"""

from __future__ import annotations

import base64
import os
import stat
import subprocess

import aiohttp
import pytest
from conftest import needs_root
from spawn_attack import execute, h, new_kernel, running_hub, start_server, stop_server

NEW = "mhph_new"  # made by the hub itself (create_system_users)
NOTEBOOK = {
    "type": "notebook",
    "format": "json",
    "content": {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {},
        "cells": [{"cell_type": "markdown", "id": "a1", "metadata": {}, "source": "exam answers"}],
    },
}


@pytest.fixture
def new_account():
    subprocess.run(["userdel", "-r", "-f", NEW], check=False, capture_output=True)
    yield NEW
    subprocess.run(["userdel", "-r", "-f", NEW], check=False, capture_output=True)


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def save_work(s: aiohttp.ClientSession, base: str, name: str) -> None:
    """A notebook, its checkpoint and an upload, as the browser makes them."""
    api = f"{base}/user/{name}/api/contents"
    assert (await s.put(f"{api}/answers.ipynb", json=NOTEBOOK)).status in (200, 201)
    assert (await s.post(f"{api}/answers.ipynb/checkpoints")).status == 201
    upload = {
        "type": "file",
        "format": "base64",
        "content": base64.b64encode(b"secret data").decode(),
    }
    assert (await s.put(f"{api}/upload.csv", json=upload)).status in (200, 201)


@needs_root
async def test_students_cannot_read_each_others_notebooks(tmp_path, make_system_user, new_account):
    old = make_system_user("mhph_old")  # useradd -m on Debian: home 0755
    assert mode(old.home) == 0o755
    toml = "[users]\ncreate_system_users = true\n"
    async with running_hub(tmp_path, toml, users=(old.name, NEW)) as hub:
        s_old = aiohttp.ClientSession(headers=h(hub.tokens[old.name]))
        s_new = aiohttp.ClientSession(headers=h(hub.tokens[NEW]))
        async with s_old, s_new:
            await start_server(s_new, hub, NEW)  # creates the account
            new_home = os.path.expanduser(f"~{NEW}")
            assert mode(new_home) == 0o700
            await start_server(s_old, hub, old.name)
            await save_work(s_old, hub.base, old.name)
            await save_work(s_new, hub.base, NEW)
            k_old = await new_kernel(s_old, hub, old.name)
            out = await execute(
                s_old,
                hub,
                old.name,
                k_old,
                "open('from_kernel.txt', 'w').write('x'); import os; "
                "os.mkdir('folder'); print('wrote')",
            )
            assert "wrote" in out
            for f in (
                "answers.ipynb",
                ".ipynb_checkpoints/answers-checkpoint.ipynb",
                "upload.csv",
                "from_kernel.txt",
            ):
                assert mode(os.path.join(old.home, f)) == 0o600, f
            assert mode(os.path.join(old.home, "folder")) == 0o700

            # The other student's kernel tries both homes: the open one and the private one.
            k_new = await new_kernel(s_new, hub, NEW)
            probe = (
                "import os\nfor p in {paths!r}:\n    try:\n        open(p).read()\n"
                "        print('READ', p)\n    except OSError as e:\n"
                "        print('DENIED', type(e).__name__)\n"
            )
            paths = [
                os.path.join(old.home, f)
                for f in (
                    "answers.ipynb",
                    ".ipynb_checkpoints/answers-checkpoint.ipynb",
                    "upload.csv",
                    "from_kernel.txt",
                )
            ]
            out = await execute(s_new, hub, NEW, k_new, probe.format(paths=paths))
            assert "READ" not in out and out.count("DENIED PermissionError") == 4, out
            out = await execute(
                s_old,
                hub,
                old.name,
                k_old,
                probe.format(paths=[os.path.join(new_home, "answers.ipynb")]),
            )
            assert "READ" not in out and "DENIED PermissionError" in out, out
            for name, s in ((old.name, s_old), (NEW, s_new)):
                await stop_server(s, hub, name)
    text = hub.log.read_text()
    warning = [line for line in text.splitlines() if "can be read by other users" in line]
    assert len(warning) == 1 and old.home in warning[0] and "chmod 700" in warning[0]
    assert "home_mode" in warning[0]
