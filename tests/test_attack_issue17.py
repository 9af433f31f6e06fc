"""Attacks on issue 17's tools (admin panel, course links, sign-up approval, shutdown), as a
teaching assistant with group-filtered scopes, a student, or another website would try them.
Each test is a hole found in review (or a check that held), against the real hub app: the
FakeSpawner for the admin page, the local spawner and a real account for git-pull links."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import helpers
import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import hub_config, login, needs_root, xsrf_of
from test_course import Browser, git_server  # noqa: F401  (a fixture)

from minihub import servers as servers_mod
from minihub.app import make_app
from minihub.auth.native import NativeAuthenticator
from minihub.context import PARTS
from minihub.errors import SpawnError
from minihub.spawner import accounts
from minihub.spawner.fake import FakeSpawner
from minihub.store import Store
from minihub.users import create, new_token

PASSWORD = "attack-17-password"
TUTOR = {
    "name": "tutor",
    "scopes": [
        "admin-ui",
        "list:users!group=lab",
        "admin:users!group=lab",
        "groups!group=lab",
        "servers!group=lab",
        "delete:users!group=lab",
    ],
    "users": ["tia"],
}
GRADER = {"name": "grader", "scopes": ["list:users", "read:users"], "users": ["st2"]}
LATE_ADMIN = "mhat_newprof"  # a name the operator makes an admin after someone asked for it


@pytest.fixture(autouse=True)
def quick_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers_mod, "SLOW_SPAWN", 0.1)
    monkeypatch.setattr(servers_mod, "POLL_EVERY", 3600.0)


async def _seed(cfg: Any) -> str:
    """boss (admin, and in the class group lab, as teachers are), tia (the lab's TA, also in
    lab), st1 and st2 (students in lab), out (not in lab); a sign-up request for LATE_ADMIN
    made before the operator listed that name in admin_users. Returns boss's token."""
    store = await Store.open(cfg.data_dir / "minihub.sqlite")
    try:
        auth = NativeAuthenticator(cfg, store)
        for name in ("boss", "tia", "st1", "st2", "out"):
            await create(store, auth, name, name == "boss", PASSWORD)
        await store.db.execute("INSERT INTO groups (name) VALUES ('lab')")
        await store.db.execute(
            "INSERT INTO group_users (group_id, user_id) SELECT g.id, u.id FROM groups g, "
            "users u WHERE g.name = 'lab' AND u.name IN ('boss', 'tia', 'st1', 'st2')"
        )
        await auth.signups.add(LATE_ADMIN, await auth.hash_new_password("squatter-pass-1"))
        boss = await store.get_user("boss")
        assert boss is not None
        return (await new_token(store, boss, "test"))[0]
    finally:
        await store.close()


def _cfg(data_dir: str) -> Any:
    cfg = hub_config(
        data_dir,
        auth__authenticator="native",
        auth__admin_users=["boss", LATE_ADMIN],
        auth__signup_approval=True,
    )
    cfg.roles = [TUTOR, GRADER]
    return cfg


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The seeded store (six bcrypt hashes), made once; each test's hub starts on a copy."""
    return helpers.seed_once(tmp_path_factory, _cfg, _seed)


@pytest.fixture
async def hub(
    data_dir: str, seeded: tuple[Path, str]
) -> AsyncIterator[tuple[TestClient[Any, Any], str]]:
    cfg = _cfg(data_dir)
    store, tok = seeded
    shutil.copyfile(store, cfg.data_dir / "minihub.sqlite")
    fake = FakeSpawner()
    c: TestClient[Any, Any] = TestClient(TestServer(make_app(cfg, spawner=fake)))
    await c.start_server()
    try:
        yield c, tok
    finally:
        await c.close()
        await fake.shutdown()
        subprocess.run(["userdel", "-r", LATE_ADMIN], capture_output=True)


async def post(c: TestClient[Any, Any], url: str, want: int, **data: Any) -> str:
    r = await c.post(url, data={"_xsrf": xsrf_of(c), **data}, allow_redirects=False)
    text = await r.text()
    assert r.status == want, f"{url}: {r.status} {text[:2000]}"
    return text


# --- a TA's admin:users!group=lab must not make admins or rename (the REST API's rule) -------
async def test_a_teaching_assistant_cannot_make_an_admin_or_rename(hub: Any) -> None:
    """tia holds admin:users only on lab, and is in lab herself. PATCH /hub/api/users wants
    admin:users unfiltered for `admin` and `name`; the admin page's edit and make-admin
    forms gave a TA admin (hers too: the whole hub) and let her rename a student to any
    name (one that [[roles]] or admin_users name, or an existing Unix account's)."""
    c, _ = hub
    p = c.server.app[PARTS]
    assert (await login(c, "tia", PASSWORD)).status == 302
    await post(c, "/hub/admin/users/tia/edit", 403, admin="on")
    await post(c, "/hub/admin/users/tia/make-admin", 403)
    await post(c, "/hub/admin/users/st1/make-admin", 403)
    await post(c, "/hub/admin/users/st1/edit", 403, new_name="root")
    await post(c, "/hub/admin/users/boss/remove-admin", 403)
    assert not p.access.is_admin("tia") and not p.access.is_admin("st1")
    assert p.access.is_admin("boss")
    assert await p.store.get_user("st1") is not None and await p.store.get_user("root") is None
    # and the admin still edits
    assert (await login(c, "boss", PASSWORD)).status == 302
    await post(c, "/hub/admin/users/st1/edit", 302, new_name="st1b", admin="on")
    assert p.access.is_admin("st1b")


# --- a password reset makes the caller the target: never someone stronger -----------------
async def test_a_teaching_assistant_cannot_reset_a_stronger_users_password(hub: Any) -> None:
    """boss (an admin) is in lab, so admin:users!group=lab reaches him: a reset would hand
    tia his password, and with it the whole hub. The same for st2, a lab student who also
    grades (a role reading every user, which tia lacks). A plain lab student's reset works."""
    c, _ = hub
    p = c.server.app[PARTS]
    hashes = {n: (await p.store.get_user(n)).password_hash for n in ("boss", "st2")}  # type: ignore[union-attr]
    assert (await login(c, "tia", PASSWORD)).status == 302
    r = await c.post(
        "/hub/admin/users/bulk",
        data=[("_xsrf", xsrf_of(c)), ("action", "reset-passwords")]
        + [("user", n) for n in ("boss", "st2", "st1")],
    )
    text = await r.text()
    assert r.status == 200 and "New passwords for 1: st1" in text, text[:3000]
    assert "Refused 2" in text and "boss:" in text and "st2:" in text
    for name, hashed in hashes.items():
        assert (await p.store.get_user(name)).password_hash == hashed  # type: ignore[union-attr]
    assert (await login(c, "boss", PASSWORD)).status == 302


# --- a delete takes the account away: a group-filtered delete:users never reaches stronger --
async def test_a_teaching_assistant_cannot_delete_a_stronger_user(hub: Any) -> None:
    """boss (an admin) and st2 (a grader) are in lab, so delete:users!group=lab reaches them;
    the REST API's delete wants the scope on everyone, and so does the page for them."""
    c, _ = hub
    p = c.server.app[PARTS]
    assert (await login(c, "tia", PASSWORD)).status == 302
    await post(c, "/hub/admin/users/boss/delete", 403)
    text = await post(c, "/hub/admin/users/bulk", 200, action="delete", user=["boss", "st2", "st1"])
    assert "boss: boss holds" in text and "st2: st2 holds" in text
    for name in ("boss", "st2"):
        assert await p.store.get_user(name) is not None
    assert await p.store.get_user("st1") is None  # a student of the lab: hers to delete


# --- delete with "remove the Unix account" never removes a system account --------------------
def test_the_nobody_account_is_never_removable() -> None:
    """nobody (uid 65534) is above any uid_min, and a hub user can be named nobody (an
    OAuth claim, an admin's typo): deleting it with the account must not `userdel nobody`."""
    with pytest.raises(SpawnError) as e:
        accounts.removable_account("nobody", uid_min=1000, keep=set())
    assert e.value.status == 403


# --- sign-up approval: a request must not become an admin_users name ------------------------
async def test_a_request_for_a_name_made_admin_later_is_not_approved(hub: Any) -> None:
    """Someone asked for mhat_newprof before the operator listed that name in admin_users
    (for a colleague yet to sign in). Sign-up refuses admin_users names; approving must too,
    or the requester's password becomes an admin's."""
    c, _ = hub
    p = c.server.app[PARTS]
    assert (await login(c, "boss", PASSWORD)).status == 302
    text = await post(c, f"/hub/admin/signups/{LATE_ADMIN}/approve", 403)
    assert "admin_users" in text
    assert await p.store.get_user(LATE_ADMIN) is None
    await post(c, f"/hub/admin/signups/{LATE_ADMIN}/refuse", 200)


# --- redirects, CSRF, shutdown, bad input ---------------------------------------------------
async def test_forms_go_back_only_to_the_admin_page_and_shutdown_needs_its_scope(
    hub: Any,
) -> None:
    c, tok = hub
    assert (await login(c, "boss", PASSWORD)).status == 302
    for nxt, where in {
        "//evil.example/hub/admin": "/hub/admin",
        "/hub/adminx": "/hub/admin",
        "/hub/admin?q=st\r\nSet-Cookie: x=1": "/hub/admin",
        "https://evil.example/": "/hub/admin",
        "/hub/admin?q=st": "/hub/admin?q=st",
    }.items():
        r = await c.post(
            "/hub/admin/users/st1/stop",
            data={"_xsrf": xsrf_of(c), "next": nxt},
            allow_redirects=False,
        )
        assert r.status == 302 and r.headers["Location"] == where, nxt
    # another site's form: no _xsrf, refused before anything happens
    for path in ("/hub/api/shutdown", "/hub/admin/shutdown", "/hub/admin/users/bulk"):
        r = await c.post(path, data={"confirm": "shutdown", "action": "delete", "user": "st1"})
        assert r.status == 403, path
    assert await c.server.app[PARTS].store.get_user("st1") is not None
    h = {"Authorization": f"token {tok}"}
    r = await c.post("/hub/api/shutdown", headers=h, json={"servers": "yes"})
    assert r.status == 400
    r = await c.post("/hub/api/shutdown", headers=h, json={})
    assert r.status == 409  # not run by `minihub`: nothing stops
    assert (await login(c, "tia", PASSWORD)).status == 302
    await post(c, "/hub/admin/shutdown", 403, confirm="shutdown")
    r = await c.post("/hub/api/shutdown", headers={"X-XSRFToken": xsrf_of(c)}, json={})
    assert r.status == 403


async def test_bad_input_on_the_new_routes_is_a_4xx(hub: Any) -> None:
    c, tok = hub
    assert (await login(c, "boss", PASSWORD)).status == 302
    for query in (
        "page=abc",
        "page=99999999",
        "per_page=7",
        "sort=name;drop",
        "state=%00",
        "q=" + "%25" * 300,
        "group=" + "x" * 5000,
        "q=%ED%A0%80",
        "group=%ED%A0%80",
        "q=%FF",
        "course_repo=file:///etc/passwd",
        "course_repo=https://x.example/r&course_target=../../etc",
    ):
        r = await c.get("/hub/admin?" + query)
        assert 200 <= r.status < 500, (query, r.status)
    h = {"Authorization": f"token {tok}"}
    for query in ("name_filter=%ED%A0%80", "offset=99999999999999999999", "sort=-x", "limit=0"):
        r = await c.get("/hub/api/users?" + query, headers=h)
        assert 200 <= r.status < 500, (query, r.status)
    for url, data, want in (
        ("/hub/admin/users/bulk", {"action": "explode"}, 400),
        ("/hub/admin/users/bulk", {"action": "stop", "target": "filter", "page": "x"}, 400),
        ("/hub/admin/users/bulk", {"action": "add-to-group", "user": "st1"}, 400),
        ("/hub/admin/users/bulk", {"action": "add-to-group", "user": "st1", "to_group": "no"}, 404),
        ("/hub/admin/users/st1/edit", {"new_name": "../../etc"}, 400),
        ("/hub/admin/users/st1/edit", {"new_name": "x" * 300}, 400),
        ("/hub/admin/users/nosuch/edit", {}, 404),
        ("/hub/admin/users/st1/explode", {}, 404),
        ("/hub/admin/passwords.csv", {"csv": "a,b,c"}, 400),
        ("/hub/admin/signups/nosuch/approve", {}, 404),
        ("/hub/admin/course/folders", {"path": "relative/x"}, 400),
        ("/hub/admin/course/folders", {"path": "/etc"}, 400),
        ("/hub/admin/course/folders/remove", {"path": "/nope"}, 404),
        ("/hub/admin/announcement", {"all": "x" * 3000}, 400),
    ):
        await post(c, url, want, **data)
    for path in ("/hub/user-redirect/%ff%fe", "/hub/user-redirect/..%2f..%2fhub%2fapi"):
        r = await c.get(path, allow_redirects=False)
        where = r.headers["Location"]
        assert r.status == 302 and where.startswith(("/user/boss/", "/hub/spawn/boss?")), where


# --- git-pull links: another site's link must not write where programs read code -----------
@needs_root
async def test_a_course_link_cannot_clone_into_a_hidden_folder(
    data_dir: str,
    git_server: Any,  # noqa: F811
    make_system_user: Any,
) -> None:
    """A link on any website (the pull starts when the page opens, as nbgitpuller's) with
    targetPath=.ipython/profile_default/startup put the repository's .py files where every
    kernel runs them at start: code run as the student by whoever wrote the link. Also
    .local/lib/python3.x/site-packages (a .pth), .ssh (authorized_keys), .jupyter, .config.
    A hidden folder anywhere in the target, or as the repository's own name, is refused."""
    evil = git_server.create("evil", {"00-evil.py": "open('/tmp/mhat_pwned', 'w')\n"})
    assert evil.exists()
    url = git_server.url("evil")
    cfg = hub_config(data_dir, hub__cleanup_servers=True)
    server = TestServer(make_app(cfg), host="127.0.0.1")
    await server.start_server()
    eve = make_system_user("mhat_eve")
    b = Browser(f"http://127.0.0.1:{server.port}")
    try:
        await b.login(eve)
        where, r = await b.follow("/hub/user-redirect/tree/")  # starts the server
        assert r.status == 200, where
        page = f"/user/{eve.name}/git-pull?"
        for target in (
            ".ipython/profile_default/startup",
            "course/.git",
            ".local/lib/python3.12/site-packages",
            "./.ssh",
        ):
            q = urlencode({"repo": url, "targetPath": target})
            r = await b.get(page + q)
            assert r.status == 400 and "hidden" in await r.text(), target
            r = await b.get(page.replace("git-pull?", "git-pull/api?") + q)
            assert r.status == 400, target
        r = await b.get(page + urlencode({"repo": "https://example.org/x/.ipython.git"}))
        assert r.status == 400 and "hidden" in await r.text()
        assert not os.path.lexists(os.path.join(eve.home, ".ipython"))
        assert not os.path.lexists(os.path.join(eve.home, ".ssh"))
        # an ordinary folder still works
        events = await b.pull_events(page + urlencode({"repo": url, "targetPath": "week1"}))
        assert events[-1]["phase"] == "finished", events[-3:]
        assert os.path.isfile(os.path.join(eve.home, "week1", "00-evil.py"))
    finally:
        await b.close()
        await server.close()
