"""The plugin registry: spawners and authenticators are entry points, minihub's own included.

A separate package (tests/plugin_pkg/demo_minihub_plugin.py) is made discoverable the way
an installed one is, by a `*.dist-info` directory with an entry_points.txt on the hub
process's PYTHONPATH, without installing anything: a real hub process then spawns with its
spawner, configured through the spawner's own [demo] section.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from conftest import hub_config, hub_log_faults, needs_root
from test_config_cli import MINIHUB, free_port, start_hub
from test_hub_spawn import h

from minihub import config, plugins
from minihub.auth.native import NativeAuthenticator
from minihub.auth.oauth import OAuthenticator
from minihub.errors import StartupError
from minihub.spawner.forkserver import ForkSpawner
from minihub.spawner.local import LocalSpawner

PLUGIN_SRC = Path(__file__).parent / "plugin_pkg"


def install_metadata(site: Path, entry_points: str, dist: str = "demo_minihub_plugin") -> None:
    """What pip would leave in site-packages for the entry points, minus the code (which is
    on PYTHONPATH from tests/plugin_pkg)."""
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    name = dist.replace("_", "-")
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


@pytest.fixture
def demo_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The demo plugin registered for every process the test starts (not for this one)."""
    site = tmp_path / "site"
    install_metadata(site, "[minihub.spawners]\ndemo = demo_minihub_plugin:DemoSpawner\n")
    monkeypatch.setenv("PYTHONPATH", f"{site}{os.pathsep}{PLUGIN_SRC}")
    return site


def minihub(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MINIHUB, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        input="ann-password-1\n",
    )


# --- minihub's own, through the entry points -----------------------------------------------


def test_builtins_are_entry_points_of_the_installed_minihub():
    for group, expected in (
        (plugins.SPAWNERS, {"fork": ForkSpawner, "local": LocalSpawner}),
        (plugins.AUTHENTICATORS, {"native": NativeAuthenticator, "oauth": OAuthenticator}),
    ):
        eps = {ep.name: ep for ep in importlib.metadata.entry_points(group=group.entry_points)}
        for name, cls in expected.items():
            assert eps[name].dist is not None and eps[name].dist.name == "minihub"
            assert eps[name].load() is cls
            assert plugins.load(group, name) is cls
        assert set(expected) <= set(plugins.names(group))
    assert "pam" in plugins.names(plugins.AUTHENTICATORS)


def test_plugin_settings_join_the_table_from_their_classes():
    # Each key is declared once, by the class that uses it, and the table holds that object.
    assert config.BY_KEY["users.shared_dirs"] in LocalSpawner.settings
    assert config.BY_KEY["spawner.fork_server"] in ForkSpawner.settings
    assert config.BY_KEY["auth.oauth.issuer"] in OAuthenticator.settings
    assert config.BY_KEY["auth.open_signup"] in NativeAuthenticator.settings
    assert not any(s.key == "users.shared_dirs" for s in config.HUB_SETTINGS)
    assert list(config.SECTIONS).index("auth.oauth") == list(config.SECTIONS).index("auth") + 1
    assert len({s.key for s in config.SETTINGS}) == len(config.SETTINGS)


def test_reading_the_settings_does_not_import_the_oauth_libraries():
    code = (
        "import sys, minihub.config as c; n = len(c.SETTINGS); "
        "print(n, sorted(m for m in ('authlib', 'joserfc', 'cryptography') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split(maxsplit=1)
    assert int(out[0]) == len(config.SETTINGS) and out[1].strip() == "[]"


def test_class_and_fork_server_choose_the_spawner(tmp_path):
    assert type(plugins.make_spawner(hub_config(str(tmp_path)))) is ForkSpawner
    local = hub_config(str(tmp_path), spawner__class="local")
    assert type(plugins.make_spawner(local)) is LocalSpawner
    # the setting that came before [spawner] class keeps its meaning
    old = hub_config(str(tmp_path), spawner__fork_server=False)
    assert plugins.spawner_name(old) == "local"
    assert type(plugins.make_spawner(old)) is LocalSpawner


def test_unknown_names_stop_start_up_in_one_line(tmp_path, demo_site):
    for section, key, value, names in (
        ("spawner", "class", "kube", "fork, kubernetes, local, slurm, demo"),
        ("auth", "authenticator", "ldap", "native, oauth, pam"),
    ):
        toml = tmp_path / f"{key}.toml"
        toml.write_text(f'[{section}]\n{key} = "{value}"\n')
        r = minihub("-f", str(toml), "--data-dir", str(tmp_path / "d"))
        assert r.returncode == 2 and r.stdout == ""
        line = r.stderr.strip()
        assert "\n" not in line and "Traceback" not in line
        assert str(toml) in line and f"[{section}] {key}" in line and repr(value) in line
        assert names in line, line


def test_a_broken_plugin_matters_only_when_chosen(tmp_path, demo_site):
    install_metadata(
        demo_site,
        "[minihub.spawners]\nbroken = demo_minihub_plugin:Missing\n",
        dist="broken_minihub_plugin",
    )
    ok = minihub("--generate-config", str(tmp_path / "g.toml"))
    assert ok.returncode == 0 and "'broken'" in ok.stderr  # a warning, not a failure
    assert "[demo]" in (tmp_path / "g.toml").read_text()
    toml = tmp_path / "broken.toml"
    toml.write_text('[spawner]\nclass = "broken"\n')
    r = minihub("-f", str(toml), "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert "[spawner] class" in last and "cannot be loaded" in last and "Missing" in last


# --- a third-party spawner ---------------------------------------------------------------


def test_generate_config_has_the_plugins_section_only_when_installed(tmp_path, monkeypatch):
    without = tmp_path / "without.toml"
    assert minihub("--generate-config", str(without)).returncode == 0
    assert "[demo]" not in without.read_text()
    site = tmp_path / "site"
    install_metadata(site, "[minihub.spawners]\ndemo = demo_minihub_plugin:DemoSpawner\n")
    monkeypatch.setenv("PYTHONPATH", f"{site}{os.pathsep}{PLUGIN_SRC}")
    with_demo = tmp_path / "with.toml"
    assert minihub("--generate-config", str(with_demo)).returncode == 0
    text = with_demo.read_text()
    demo = text[text.index("[demo]\n") :]
    assert '# run_as = "nobody"' in demo and '# root_dir = "/tmp"' in demo
    assert "Unix account every server of the demo spawner runs as" in demo
    # what it wrote is a configuration the hub accepts, [demo] included
    text = text.replace('# run_as = "nobody"', 'run_as = "daemon"')
    with_demo.write_text(text.replace('# class = "fork"', 'class = "demo"'))
    r = minihub("-f", str(with_demo), "--data-dir", str(tmp_path / "d"), "user", "list")
    assert r.returncode == 0, r.stderr


@needs_root
async def test_hub_spawns_with_a_spawner_from_another_package(
    tmp_path, demo_site, make_system_user
):
    runner = make_system_user("mhpl-run")
    root = Path(runner.home) / "work"
    root.mkdir()
    (root / "hello-from-demo.txt").write_text("hi\n")
    shutil.chown(root, runner.name, runner.name)
    toml = tmp_path / "demo.toml"
    toml.write_text(
        '[auth]\nauthenticator = "native"\n[spawner]\nclass = "demo"\n'
        f'[demo]\nrun_as = "{runner.name}"\nroot_dir = "{root}"\n'
    )
    data, port = tmp_path / "data", free_port()
    cli = ["-f", str(toml), "--data-dir", str(data)]
    assert minihub(*cli, "user", "add", "ann", "--admin").returncode == 0  # no Unix account
    token = minihub(*cli, "token", "ann").stdout.strip()
    log = tmp_path / "hub.log"
    hub = start_hub([*MINIHUB, *cli, "--port", str(port), "--log-level", "DEBUG"], port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            r = await s.post(f"{url}/hub/api/users/ann/server", headers=h(token))
            assert r.status in (201, 202), await r.text()
            model = await ready(s, url, token)
            assert model["server"] == "/user/ann/"
            # through the hub's proxy to the demo's server, which opened in [demo] root_dir
            r = await s.get(f"{url}/user/ann/api/contents", headers=h(token))
            assert r.status == 200, await r.text()
            assert "hello-from-demo.txt" in {f["name"] for f in (await r.json())["content"]}
            assert server_pids(runner.uid), "the server does not run as [demo] run_as"
            r = await s.delete(f"{url}/hub/api/users/ann/server", headers=h(token))
            assert r.status in (202, 204), await r.text()
            await stopped(s, url, token)
        for _ in range(100):
            if not server_pids(runner.uid):
                break
            await asyncio.sleep(0.1)
        assert not server_pids(runner.uid), "stopping did not end the demo's server"
    finally:
        hub.terminate()
        hub.wait(10)
    text = log.read_text()
    assert not hub_log_faults(text)
    assert "servers start with the 'demo' spawner (demo_minihub_plugin:DemoSpawner)" in text


async def ready(s: aiohttp.ClientSession, url: str, token: str) -> dict[str, object]:
    for _ in range(300):
        r = await s.get(f"{url}/hub/api/users/ann", headers=h(token))
        model: dict[str, object] = await r.json()
        if model["server"]:
            return model
        await asyncio.sleep(0.1)
    raise AssertionError(f"the demo's server never became ready: {json.dumps(model)}")


async def stopped(s: aiohttp.ClientSession, url: str, token: str) -> None:
    for _ in range(300):
        model = await (await s.get(f"{url}/hub/api/users/ann", headers=h(token))).json()
        if not model["server"] and not model["pending"]:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the demo's server never stopped: {model}")


def server_pids(uid: int) -> list[int]:
    """Processes of `uid` running minihub's server."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"minihub.singleuser" in cmdline:
            out.append(int(pid))
    return out


def test_a_plugins_own_checks_run_at_start_up(tmp_path):
    """The checks LocalSpawner declares with its settings, not ones config.py knows of."""
    for text, expect in (
        ("[users]\nhome_mode = 4096\n", "[users] home_mode: must be between"),
        ('[users]\ndisk_quota = "lots"\n', "[users] disk_quota: 'lots' is not"),
    ):
        toml = tmp_path / "c.toml"
        toml.write_text(text)
        with pytest.raises(StartupError, match=re.escape(f"{toml}: {expect}")):
            config.load(toml)
