"""Issue 12 item 1: open sign-up must never hand a stranger an existing account or an admin.

Against a real hub process as root, native authenticator, open sign-up: signing up as an
existing Unix account (that never used the hub), as a configured admin, or as a name some
other process holds (a group) is refused and creates nothing; a new name gets a new Unix
account made by minihub, and its server runs as that account.
"""

from __future__ import annotations

import asyncio
import pwd
import subprocess
from pathlib import Path

import aiohttp
from conftest import needs_root
from test_attack_lockout import client, post_login, real_hub

SIGNUP_HUB = """[auth]
authenticator = "native"
open_signup = true
admin_users = ["mhsu_boss"]
login_failure_delay_seconds = 0.05
[users]
create_system_users = true
[spawner]
uid_min = 0
"""


async def sign_up(
    s: aiohttp.ClientSession, base: str, name: str, password: str = "stranger-pass-1"
) -> tuple[int, str]:
    async with s.post(
        f"{base}/hub/signup",
        allow_redirects=False,
        data={"username": name, "password": password, "password2": password},
    ) as r:
        return r.status, await r.text()


def sh(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)


def userdel(name: str) -> None:
    sh("pkill", "-KILL", "-u", name)
    sh("userdel", "-r", "-f", name)


def account(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


@needs_root
async def test_signup_as_an_existing_unix_account_is_refused(tmp_path, make_system_user):
    victim = make_system_user("mhsu_victim")
    secret = Path(victim.home) / "secret.txt"
    secret.write_text("victim's private notes")
    with real_hub(tmp_path, SIGNUP_HUB) as (base, log):
        async with client() as s:
            for name in (victim.name, victim.name.upper(), f"  {victim.name} "):
                status, text = await sign_up(s, base, name)
                assert status == 409 and "is taken" in text, (name, status)
            # nothing was bound: the stranger's password opens nothing
            assert (await post_login(s, base, victim.name, "stranger-pass-1"))[0] == 403
            for name in ("root", "daemon", "nobody"):  # system accounts, uid below uid_min too
                assert (await sign_up(s, base, name))[0] == 409
        assert "Traceback" not in log.read_text()


@needs_root
async def test_signup_as_a_configured_admin_is_refused(tmp_path):
    userdel("mhsu_boss")
    with real_hub(tmp_path, SIGNUP_HUB) as (base, _):
        async with client() as s:
            status, text = await sign_up(s, base, "MHSU_Boss")
            assert status == 403 and "may not sign up" in text
            assert (await post_login(s, base, "mhsu_boss", "stranger-pass-1"))[0] == 403
    assert account("mhsu_boss") is None


@needs_root
async def test_signup_as_a_name_another_process_holds_is_refused(tmp_path):
    """useradd is the arbiter: a group of that name (or an account made a moment before)."""
    assert sh("groupadd", "-f", "mhsu_grp").returncode == 0
    try:
        with real_hub(tmp_path, SIGNUP_HUB) as (base, _):
            async with client() as s:
                status, text = await sign_up(s, base, "mhsu_grp")
                assert status == 409 and "is taken" in text
                assert (await post_login(s, base, "mhsu_grp", "stranger-pass-1"))[0] == 403
        assert account("mhsu_grp") is None
    finally:
        sh("groupdel", "mhsu_grp")


@needs_root
async def test_a_new_name_gets_its_own_new_account_and_server(tmp_path):
    name = "mhsu_newbie"
    userdel(name)
    try:
        with real_hub(tmp_path, SIGNUP_HUB) as (base, _):
            async with client() as s:
                assert (await sign_up(s, base, name))[0] == 302
                made = account(name)
                assert made is not None and made.pw_uid >= 1000  # minihub made it, now
                assert (await sign_up(s, base, name))[0] == 409  # and only once
                assert (await post_login(s, base, name, "stranger-pass-1"))[0] == 302
                xsrf = next(c.value for c in s.cookie_jar if c.key == "_xsrf")
                async with s.post(
                    f"{base}/hub/api/users/{name}/server", headers={"X-XSRFToken": xsrf}
                ) as r:
                    assert r.status in (201, 202), await r.text()
                ready = False
                for _ in range(150):
                    async with s.get(f"{base}/hub/api/user") as r:
                        ready = bool((await r.json())["servers"].get("", {}).get("ready"))
                    if ready:
                        break
                    await asyncio.sleep(0.2)
                assert ready
                out = sh("pgrep", "-u", str(made.pw_uid)).stdout.split()
                assert out, "the server runs as the account minihub made"
    finally:
        userdel(name)


@needs_root
async def test_root_hub_without_create_system_users_offers_no_signup(tmp_path, make_system_user):
    """Without it a signed-up name would wait for an account of its name to appear, and get
    whoever's that turned out to be: sign-up stays closed and the log says why."""
    toml = SIGNUP_HUB.replace("create_system_users = true", "create_system_users = false")
    with real_hub(tmp_path, toml) as (base, log):
        async with client() as s:
            async with s.get(f"{base}/hub/signup") as r:
                assert r.status == 404
            assert (await sign_up(s, base, "mhsu_later"))[0] == 404
        assert "open_signup is ignored" in log.read_text()
    assert account("mhsu_later") is None
