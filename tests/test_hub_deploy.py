"""Deployment shapes: a hub under a prefix, new users from /etc/skel, shared dirs, non-root."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import aiohttp
from conftest import hub_config, needs_root, xsrf_of
from test_config_cli import MINIHUB, free_port, start_hub
from test_hub_spawn import h, make_tokens, start

from minihub.app import make_app


@needs_root
async def test_everything_under_base_url(aiohttp_client, data_dir, make_system_user):
    u = make_system_user("mhdp_pre")
    cfg = hub_config(data_dir, hub__base_url="/jupyter/")
    c = await aiohttp_client(make_app(cfg))
    r = await c.get("/jupyter/", allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "/jupyter/hub/login"
    r = await c.post(
        "/jupyter/hub/login",
        data={"username": u.name, "password": u.password},
        allow_redirects=False,
    )
    assert r.status == 302 and r.headers["Location"].startswith("/jupyter/hub/spawn-pending/")
    assert r.cookies["minihub-session"]["path"] == "/jupyter/"
    for _ in range(100):
        r = await c.get(f"/jupyter/hub/spawn-pending/{u.name}", allow_redirects=False)
        if r.headers.get("Location", "").startswith(f"/jupyter/user/{u.name}/"):
            break
        await asyncio.sleep(0.1)
    r = await c.get(f"/jupyter/user/{u.name}/", allow_redirects=False)
    assert r.status in (301, 302) and r.headers["Location"].startswith(f"/jupyter/user/{u.name}/")
    r = await c.get(f"/jupyter/user/{u.name}/api/contents")
    assert r.status == 200
    r = await c.get(f"/jupyter/user/{u.name}/tree/")
    assert r.status == 200 and f"/jupyter/user/{u.name}/static/" in await r.text()
    r = await c.get("/hub/login")
    assert r.status == 404  # nothing outside the prefix
    await c.delete(f"/jupyter/hub/api/users/{u.name}/server", headers={"X-XSRFToken": xsrf_of(c)})


@needs_root
async def test_new_user_gets_skel_link_and_shared_dirs(aiohttp_client, data_dir, tmp_path):
    name = "mhdp_newbie"
    subprocess.run(["userdel", "-r", "-f", name], capture_output=True)
    shared = Path("/srv/mhdp-class-data")
    shared.mkdir(parents=True, exist_ok=True)
    (shared / "syllabus.txt").write_text("week 1\n")
    os.chmod(shared, 0o755)
    os.chmod(shared / "syllabus.txt", 0o644)
    skel_link = Path("/etc/skel/mhdp-shared")
    extra = Path("/srv/mhdp-extra")
    extra.mkdir(exist_ok=True)
    os.chmod(extra, 0o755)
    try:
        if skel_link.is_symlink():
            skel_link.unlink()
        skel_link.symlink_to(shared)
        cfg = hub_config(
            data_dir,
            auth__authenticator="native",
            users__create_system_users=True,
            users__shared_dirs=[str(extra)],
        )
        tok = await make_tokens(cfg, [name])
        c = await aiohttp_client(make_app(cfg))
        await start(c, name, tok[name])
        pw = pwd.getpwnam(name)  # useradd -m made the account
        assert os.path.islink(os.path.join(pw.pw_dir, "mhdp-shared"))
        r = await c.get(f"/user/{name}/api/contents", headers=h(tok[name]))
        listing = {x["name"] for x in (await r.json())["content"]}
        assert {"mhdp-shared", "mhdp-extra"} <= listing
        r = await c.get(f"/user/{name}/api/contents/mhdp-shared/syllabus.txt", headers=h(tok[name]))
        assert r.status == 200 and (await r.json())["content"] == "week 1\n"
        await c.delete(f"/hub/api/users/{name}/server", headers=h(tok[name]))
        # spawning again is idempotent with the links already there
        await start(c, name, tok[name])
        await c.delete(f"/hub/api/users/{name}/server", headers=h(tok[name]))
    finally:
        if skel_link.is_symlink():
            skel_link.unlink()
        shutil.rmtree(shared, ignore_errors=True)
        shutil.rmtree(extra, ignore_errors=True)
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
        subprocess.run(["userdel", "-r", "-f", name], capture_output=True)


@needs_root
async def test_hub_runs_unprivileged(tmp_path, make_system_user):
    owner = make_system_user("mhdp_owner")
    data = Path(owner.home) / "hubdata"
    port = free_port()
    as_owner = ["runuser", "-u", owner.name, "--"]
    toml = Path(owner.home) / "minihub.toml"
    toml.write_text('[auth]\nauthenticator = "native"\n')
    os.chown(toml, owner.uid, owner.gid)
    env_cmd = [*as_owner, *MINIHUB, "-f", str(toml), "--data-dir", str(data)]
    r = subprocess.run(
        [*env_cmd, "user", "add", "stu"],
        input="stu-password\n",
        text=True,
        capture_output=True,
        cwd="/",
    )
    assert r.returncode == 0, r.stderr
    log = tmp_path / "hub.log"
    hub = start_hub([*env_cmd, "--port", str(port)], port, log)
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            base = f"http://127.0.0.1:{port}"
            r = await s.post(
                f"{base}/hub/login", data={"username": "stu", "password": "stu-password"}
            )
            for _ in range(100):
                r = await s.get(f"{base}/user/stu/api/status")
                if r.status == 200:
                    break
                await asyncio.sleep(0.1)
            assert r.status == 200
            # the server runs as the hub's own account, in a per-user dir under the data dir
            r = await s.get(f"{base}/user/stu/api/contents")
            assert r.status == 200
            assert (data / "users" / "stu").is_dir()
            assert (data / "users" / "stu").stat().st_uid == owner.uid
    finally:
        hub.terminate()
        hub.wait(20)
        subprocess.run(["pkill", "-KILL", "-u", owner.name], capture_output=True)
