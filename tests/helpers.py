"""Helpers several test modules share: a hub process for the browser tests, the login form
in Chromium, and running code in a kernel over its websocket (through the hub's proxy)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from test_config_cli import free_port

T = TypeVar("T")


# --- a hub process ---------------------------------------------------------------------------
@dataclass
class Hub:
    """A hub process a browser test drives: its URL and the user who logs in."""

    url: str
    user: Any


def launch_hub(cmd: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """Start the hub (stdout and stderr appended to `log`) and wait, at most 30 s, until it
    listens on `port`; a hub that exits or never listens fails the test with its log."""
    with open(log, "ab") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=f)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                pytest.fail("hub did not start: " + log.read_text(errors="replace")[-4000:])
            time.sleep(0.1)


def stop_hub(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL if it has not exited 30 s later."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def hub_process(toml: Path, data_dir: str | Path, log: Path) -> Iterator[str]:
    """`python -m minihub -f toml --data-dir data_dir` on a free loopback port, for the
    length of the block; yields its URL (http://127.0.0.1:PORT)."""
    port = free_port()
    cmd = [sys.executable, "-m", "minihub", "-f", str(toml), "--data-dir", str(data_dir)]
    proc = launch_hub([*cmd, "--port", str(port)], port, log)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_hub(proc)


# --- users and tokens for a hub process, made before it starts ------------------------------
CLI_TOKEN_NOTE = "Requested via minihub token"


def add_users(
    data: str | Path,
    names: Iterable[str],
    toml: str | Path | None = None,
    admins: Iterable[str] = (),
    tokens: Iterable[str] | None = None,
    passwords: dict[str, str] | None = None,
) -> dict[str, str]:
    """What `minihub [-f toml] --data-dir data user add NAME [--admin]` (with the password
    from `passwords` a native hub asks for) and then `minihub ... token NAME` do for each
    name, done in this process: {name: API token}, for the `tokens` names only if given. Two CLI
    processes a user took ~1.7 s (each imports the hub and every plugin); test_config_cli
    tests the commands themselves."""
    from minihub import users
    from minihub.config import find_config, load
    from minihub.plugins import make_authenticator
    from minihub.store import Store

    cfg = load(find_config(str(toml) if toml else None), {"hub.data_dir": str(data)})
    names = list(names)
    admin, wanted = set(admins), set(names if tokens is None else tokens)

    async def main() -> dict[str, str]:
        cfg.data_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        store = await Store.open(cfg.data_dir / "minihub.sqlite")
        try:
            auth = make_authenticator(cfg, store)
            made = {}
            for name in names:
                pw = (passwords or {}).get(name)
                user = await users.create(store, auth, name, name in admin, pw)
                if name in wanted:
                    made[name] = (await users.new_token(store, user, CLI_TOKEN_NOTE))[0]
            return made
        finally:
            await store.close()

    # A thread of its own: callers may be async tests, whose loop is running in this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result(timeout=60)


# --- the login form in Chromium --------------------------------------------------------------
def fill_login(page: Any, user: Any) -> None:
    """On /hub/login: the user's name and password, then the form's button."""
    page.fill("input[name=username]", user.name)
    page.fill("input[name=password]", user.password)
    page.locator("form button, form input[type=submit]").first.click()


def log_in(page: Any, url: str, user: Any) -> None:
    """Log in at the hub at `url` and wait (90 s: the first spawn) for the user's file tree."""
    page.goto(url + "/hub/login")
    fill_login(page, user)
    page.wait_for_url(f"**/user/{user.name}/tree/", timeout=90000)


# --- code in a kernel, over its websocket ----------------------------------------------------
# What JupyterLab adds to an execute_request's content (ipykernel has defaults for them).
_LAB_CONTENT: dict[str, Any] = {
    "store_history": False,
    "user_expressions": {},
    "allow_stdin": False,
}


def execute_request(
    code: str, msg_id: str, session: str, username: str = "", lab: bool = False
) -> dict[str, Any]:
    """An execute_request on the shell channel (`lab`: with JupyterLab's extra content)."""
    content: dict[str, Any] = {"code": code, "silent": False}
    if lab:
        content.update(_LAB_CONTENT)
    return {
        "header": {
            "msg_id": msg_id,
            "msg_type": "execute_request",
            "username": username,
            "session": session,
            "version": "5.3",
            "date": "",
        },
        "parent_header": {},
        "metadata": {},
        "channel": "shell",
        "content": content,
    }


def _json(m: Any) -> dict[str, Any]:
    return dict(json.loads(m.data))


async def read_output(
    ws: Any, msg_id: str, timeout: float, decode: Callable[[Any], dict[str, Any]] = _json
) -> str:
    """What the request `msg_id` printed (stdout, stderr, and "ERROR name: value" for an
    exception), once the kernel is idle again; at most `timeout` seconds."""
    out: list[str] = []
    async with asyncio.timeout(timeout):
        async for m in ws:
            msg = decode(m)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind == "error":
                out.append(f"ERROR {content['ename']}: {content['evalue']}")
            elif kind == "status" and content["execution_state"] == "idle":
                break
    return "".join(out)


async def execute(
    client: Any,
    url: str,
    code: str,
    *,
    username: str = "",
    lab: bool = False,
    timeout: float = 60,
    **connect: Any,
) -> str:
    """Run `code` in the kernel whose channels are at `url` (no query; `client` an aiohttp
    ClientSession or TestClient, `connect` more ws_connect arguments); what it printed."""
    session, msg_id = uuid.uuid4().hex, uuid.uuid4().hex
    async with client.ws_connect(f"{url}?session_id={session}", **connect) as ws:
        await ws.send_json(execute_request(code, msg_id, session, username, lab))
        return await read_output(ws, msg_id, timeout)


async def offline_user(store, name: str, admin: bool = False):  # type: ignore[no-untyped-def]
    """A hub user made straight in a hub's SQLite file before the hub starts (or while it
    is stopped): created if missing, given the admin role if asked."""
    from minihub.access import db as access_db

    user = await store.get_user(name) or await store.add_user(name)
    if admin:
        await access_db.assign_role(store, "admin", name)
    return user


def seed_once(
    tmp_path_factory: Any, make_cfg: Callable[[str], Any], seed: Callable[[Any], Awaitable[T]]
) -> tuple[Path, T]:
    """A module's seeded store, made once (hashing its passwords takes most of a second):
    the SQLite file each test's hub starts on a copy of, and what `seed` returned."""
    d = tmp_path_factory.mktemp("seed")
    d.chmod(0o711)
    made = asyncio.run(seed(make_cfg(str(d))))
    return d / "minihub.sqlite", made
