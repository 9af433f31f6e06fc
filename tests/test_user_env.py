"""The user environment (issue 16): kernels run in /opt/minihub/user, not the hub's venv; a
student's `%pip install` lands in their home only; `minihub env install` reaches everyone;
`pip install --user` in a terminal does too; a student's own kernelspec is listed (to them
only, beside a system-wide one) and starts. Real users, a real hub, real kernels."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import needs_root
from helpers import add_users, execute, hub_process
from test_hub_spawn import h
from test_singleuser_terminals import Term

from minihub import userenv

pytestmark = needs_root
ENV = Path("/opt/minihub/user")
MINIHUB = [sys.executable, "-m", "minihub"]
OWN_PKG, OWN_MODULE = "tomli-w", "tomli_w"  # tiny and pure Python, from the registry
SHARED_PKG, SHARED_MODULE = "iniconfig", "iniconfig"


@dataclass
class Site:
    base: str
    tokens: dict[str, str]
    homes: dict[str, str]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, make_system_user: Any) -> Iterator[Site]:
    if not userenv.python(ENV).is_file():
        pytest.fail(f"{ENV} is missing: bash scripts/install builds it")
    tmp = tmp_path_factory.mktemp("userenv")
    data = tmp / "data"
    users = [make_system_user("mhue_ann"), make_system_user("mhue_bob")]
    tokens = add_users(data, [u.name for u in users])
    toml = tmp / "m.toml"
    toml.write_text(f'[spawner]\nuser_env = "{ENV}"\n')
    with hub_process(toml, data, tmp / "hub.log") as base:
        yield Site(base, tokens, {u.name: u.home for u in users})


@pytest.fixture
async def http(site: Site) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def server(s: aiohttp.ClientSession, site: Site, name: str) -> str:
    """The user's server, started if need be; its URL."""
    hdr = h(site.tokens[name])
    r = await s.post(f"{site.base}/hub/api/users/{name}/server", headers=hdr)
    assert r.status in (201, 202, 400), await r.text()  # 400: already running
    async with asyncio.timeout(60):
        while not (await (await s.get(f"{site.base}/hub/api/users/{name}", headers=hdr)).json())[
            "server"
        ]:
            await asyncio.sleep(0.1)
    return f"{site.base}/user/{name}"


async def kernel(s: aiohttp.ClientSession, site: Site, name: str, spec: str = "") -> str:
    url = await server(s, site, name)
    body = {"name": spec} if spec else {}
    r = await s.post(f"{url}/api/kernels", json=body, headers=h(site.tokens[name]))
    assert r.status == 201, await r.text()
    return f"{url}/api/kernels/{(await r.json())['id']}"


async def run(s: aiohttp.ClientSession, site: Site, name: str, k: str, code: str) -> str:
    return await execute(s, f"{k}/channels", code, headers=h(site.tokens[name]), timeout=120)


async def test_kernels_run_in_the_user_env_with_a_class_packages(http, site):
    k = await kernel(http, site, "mhue_ann")
    out = await run(
        http,
        site,
        "mhue_ann",
        k,
        "import sys, numpy, pandas, matplotlib, ipywidgets\n"
        "print(sys.executable)\n"
        "try:\n    import aiohttp\nexcept ImportError:\n    print('no hub packages')",
    )
    assert out.splitlines() == [str(userenv.python(ENV)), "no hub packages"], out


async def test_pip_install_lands_in_the_students_home_only(http, site):
    ann, bob = "mhue_ann", "mhue_bob"
    k = await kernel(http, site, ann)
    out = await run(http, site, ann, k, f"%pip install -q --no-input {OWN_PKG}")
    assert "ERROR" not in out and "error" not in out.lower(), out
    assert not list(userenv.site_packages(ENV).glob(f"{OWN_MODULE}*"))  # not the shared env
    r = await http.post(f"{k}/restart", headers=h(site.tokens[ann]))
    assert r.status == 200, await r.text()
    out = await run(http, site, ann, k, f"import {OWN_MODULE}; print({OWN_MODULE}.__file__)")
    assert out.startswith(f"{site.homes[ann]}/.local/lib/python3"), out
    other = await kernel(http, site, bob)
    out = await run(http, site, bob, other, f"import {OWN_MODULE}")
    assert "ModuleNotFoundError" in out, out


async def test_pip_install_user_in_a_terminal(http, site):
    """A terminal's login shell (Debian's /etc/profile resets PATH) still finds the user
    environment's python and pip; `pip install --user` lands in the student's home."""
    bob, hdr = "mhue_bob", h(site.tokens["mhue_bob"])
    url = await server(http, site, bob)
    r = await http.post(f"{url}/api/terminals", json={}, headers=hdr)
    assert r.status == 200, await r.text()
    name = (await r.json())["name"]
    ws = await http.ws_connect(f"{url}/terminals/websocket/{name}", headers=hdr)
    try:
        t = Term(ws)
        assert json.loads((await ws.receive(timeout=10)).data) == ["setup", {}]
        found = await t.value("command -v python pip")
        assert found.split() == [str(userenv.python(ENV)), str(ENV / "bin" / "pip")], found
        await t.run(f"pip install -q --no-input --user {OWN_PKG} && echo pip-$((6 * 7))")
        await t.until(r"pip-42\r\n", timeout=120)
    finally:
        await ws.close()
        await http.delete(f"{url}/api/terminals/{name}", headers=hdr)
    assert not list(userenv.site_packages(ENV).glob(f"{OWN_MODULE}*"))
    k = await kernel(http, site, bob)
    out = await run(http, site, bob, k, f"import {OWN_MODULE}; print({OWN_MODULE}.__file__)")
    assert out.startswith(f"{site.homes[bob]}/.local/lib/python3"), out


async def test_env_install_reaches_everyone_and_names_kernels_to_restart(http, site):
    ann, bob = "mhue_ann", "mhue_bob"
    before = await kernel(http, site, ann)
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            [*MINIHUB, "env", "install", "--path", str(ENV), SHARED_PKG],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert f"restart to see it: {ann}:" in done.stdout, done.stdout
        after = await kernel(http, site, bob)
        out = await run(http, site, bob, after, f"import {SHARED_MODULE}; print('ok')")
        assert out.strip() == "ok", out
        out = await run(http, site, ann, before, f"import {SHARED_MODULE}; print('ok')")
        assert out.strip() == "ok", out
        listed = subprocess.run(
            [*MINIHUB, "env", "list", "--path", str(ENV)], capture_output=True, text=True
        )
        assert f"  {SHARED_PKG} " in listed.stdout and "  numpy " in listed.stdout
    finally:
        subprocess.run(
            [str(userenv.python(ENV)), "-m", "pip", "uninstall", "-q", "-y", SHARED_PKG],
            capture_output=True,
        )


@pytest.fixture
def system_kernelspec() -> Iterator[str]:
    """A kernelspec installed system-wide (as `jupyter kernelspec install` as root would)."""
    root = Path("/usr/local/share/jupyter")
    made = [p for p in (root, root / "kernels") if not p.exists()]
    spec = root / "kernels" / "mhue_sys"
    spec.mkdir(parents=True, exist_ok=True)
    argv = [str(userenv.python(ENV)), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Class env"}))
    try:
        yield spec.name
    finally:
        shutil.rmtree(spec)
        for p in reversed(made):
            p.rmdir()


async def test_a_students_own_kernelspec_is_listed_and_starts(http, site, system_kernelspec):
    ann, bob = "mhue_ann", "mhue_bob"
    k = await kernel(http, site, ann)
    out = await run(
        http,
        site,
        ann,
        k,
        "!python -m ipykernel install --user --name myenv --display-name 'My env' >/dev/null",
    )
    assert "ERROR" not in out, out
    url = await server(http, site, ann)
    specs = await (await http.get(f"{url}/api/kernelspecs", headers=h(site.tokens[ann]))).json()
    assert specs["default"] == "python3"
    assert specs["kernelspecs"]["myenv"]["spec"]["display_name"] == "My env"
    assert specs["kernelspecs"]["python3"]["spec"]["argv"][0] == str(userenv.python(ENV))
    theirs = await server(http, site, bob)
    other = await (await http.get(f"{theirs}/api/kernelspecs", headers=h(site.tokens[bob]))).json()
    assert "myenv" not in other["kernelspecs"]
    for listed in (specs, other):
        assert listed["kernelspecs"][system_kernelspec]["spec"]["display_name"] == "Class env"
    mine = await kernel(http, site, ann, "myenv")
    out = await run(http, site, ann, mine, "import sys; print(sys.argv[0], 6 * 7)")
    assert out.split()[-1] == "42", out
