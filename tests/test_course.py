"""Course material with real users and a real git server on 127.0.0.1 (git daemon): the
user-redirect link that starts a server, nbgitpuller links (clone, then merge with the
student's changes winning, a deleted file back, a file in the way renamed), bad links
explained, a link that tries another user's home, the link builder, and class folders
shared read-only into every home and removed again."""

from __future__ import annotations

import asyncio
import html
import json
import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from conftest import hub_config, needs_root
from test_config_cli import free_port

from minihub.app import make_app

pytestmark = [needs_root, pytest.mark.timeout(240)]

NOTEBOOK = {
    "cells": [{"cell_type": "markdown", "id": "a1", "metadata": {}, "source": "# Week 1"}],
    "metadata": {},
    "nbformat": 4,
    "nbformat_minor": 5,
}
NOTES = "".join(f"line {i}\n" for i in range(1, 9))


def sh(*cmd: str, cwd: str | Path | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


class GitServer:
    """Bare repositories under `base`, served read-only by `git daemon` on 127.0.0.1; the
    teacher's side commits in a work tree and pushes to them by path (as root)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}.git"

    def create(self, name: str, files: dict[str, str]) -> Path:
        sh("git", "init", "-q", "--bare", "-b", "main", str(self.base / f"{name}.git"))
        work = self.base / f"{name}-work"
        sh("git", "clone", "-q", str(self.base / f"{name}.git"), str(work))
        self.commit(work, files, "first")
        return work

    def commit(self, work: Path, files: dict[str, str | None], message: str) -> None:
        for rel, text in files.items():
            path = work / rel
            if text is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        ident = ["-c", "user.name=Teacher", "-c", "user.email=t@example.invalid"]
        sh("git", "add", "-A", cwd=work)
        sh("git", *ident, "commit", "-q", "-m", message, cwd=work)
        sh("git", "push", "-q", "--force", "origin", "HEAD:main", cwd=work)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "git",
                "daemon",
                "--listen=127.0.0.1",
                f"--port={self.port}",
                "--export-all",
                "--reuseaddr",
                f"--base-path={self.base}",
                str(self.base),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                assert time.monotonic() < deadline and self.proc.poll() is None, "no git daemon"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[GitServer]:
    if shutil.which("git") is None:
        pytest.fail("git is not installed (scripts/install installs it)")
    server = GitServer(tmp_path / "git")
    server.base.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def course_files() -> dict[str, str]:
    return {
        "intro.ipynb": json.dumps(NOTEBOOK),
        "notes.md": NOTES,
        "data.txt": "v1\n",
        "old.md": "old\n",
    }


# --- a browser's session, by hand ------------------------------------------------------------
class Browser:
    """One person's cookies against the in-process hub; redirects followed by hand."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def close(self) -> None:
        await self.session.close()

    async def get(self, path: str, **kw: Any) -> aiohttp.ClientResponse:
        r = await self.session.get(self.base + path, allow_redirects=False, **kw)
        await r.read()
        return r

    async def login(self, user: Any, next_: str = "") -> aiohttp.ClientResponse:
        url = self.base + "/hub/login" + (f"?next={next_}" if next_ else "")
        r = await self.session.post(
            url, data={"username": user.name, "password": user.password}, allow_redirects=False
        )
        assert r.status == 302, await r.text()
        return r

    async def follow(self, location: str) -> tuple[str, aiohttp.ClientResponse]:
        """Follow redirects and the spawn-pending page (bounded) to the first other page."""
        for _ in range(600):
            r = await self.get(location)
            if r.status in (301, 302, 303):
                location = r.headers["Location"].removeprefix(self.base)
                continue
            if "/hub/spawn-pending/" in location and r.status == 200:
                await asyncio.sleep(0.1)
                continue
            return location, r
        raise AssertionError(f"stuck at {location}")

    async def pull_events(self, page_path: str) -> list[dict[str, Any]]:
        """The event stream the git-pull page at `page_path` reads, to its last event."""
        api = page_path.replace("/git-pull?", "/git-pull/api?", 1)
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(120):
            async with self.session.get(self.base + api) as r:
                assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
                async for raw in r.content:
                    line = raw.decode()
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))
        return events


def link(repo: str, **more: str) -> str:
    return "/hub/user-redirect/git-pull?" + urlencode({"repo": repo, **more})


async def pull(b: Browser, user: Any, query: str) -> tuple[str, list[dict[str, Any]]]:
    """Open the course link (starting the server if need be), then read its pull."""
    where, r = await b.follow(query)
    assert where.startswith(f"/user/{user.name}/git-pull?"), (where, r.status)
    assert r.status == 200 and "Getting the course files" in await r.text()
    events = await b.pull_events(where)
    return where, events


def output(events: list[dict[str, Any]]) -> str:
    return "".join(e.get("output", "") for e in events)


def owned_by(path: Path, uid: int) -> bool:
    return all(
        os.lstat(os.path.join(d, f)).st_uid == uid
        for d, dirs, files in os.walk(path)
        for f in [*dirs, *files, "."]
    )


@pytest.fixture
async def hub(data_dir: str) -> Any:
    """An in-process hub (PAM logins, the local spawner) on a real port."""
    from aiohttp.test_utils import TestServer

    cfg = hub_config(data_dir, hub__cleanup_servers=True)
    server = TestServer(make_app(cfg), host="127.0.0.1")
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}", cfg
    await server.close()


# --- tests -----------------------------------------------------------------------------------
async def test_two_students_pull_a_course_and_their_changes_are_merged(
    hub, git_server, make_system_user
):
    base, _ = hub
    alice, bob = make_system_user("mhco_alice"), make_system_user("mhco_bob")
    work = git_server.create("course", course_files())
    url = git_server.url("course")
    q = link(url, branch="main", urlpath="notebooks/course/intro.ipynb")
    a, b = Browser(base), Browser(base)
    try:
        # logged out: the login page, then back to the link; the server starts on the way
        r = await a.get(q)
        assert r.status == 302 and r.headers["Location"].startswith("/hub/login?next=")
        await a.login(alice, next_=r.headers["Location"].split("next=", 1)[1])
        _, events = await pull(a, alice, q)
        assert events[-1] == {
            "phase": "finished",
            "redirect": f"/user/{alice.name}/notebooks/course/intro.ipynb",
        }
        assert "$ git clone" in output(events) and "Receiving objects" in output(events)
        r = await a.get(events[-1]["redirect"])
        assert r.status == 200
        mine = Path(alice.home) / "course"
        assert json.loads((mine / "intro.ipynb").read_text()) == NOTEBOOK
        assert owned_by(mine, alice.uid)  # git ran as alice

        await b.login(bob)
        _, events = await pull(b, bob, q)
        assert events[-1]["phase"] == "finished"
        assert (Path(bob.home) / "course" / "notes.md").read_text() == NOTES
        assert owned_by(Path(bob.home) / "course", bob.uid)

        # alice works: edits line 1, deletes data.txt, makes a file upstream will add too
        notes = NOTES.replace("line 1\n", "alice's answer\n")
        (mine / "notes.md").write_text(notes)
        (mine / "data.txt").unlink()
        (mine / "week2.md").write_text("alice's own week2\n")
        (mine / "old.md").write_text("alice kept notes here\n")
        for f in ("notes.md", "week2.md", "old.md"):
            os.chown(mine / f, alice.uid, alice.gid)
        # the teacher: the same line 1, another line, data.txt, and two new files
        upstream = NOTES.replace("line 1\n", "teacher's 1\n").replace("line 6", "teacher's 6")
        git_server.commit(
            work,
            {
                "notes.md": upstream,
                "data.txt": "v2\n",
                "week2.md": "the teacher's week2\n",
                "week3.md": "three\n",
                "old.md": None,
            },
            "week 2",
        )

        _, events = await pull(a, alice, q)
        assert events[-1]["phase"] == "finished", output(events)
        got = (mine / "notes.md").read_text()
        assert got.startswith("alice's answer\n") and "teacher's 6\n" in got  # hers win
        assert "teacher's 1" not in got
        assert (mine / "data.txt").read_text() == "v2\n"  # the deleted file is back
        assert (mine / "week2.md").read_text() == "the teacher's week2\n"
        renamed = [p for p in mine.iterdir() if p.name.startswith("week2__")]
        assert len(renamed) == 1 and renamed[0].read_text() == "alice's own week2\n"
        assert renamed[0].suffix == ".md" and "Renamed your week2.md" in output(events)
        assert (mine / "week3.md").exists() and owned_by(mine, alice.uid)
        assert (mine / "old.md").read_text() == "alice kept notes here\n"  # deleted upstream

        _, events = await pull(b, bob, q)  # bob changed nothing: he gets the teacher's files
        assert events[-1]["phase"] == "finished"
        assert (Path(bob.home) / "course" / "notes.md").read_text() == upstream
        assert not any(p.name.startswith("week2__") for p in (Path(bob.home) / "course").iterdir())
        assert not (Path(bob.home) / "course" / "old.md").exists()
    finally:
        await a.close()
        await b.close()


async def test_bad_links_are_refused_with_a_reason_and_no_home_but_ones_own(
    hub, git_server, make_system_user
):
    base, _ = hub
    carol, dave = make_system_user("mhco_carol"), make_system_user("mhco_dave")
    work = git_server.create("lab", course_files())
    url = git_server.url("lab")
    c = Browser(base)
    try:
        await c.login(carol)
        where, _ = await c.follow("/hub/user-redirect/tree/?x=1")  # starts the server
        assert where == f"/user/{carol.name}/tree/?x=1"
        # a user-redirect cannot climb into another user's prefix
        r = await c.get("/hub/user-redirect/..%2F..%2Fuser%2F" + dave.name + "/tree/")
        assert r.headers["Location"].startswith(f"/user/{carol.name}/")

        page = f"/user/{carol.name}/git-pull?"
        refused = {
            "file:///etc": "not an http://, https:// or git:// URL",
            "/home/" + dave.name: "not an http://, https:// or git:// URL",
            "ext::sh -c touch% /tmp/mhco_pwned": "not a repository URL",
            "--upload-pack=touch /tmp/mhco_pwned": "not a repository URL",
            "": "The link has no repo",
        }
        for repo, why in refused.items():
            r = await c.get(page + urlencode({"repo": repo}))
            assert r.status == 400 and why in await r.text(), repo
        for extra, why in {
            "targetPath": (f"../{dave.name}/stolen", "leads out of your home"),
            "targetpath": (f"/home/{dave.name}/stolen", "must be relative to your home"),
            "branch": ("--output=/tmp/x", "is not a branch name"),
            "urlpath": ("https://evil.example/x", "must be a path on your server"),
        }.items():
            r = await c.get(page + urlencode({"repo": url, extra: why[0]}))
            assert r.status == 400 and why[1] in await r.text(), extra
        r = await c.get(
            page.replace("git-pull?", "git-pull/api?") + urlencode({"repo": "file:///etc"})
        )
        assert r.status == 400
        assert not os.path.exists("/tmp/mhco_pwned")

        # another user's server is not reachable, and a link through a planted link is refused
        r = await c.get(f"/user/{dave.name}/git-pull?" + urlencode({"repo": url}))
        assert r.status in (302, 403, 404) and "git-pull" not in r.headers.get("Location", "")
        os.symlink(dave.home, os.path.join(carol.home, "to-dave"))
        before = sorted(os.listdir(dave.home))
        events = await c.pull_events(page + urlencode({"repo": url, "targetPath": "to-dave/x"}))
        assert events[-1]["phase"] == "error" and "leads out of your home" in events[-1]["message"]
        assert sorted(os.listdir(dave.home)) == before

        # failures git reports, explained
        cases = {
            "branch": (
                {"repo": url, "branch": "week9"},
                "has no branch 'week9' (its branches: main)",
            ),
            "repo": ({"repo": git_server.url("nothing-here")}, "no git repository at that address"),
            "network": ({"repo": f"git://127.0.0.1:{free_port()}/x.git"}, "Could not connect"),
        }
        for kind, (query, why) in cases.items():
            events = await c.pull_events(page + urlencode(query))
            last = events[-1]
            assert last["phase"] == "error" and last["kind"] == kind, last
            assert why in last["message"], last
        r = await c.session.get(
            base + page.replace("git-pull?", "git-pull/api?") + urlencode({"repo": url}),
            headers={"Sec-Fetch-Site": "cross-site"},
        )
        assert r.status == 403  # another site cannot start a pull in the background

        # a rewritten history cannot be merged: explained, then "keep my copy" clones afresh
        events = await c.pull_events(page + urlencode({"repo": url}))
        assert events[-1]["phase"] == "finished"
        mine = Path(carol.home) / "lab"
        (mine / "notes.md").write_text("carol's notes\n")
        shutil.rmtree(work / ".git")
        sh("git", "init", "-q", "-b", "main", str(work))
        sh("git", "remote", "add", "origin", str(git_server.base / "lab.git"), cwd=work)
        git_server.commit(work, {"notes.md": "rewritten\n"}, "new history")
        events = await c.pull_events(page + urlencode({"repo": url}))
        assert events[-1]["phase"] == "error" and events[-1]["kind"] == "conflict", events[-1]
        assert (mine / "notes.md").read_text() == "carol's notes\n"  # untouched
        assert not (mine / ".git" / "MERGE_HEAD").exists()  # no merge left half done
        events = await c.pull_events(page + urlencode({"repo": url, "backup": "true"}))
        assert events[-1]["phase"] == "finished", output(events)
        assert (mine / "notes.md").read_text() == "rewritten\n"
        kept = [p for p in Path(carol.home).iterdir() if p.name.startswith("lab_backup_")]
        assert len(kept) == 1 and (kept[0] / "notes.md").read_text() == "carol's notes\n"
    finally:
        await c.close()


@pytest.fixture
def class_folder() -> Iterator[Path]:
    folder = Path(f"/srv/mhco-class-{os.getpid()}")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, mode=0o755)
    os.chmod(folder, 0o755)
    (folder / "data.csv").write_text("a,b\n1,2\n")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def test_class_folders_and_the_link_builder(
    data_dir, class_folder, make_system_user, tmp_path
):
    from aiohttp.test_utils import TestServer

    teacher, student = make_system_user("mhco_teach"), make_system_user("mhco_stud")
    cfg = hub_config(data_dir, auth__admin_users=[teacher.name], hub__cleanup_servers=True)
    server = TestServer(make_app(cfg), host="127.0.0.1")
    await server.start_server()
    base = f"http://127.0.0.1:{server.port}"
    t, s = Browser(base), Browser(base)
    try:
        await s.login(student, next_="/hub/home")  # a hub user with a home, no server yet
        await t.login(teacher)
        # the link builder: the link to paste, its urlpath opening the notebook
        r = await t.get(
            "/hub/admin?"
            + urlencode(
                {
                    "course_repo": "https://git.example.org/t/course.git",
                    "course_file": "week1/intro.ipynb",
                }
            )
        )
        text = await r.text()
        want = (
            f"{base}/hub/user-redirect/git-pull?repo=https%3A%2F%2Fgit.example.org%2Ft%2F"
            "course.git&amp;urlpath=notebooks%2Fcourse%2Fweek1%2Fintro.ipynb"
        )
        assert r.status == 200 and want in text
        r = await t.get("/hub/admin?" + urlencode({"course_repo": "file:///etc"}))
        assert "not an http://, https:// or git:// URL" in await r.text()

        def xsrf(b: Browser) -> str:
            return next((c.value for c in b.session.cookie_jar if c.key == "_xsrf"), "")

        async def share(b: Browser, path: str, action: str = "") -> tuple[int, str]:
            r = await b.session.post(
                f"{base}/hub/admin/course/folders{action}",
                data={"path": path, "_xsrf": xsrf(b)},
                allow_redirects=False,
            )
            return r.status, html.unescape(await r.text())

        writable = tmp_path / "writable"
        writable.mkdir()
        os.chmod(writable, 0o777)
        mine = Path(student.home) / "own"
        mine.mkdir()
        for path, why in {
            "/": "whole machine",
            "/etc/ssl": "system folder",
            data_dir: "the hub's own data",
            student.home: "home",
            str(mine): "home",
            "/home": "home",
            "relative/dir": "absolute path",
            "/nonexistent/mhco": "No such file",
            str(writable): "writable by others",
        }.items():
            status, text = await share(t, path)
            assert status == 400 and why in text, (path, text[-600:])
        assert (await share(s, str(class_folder)))[0] == 403  # a student may not

        status, text = await share(t, str(class_folder))
        assert status == 200 and "linked into 2 home(s)" in text, text[-800:]
        link_ = Path(student.home) / class_folder.name
        assert os.readlink(link_) == str(class_folder)
        assert os.lstat(link_).st_uid == student.uid  # made as the student
        assert (await share(t, str(class_folder)))[1].count("shared already") == 1

        # the student's server (started now) opens it and cannot write in it
        where, _ = await s.follow("/hub/user-redirect/tree/")
        assert where == f"/user/{student.name}/tree/"
        r = await s.get(f"/user/{student.name}/api/contents/{class_folder.name}")
        assert r.status == 200
        assert [x["name"] for x in (await r.json())["content"]] == ["data.csv"]
        r = await s.session.put(
            f"{base}/user/{student.name}/api/contents/{class_folder.name}/mine.txt",
            json={"type": "file", "format": "text", "content": "x"},
            headers={"X-XSRFToken": xsrf(s)},
        )
        assert r.status == 403 and not (class_folder / "mine.txt").exists()
        assert stat.S_IMODE(os.stat(class_folder).st_mode) == 0o755
        assert os.stat(class_folder).st_uid == 0

        status, text = await share(t, str(class_folder), "/remove")
        assert status == 200 and "removed from 2 home(s)" in text
        assert not os.path.lexists(link_) and class_folder.exists()
    finally:
        await t.close()
        await s.close()
        await server.close()
