"""The command line and configuration, as an operator meets them: real processes, real files."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from conftest import HUB_LOGS

from minihub.config import SETTINGS, load

MINIHUB = [sys.executable, "-m", "minihub"]


def run(*args: str, stdin: str = "", cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MINIHUB, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd or os.getcwd(),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    "text, expect",
    [
        ("[hub]\nprot = 80\n", r"unknown key 'prot' in \[hub\]"),
        ('[hub]\nport = "eighty"\n', r"\[hub\] port must be an integer"),
        ("[hubb]\nport = 80\n", r"unknown section \[hubb\]"),
        ("[hub\nport = 80\n", r"not valid TOML"),
        ('[auth]\nadmin_users = "alice"\n', r"\[auth\] admin_users must be a list of strings"),
        ('[auth]\nauthenticator = "ldap"\n', r"authenticator"),
        ('[spawner]\nmem_limit = "lots"\n', r"mem_limit"),
        # passed the type check once, then made every login (inf) or progress stream a 500
        ("[hub]\nsession_max_age_days = inf\n", r"\[hub\] session_max_age_days must be"),
        ("[hub]\nsession_max_age_days = nan\n", r"\[hub\] session_max_age_days must be"),
        ("[hub]\nsession_max_age_days = -1\n", r"session_max_age_days: must be more than 0"),
        ("[spawner]\nstart_timeout = inf\n", r"\[spawner\] start_timeout must be"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path, text, expect):
    cfg = tmp_path / "minihub.toml"
    cfg.write_text(text)
    r = run("-f", str(cfg), "--data-dir", str(tmp_path / "d"), "user", "list")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert str(cfg) in lines[0] and re.search(expect, lines[0]), lines[0]


def test_missing_config_file(tmp_path):
    r = run("-f", str(tmp_path / "nope.toml"), "user", "list")
    assert r.returncode == 2 and "nope.toml" in r.stderr and "cannot read" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_generate_config_documents_every_key_and_round_trips(tmp_path):
    path = tmp_path / "minihub.toml"
    r = run("--generate-config", str(path))
    assert r.returncode == 0 and path.exists()
    text = path.read_text()
    for s in SETTINGS:
        assert re.search(rf"^# {s.name} = ", text, re.MULTILINE), f"{s.key} missing"
    assert run("--generate-config", str(path)).returncode == 2  # no overwrite
    assert run("--generate-config", str(path), "--force").returncode == 0
    # every commented default, uncommented, is itself a valid config giving the defaults
    live = re.sub(r"^# (\w+ = )", r"\1", text, flags=re.MULTILINE)
    (tmp_path / "live.toml").write_text(live)
    cfg = load(tmp_path / "live.toml")
    assert cfg.get("hub.port") == 8000 and cfg.get("spawner.umask") == 0o077
    assert cfg.get("users.home_mode") == 0o700


def test_config_in_working_dir_and_flags_override(tmp_path):
    (tmp_path / "minihub.toml").write_text('[hub]\nport = 1234\n[auth]\nauthenticator = "native"\n')
    data = tmp_path / "data"
    r = run(
        "--data-dir", str(data), "user", "add", "zed", stdin="zed-password\n", cwd=str(tmp_path)
    )
    assert r.returncode == 0, r.stderr
    assert (data / "minihub.sqlite").exists()


def hub_cmd(data: Path, port: int) -> list[str]:
    return [*MINIHUB, "--data-dir", str(data), "--port", str(port), "--log-level", "DEBUG"]


@pytest.fixture
def native_toml(tmp_path: Path) -> Path:
    p = tmp_path / "native.toml"
    p.write_text('[auth]\nauthenticator = "native"\n')
    return p


@pytest.fixture
def hub_proc(tmp_path: Path, native_toml: Path) -> Iterator[tuple[list[str], int, Path]]:
    data, port = tmp_path / "data", free_port()
    cmd = [
        *MINIHUB,
        "-f",
        str(native_toml),
        "--data-dir",
        str(data),
        "--port",
        str(port),
        "--log-level",
        "DEBUG",
    ]
    yield cmd, port, data


def start_hub(cmd: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    if log not in HUB_LOGS:
        HUB_LOGS.append(log)
    with open(log, "ab") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=f)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return p
        except OSError:
            time.sleep(0.1)
    p.kill()
    raise AssertionError(log.read_text())


async def test_sigkill_loses_nothing_and_logs_hold_no_secrets(hub_proc, tmp_path, native_toml):
    cmd, port, data = hub_proc
    from helpers import add_users  # helpers imports this module

    cli = ["-f", str(native_toml), "--data-dir", str(data)]
    add_users(data, ["ops"], native_toml, ["ops"], [], {"ops": "ops-password-1"})
    log = tmp_path / "hub.log"
    hub = start_hub(cmd, port, log)
    url = f"http://127.0.0.1:{port}"
    secrets: list[str] = ["ops-password-1"]
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            r = await s.post(
                f"{url}/hub/login",
                data={"username": "ops", "password": "ops-password-1"},
                allow_redirects=False,
            )
            sid = r.cookies["minihub-session"].value
            xsrf = r.cookies["_xsrf"].value
            r = await s.post(
                f"{url}/hub/api/users/ops/tokens", json={"note": "x"}, headers={"X-XSRFToken": xsrf}
            )
            token = (await r.json())["token"]
            r = await s.post(f"{url}/hub/api/users/newbie", headers={"X-XSRFToken": xsrf})
            assert r.status == 201
            secrets += [sid, token, xsrf]
            # a second hub on the same data dir refuses to start
            second = subprocess.run(
                cmd[:-4] + ["--port", str(free_port())], capture_output=True, text=True, timeout=30
            )
            assert second.returncode == 2 and "already running" in second.stderr
            await s.get(f"{url}/hub/home?token={token}")  # a token in a URL is not logged
    finally:
        hub.send_signal(signal.SIGKILL)
        hub.wait(10)
    cli_token = run(*cli, "token", "ops").stdout.strip()
    secrets.append(cli_token)
    hub = start_hub(cmd, port, log)
    try:
        async with aiohttp.ClientSession(cookies={"minihub-session": sid}) as s:
            r = await s.get(f"{url}/hub/api/user")
            assert r.status == 200 and (await r.json())["name"] == "ops"
            for t in (token, cli_token):
                r = await s.get(
                    f"{url}/hub/api/users/newbie", headers={"Authorization": f"token {t}"}
                )
                assert r.status == 200
    finally:
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(20) == 0
    text = log.read_text()
    assert "login of ops" in text
    for secret in secrets:
        assert secret not in text


def test_cli_user_commands(tmp_path, native_toml):
    cli = ["-f", str(native_toml), "--data-dir", str(tmp_path / "d")]
    assert run(*cli, "user", "add", "Amy", stdin="amy-password\n").returncode == 0
    r = run(*cli, "user", "add", "amy", stdin="amy-password\n")
    assert r.returncode == 1 and "already exists" in r.stderr
    r = run(*cli, "user", "add", "x/../y", stdin="whatever-pw\n")
    assert r.returncode == 1 and "Invalid username" in r.stderr
    r = run(*cli, "user", "add", "short", stdin="abc\n")
    assert r.returncode == 1 and "too short" in r.stderr
    assert run(*cli, "user", "set-password", "amy", stdin="amy-password-2\n").returncode == 0
    assert run(*cli, "user", "admin", "amy").returncode == 0
    listing = run(*cli, "user", "list").stdout
    assert re.search(r"^amy\s+admin", listing, re.MULTILINE)
    token = run(*cli, "token", "amy").stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    assert run(*cli, "token", "nobody").returncode == 1
    names = tmp_path / "class.txt"
    names.write_text("# class list\nstu1\nstu2, Student Two\n\n")
    pam_cli = ["--data-dir", str(tmp_path / "d")]
    assert run(*pam_cli, "user", "import", str(names)).returncode == 0
    assert "stu2" in run(*cli, "user", "list").stdout
    assert run(*cli, "user", "remove", "stu1").returncode == 0
    assert "stu1" not in run(*cli, "user", "list").stdout


async def test_rest_shutdown_needs_its_scope_and_stops_the_hub(hub_proc, tmp_path, native_toml):
    cmd, port, data = hub_proc
    from helpers import add_users  # helpers imports this module

    passwords = {"boss": "boss-password-1", "pupil": "pupil-password-1"}
    tokens = add_users(data, passwords, native_toml, admins=["boss"], passwords=passwords)
    log = tmp_path / "hub.log"
    hub = start_hub(cmd, port, log)
    url = f"http://127.0.0.1:{port}/hub/api/shutdown"
    try:
        async with aiohttp.ClientSession() as s:
            auth = {"Authorization": f"token {tokens['pupil']}"}
            r = await s.post(url, headers=auth, json={})
            assert r.status == 403 and "shutdown" in (await r.json())["message"]
            auth = {"Authorization": f"token {tokens['boss']}"}
            r = await s.post(url, headers=auth, json={"servers": "yes"})
            assert r.status == 400 and "true or false" in (await r.json())["message"]
            r = await s.post(url, headers=auth, json={"servers": True, "proxy": True})
            assert r.status == 202
        assert hub.wait(timeout=30) == 0
    finally:
        if hub.poll() is None:
            hub.kill()
            hub.wait()
    assert "shutdown requested over the REST API" in log.read_text()
