"""The user server's files API, for real: a real user's home, jupyter_server's shapes.

Notebooks saved and reloaded, invalid ones refused with the file untouched, escapes refused,
chunked uploads, checkpoints, copies, renames, raw files under a sandbox CSP.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_singleuser_harness import Server, start_server

NB = {
    "nbformat": 4,
    "nbformat_minor": 5,
    "metadata": {},
    "cells": [
        {
            "cell_type": "code",
            "id": "c1",
            "metadata": {},
            "source": "print(1)",
            "execution_count": None,
            "outputs": [],
        }
    ],
}


@pytest.fixture(scope="module")
def server(make_system_user: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    user = make_system_user("mhsu_c")
    srv = start_server(user, tmp_path_factory.mktemp("sulog") / "server.log")
    yield srv
    srv.stop()


@pytest.fixture
async def api(server: Server) -> AsyncIterator[Any]:
    async with aiohttp.ClientSession(headers=server.headers) as http:

        async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            async with http.request(method, server.url + path, json=body) as r:
                text = await r.text()
                return r.status, (json.loads(text) if text else None)

        call.http = http  # type: ignore[attr-defined]
        yield call


def owned(server: Server, path: Path) -> Path:
    os.chown(path, server.user.uid, server.user.gid)
    return path


async def test_notebook_save_and_reload(api: Any, server: Server) -> None:
    status, model = await api("PUT", "api/contents/work.ipynb", {"type": "notebook", "content": NB})
    assert status == 201 and model["type"] == "notebook" and model["content"] is None
    assert (Path(server.user.home) / "work.ipynb").stat().st_uid == server.user.uid
    status, model = await api("GET", "api/contents/work.ipynb")
    assert status == 200 and model["format"] == "json"
    assert model["content"]["cells"][0]["source"] == "print(1)"
    nb = model["content"]
    nb["cells"][0]["source"] = "print(2)"
    status, _ = await api("PUT", "api/contents/work.ipynb", {"type": "notebook", "content": nb})
    assert status == 200
    status, model = await api("GET", "api/contents/work.ipynb?content=0")
    assert model["content"] is None and model["size"] > 0


async def test_invalid_notebook_refused_file_untouched(api: Any, server: Server) -> None:
    await api("PUT", "api/contents/keep.ipynb", {"type": "notebook", "content": NB})
    before = (Path(server.user.home) / "keep.ipynb").read_bytes()
    bad = {**NB, "cells": [{"cell_type": "bogus", "source": 5}]}
    status, body = await api("PUT", "api/contents/keep.ipynb", {"type": "notebook", "content": bad})
    assert status == 400 and set(body) == {"message", "reason"}
    assert "Traceback" not in body["message"]
    assert (Path(server.user.home) / "keep.ipynb").read_bytes() == before
    assert not [p for p in os.listdir(server.user.home) if p.endswith(".tmp")]


async def test_escapes_and_hidden_files_refused(api: Any, server: Server) -> None:
    home = Path(server.user.home)
    (home / "outside").symlink_to("/etc")
    (home / "passwd-link").symlink_to("/etc/passwd")
    for path in (
        "api/contents/%2e%2e/%2e%2e/etc/passwd",
        "api/contents/outside/passwd",
        "api/contents/passwd-link",
        "files/outside/passwd",
        "files/passwd-link",
        "files/%2e%2e/%2e%2e/etc/passwd",
        "api/contents/.bashrc",
        "files/.bashrc",
    ):
        status, body = await api("GET", path)
        assert status in (403, 404), path
        assert "root:" not in json.dumps(body)
    status, _ = await api(
        "PUT", "api/contents/outside/x.txt", {"type": "file", "format": "text", "content": "x"}
    )
    assert status in (403, 404) and not Path("/etc/x.txt").exists()
    status, listing = await api("GET", "api/contents")
    names = [m["name"] for m in listing["content"]]
    assert ".bashrc" not in names and "outside" not in names and "passwd-link" not in names


async def test_files_are_sandboxed_raw_bytes(api: Any, server: Server) -> None:
    page = Path(server.user.home) / "evil.html"
    page.write_text("<script>alert(document.cookie)</script>")
    owned(server, page)
    async with api.http.get(server.url + "files/evil.html") as r:
        assert r.status == 200 and r.content_type == "text/html"
        assert r.headers["Content-Security-Policy"] == "sandbox"
        assert "Content-Disposition" not in r.headers
        assert await r.read() == page.read_bytes()
    async with api.http.get(server.url + "files/evil.html?download=1") as r:
        assert r.headers["Content-Disposition"].startswith("attachment")


async def test_chunked_upload(api: Any, server: Server) -> None:
    data = os.urandom(300_000)
    pieces = [data[i : i + 100_000] for i in range(0, len(data), 100_000)]
    for n, piece in enumerate(pieces, 1):
        chunk = -1 if n == len(pieces) else n
        status, model = await api(
            "PUT",
            "api/contents/big.bin",
            {
                "type": "file",
                "format": "base64",
                "chunk": chunk,
                "content": base64.b64encode(piece).decode(),
            },
        )
        assert status in (200, 201), model
    assert (Path(server.user.home) / "big.bin").read_bytes() == data
    assert model["size"] == len(data)
    status, model = await api("GET", "api/contents/big.bin?format=base64")
    assert base64.b64decode(model["content"]) == data


async def test_checkpoints(api: Any, server: Server) -> None:
    await api("PUT", "api/contents/cp.txt", {"type": "file", "format": "text", "content": "v1"})
    status, cp = await api("POST", "api/contents/cp.txt/checkpoints")
    assert status == 201 and cp["id"] == "checkpoint"
    assert (Path(server.user.home) / ".ipynb_checkpoints" / "cp-checkpoint.txt").exists()
    await api("PUT", "api/contents/cp.txt", {"type": "file", "format": "text", "content": "v2"})
    status, cps = await api("GET", "api/contents/cp.txt/checkpoints")
    assert [c["id"] for c in cps] == ["checkpoint"]
    status, _ = await api("POST", "api/contents/cp.txt/checkpoints/checkpoint")
    assert status == 204
    assert (await api("GET", "api/contents/cp.txt"))[1]["content"] == "v1"
    status, _ = await api("DELETE", "api/contents/cp.txt/checkpoints/checkpoint")
    assert status == 204
    assert (await api("GET", "api/contents/cp.txt/checkpoints"))[1] == []


async def test_create_copy_rename_delete(api: Any, server: Server) -> None:
    status, d = await api("POST", "api/contents", {"type": "directory"})
    assert status == 201 and d["name"].startswith("Untitled Folder")
    status, nb = await api("POST", "api/contents/" + d["path"], {"type": "notebook"})
    assert status == 201 and nb["name"] == "Untitled.ipynb"
    status, nb2 = await api("POST", "api/contents/" + d["path"], {"type": "notebook"})
    assert nb2["name"] == "Untitled1.ipynb"
    status, f = await api("POST", "api/contents/" + d["path"], {"type": "file", "ext": ".py"})
    assert f["name"] == "untitled.py"
    status, cp = await api("POST", "api/contents/" + d["path"], {"copy_from": nb["path"]})
    assert status == 201 and cp["name"] == "Untitled-Copy1.ipynb"
    # a copy goes into a directory only: POSTed onto a file (a notebook here) it would
    # replace it unvalidated, with no checkpoint; as jupyter_server, 400, and nothing changes
    before = (await api("GET", "api/contents/" + nb["path"]))[1]["content"]
    for target in (nb["path"], d["path"] + "/missing/x.ipynb"):
        status, body = await api("POST", "api/contents/" + target, {"copy_from": f["path"]})
        assert status in (400, 404) and body["message"], (target, status, body)
    status, still = await api("GET", "api/contents/" + nb["path"])
    assert status == 200 and still["content"] == before
    status, moved = await api("PATCH", "api/contents/" + cp["path"], {"path": "moved.ipynb"})
    assert status == 200 and moved["path"] == "moved.ipynb"
    status, _ = await api("PATCH", "api/contents/moved.ipynb", {"path": nb["path"]})
    assert status == 409
    status, body = await api("DELETE", "api/contents/" + d["path"])
    assert status == 400 and "not empty" in body["message"]
    for path in (nb["path"], nb2["path"], f["path"], d["path"], "moved.ipynb"):
        status, _ = await api("DELETE", "api/contents/" + path)
        assert status == 204, path
    status, body = await api("GET", "api/contents/moved.ipynb")
    assert status == 404 and set(body) == {"message", "reason"}
