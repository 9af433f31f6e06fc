"""A server that binds its own port finds it taken: the hub starts it again on another.

A jupyterhub-singleuser server is handed a port that was free then and binds it itself
moments later; another process can take it in between (the growth benchmark saw 1 spawn in
~3,000 fail so). Here a real server process, run as a real system user, finds its port really
taken on its first start (it holds a listener there itself, then binds again: the system's
EADDRINUSE), and answers on the second. A server that fails for another reason is not
started again.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from conftest import hub_config, login, needs_root, xsrf_of
from test_config_cli import free_port

from minihub.app import make_app

SERVER = """
import os, socket, sys
from urllib.parse import urlparse
url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
with open(os.path.expanduser("~/attempts"), "a") as f:
    f.write(f"{url.port}\\n")
attempts = len(open(os.path.expanduser("~/attempts")).read().split())
if sys.argv[1] == "broken":
    sys.exit("this server is broken")
host = url.hostname or "127.0.0.1"
if attempts == 1 and sys.argv[1] == "taken":  # its port taken: for real, by itself
    holder = socket.socket()
    holder.bind((host, url.port))
    holder.listen()
    socket.socket().bind((host, url.port))  # OSError: [Errno 98] Address already in use
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, url.port))
srv.listen()
while True:
    conn, _ = srv.accept()
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok")
    conn.close()
"""


async def spawn(c: TestClient, name: str) -> dict[str, Any]:
    r = await c.post(f"/hub/api/users/{name}/server", headers={"X-XSRFToken": xsrf_of(c)})
    if r.status == 502:  # failed within the request's own wait
        return {"server": None, "failed": await r.json()}
    assert r.status in (201, 202), await r.text()
    for _ in range(300):  # bounded: 30 s
        r = await c.get(f"/hub/api/users/{name}")
        model: dict[str, Any] = await r.json()
        if model.get("server") or model.get("pending") is None:
            return model
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name}'s spawn never ended: {model}")


async def progress(c: TestClient, name: str) -> str:
    r = await c.get(f"/hub/api/users/{name}/server/progress")
    return await r.text()


@needs_root
@pytest.mark.parametrize("mode", ["taken", "broken"])
async def test_a_taken_port_is_retried_and_nothing_else_is(
    aiohttp_client: Any, data_dir: str, make_system_user: Any, mode: str
) -> None:
    u = make_system_user(f"mhpt_{mode}")
    port = free_port()
    cfg = hub_config(
        data_dir,
        hub__port=port,
        spawner__server="jupyterhub-singleuser",
        spawner__cmd=[sys.executable, "-c", SERVER, mode],
        spawner__start_timeout=20,
    )
    c = await aiohttp_client(make_app(cfg), server_kwargs={"port": port})
    r = await login(c, u.name, u.password)
    assert r.status == 302, await r.text()
    model = await spawn(c, u.name)
    with open(os.path.join(u.home, "attempts")) as f:
        attempts = f.read().split()
    said = await progress(c, u.name)
    if mode == "taken":
        assert model.get("server"), said
        assert len(attempts) == 2 and attempts[0] != attempts[1]  # again, on another port
        assert "Its port was taken meanwhile" in said
        r = await c.get(f"/user/{u.name}/api", allow_redirects=False)
        assert r.status == 200 and await r.text() == "ok"  # the second one serves
    else:
        assert not model.get("server")
        assert len(attempts) == 1  # a broken server is not started again
        assert "this server is broken" in model["failed"]["log_tail"]
        assert "Its port was taken" not in said


@needs_root
async def test_a_port_found_taken_as_the_hub_starts_the_server_is_retried(
    aiohttp_client: Any, data_dir: str, make_system_user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub checks the port once more as it starts the server; taken by then (here the
    first port handed out has a listener of the test's own), it starts it on another."""
    from minihub.spawner import local

    u = make_system_user("mhpt_hub")
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    handed: list[int] = []
    real = local.free_port

    def first_one_taken(host: str) -> int:
        handed.append(taken if not handed else real(host))
        return handed[-1]

    monkeypatch.setattr(local, "free_port", first_one_taken)
    port = free_port()
    cfg = hub_config(
        data_dir,
        hub__port=port,
        spawner__server="jupyterhub-singleuser",
        spawner__cmd=[sys.executable, "-c", SERVER, "taken-later"],
        spawner__start_timeout=20,
    )
    try:
        c = await aiohttp_client(make_app(cfg), server_kwargs={"port": port})
        r = await login(c, u.name, u.password)
        assert r.status == 302, await r.text()
        model = await spawn(c, u.name)
        said = await progress(c, u.name)
        assert model.get("server"), said
        assert handed[0] == taken and len(handed) == 2  # started once, on the second port
        assert "Its port was taken meanwhile" in said
        r = await c.get(f"/user/{u.name}/api", allow_redirects=False)
        assert r.status == 200 and await r.text() == "ok"
    finally:
        squatter.close()
