"""JupyterLab (the real jupyterhub-singleuser) behind a real minihub hub process.

In headless Chromium: log in at /hub/login, follow the OAuth redirects to /user/<name>/lab,
run a cell in a new notebook. Over HTTP: the server survives a hub restart (same pid, same
kernel) and the browser's session keeps working.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers import execute_request, fill_login, launch_hub, read_output, stop_hub
from test_browser_notebook import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, account
from test_config_cli import free_port

VENV_BIN = os.path.dirname(sys.executable)
SINGLEUSER = shutil.which("jupyterhub-singleuser", path=VENV_BIN)
pytestmark = [
    pytest.mark.skipif(
        SINGLEUSER is None or shutil.which("jupyter-lab", path=VENV_BIN) is None,
        reason="jupyterhub-singleuser and JupyterLab are not installed",
    ),
    pytest.mark.timeout(90),
]
# JupyterLab's first load in Chromium takes ~15 s on an idle 2-core machine; the bound is
# generous for a busy one.
BROWSER_TIMEOUT = 150


@dataclass
class Hub:
    """A minihub hub process, as an operator runs it, with JupyterLab as the user server."""

    cmd: list[str]
    port: int
    log: Path
    base_url: str = "/"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The hub's root, without the trailing slash: url + "/hub/login"."""
        return f"http://127.0.0.1:{self.port}{self.base_url.rstrip('/')}"

    def start(self) -> None:
        self.proc = launch_hub(self.cmd, self.port, self.log)

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_hub(self.proc)
        self.proc = None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
def lab_hub(
    request: pytest.FixtureRequest, data_dir: str, tmp_path: Path, make_system_user: Any
) -> Iterator[tuple[Hub, Any]]:
    """A hub on a free loopback port, under the base URL given as the fixture's param."""
    base_url = getattr(request, "param", "/")
    user = make_system_user(account("mhjl"))
    port = free_port()
    toml = tmp_path / "minihub.toml"
    # The operator's line: the command by name, found on the servers' PATH (the hub's venv).
    toml.write_text(
        f'[hub]\nbase_url = "{base_url}"\n'
        '[spawner]\ncmd = ["jupyterhub-singleuser"]\nstart_timeout = 60\n'
        'environment = {JUPYTERHUB_ACTIVITY_INTERVAL = "1"}\n'
    )
    hub = Hub(
        [
            sys.executable,
            "-m",
            "minihub",
            "-f",
            str(toml),
            "--data-dir",
            data_dir,
            "--port",
            str(port),
        ],
        port,
        tmp_path / "hub.log",
        base_url,
    )
    hub.start()
    try:
        yield hub, user
    finally:
        hub.stop()
        # The hub leaves users' servers running on purpose (re-adoption); end this one's.
        subprocess.run(["pkill", "-TERM", "-u", user.name], check=False, capture_output=True)


# --- in Chromium ------------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.timeout(BROWSER_TIMEOUT)
def test_jupyterlab_in_chromium(lab_hub: tuple[Hub, Any]) -> None:
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed")
    hub, user = lab_hub
    console: list[str] = []
    failed: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            ctx = browser.new_context(viewport={"width": 1280, "height": 900})
            ctx.set_default_timeout(30000)
            page = ctx.new_page()
            page.on(
                "console",
                lambda m: (
                    console.append(f"{m.type}: {m.text} {m.location}")
                    if m.type in ("error", "warning")
                    else None
                ),
            )
            page.on(
                "response",
                lambda r: (
                    failed.append(f"{r.status} {r.request.method} {r.url}")
                    if r.status >= 400
                    else None
                ),
            )
            hops: list[str] = []
            page.on("request", lambda r: hops.append(r.url) if r.is_navigation_request() else None)
            page.goto(hub.url + "/hub/login")
            fill_login(page, user)
            try:
                page.wait_for_url(f"**/user/{user.name}/lab**", timeout=60000)
                page.locator("#jp-main-dock-panel").wait_for(timeout=60000)
                card = page.locator(".jp-LauncherCard[data-category='Notebook']").first
                card.wait_for(timeout=60000)
            except Exception as e:
                raise AssertionError(
                    f"{e}\nnavigations: {hops}\nfailed: {failed}\n"
                    f"console: {console[-20:]}\nhub log: {hub.tail()}"
                ) from e
            assert any("/hub/api/oauth2/authorize" in h for h in hops), hops
            assert any(f"/user/{user.name}/oauth_callback?code=" in h for h in hops), hops
            kernel_ws = run_a_cell(page, card, failed, console)
            assert kernel_ws.startswith(f"ws://127.0.0.1:{hub.port}/user/{user.name}/"), kernel_ws
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "jupyterlab.png"))
            save_the_notebook(page, user)
            use_a_terminal(page, user)
            # The hub's home page links to the server's own default (JupyterLab), not a 404.
            page.goto(hub.url + "/hub/home")
            page.locator("#open").click()
            page.wait_for_url(f"**/user/{user.name}/lab**")
            page.locator("#jp-main-dock-panel").wait_for(timeout=60000)
        finally:
            browser.close()
    # Nothing JupyterLab asked of the server was refused on the way (hub, proxy, XSRF, CSP).
    assert not [m for m in console if "Content Security Policy" in m or "Refused to" in m], console
    assert not [f for f in failed if f"/user/{user.name}/" in f], failed


def run_a_cell(page: Any, card: Any, failed: list[str], console: list[str]) -> str:
    """A new Python notebook from the launcher; print(6*7) shows 42 (kernel over the proxy)."""
    events: list[str] = []  # websocket opens and the kernel messages on them, in order

    def on_ws(ws: Any) -> None:
        events.append(f"open {ws.url}")
        ws.on("framesent", lambda f: events.append(f"> {_msg_type(f)}"))
        ws.on("framereceived", lambda f: events.append(f"< {_msg_type(f)}"))
        ws.on("close", lambda _: events.append("closed"))

    def why(e: Exception) -> AssertionError:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "jupyterlab-failed.png"))
        return AssertionError(
            f"{e}\nfailed: {failed}\nconsole: {console[-20:]}\n"
            "websockets:\n" + "\n".join(events[:60])
        )

    page.on("websocket", on_ws)
    card.click()
    panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)").first
    try:
        panel.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=60000)
        # "idle" shows the kernel's state from the REST API before the websocket is up, and
        # JupyterLab may still swap the session's kernel; a cell run then is silently lost
        # (JupyterLab's race, with or without a hub). Wait, as a person would, until the
        # newest kernel websocket has answered kernel_info.
        for _ in range(600):
            opened = [i for i, e in enumerate(events) if e.startswith("open ")]
            if (
                opened
                and "< kernel_info_reply" in events[opened[-1] :]
                and "closed" not in events[opened[-1] :]
            ):
                break
            page.wait_for_timeout(100)
        else:
            raise TimeoutError("no kernel websocket answered kernel_info within 60 s")
    except Exception as e:
        raise why(e) from e
    panel.locator(".jp-Cell .cm-content").first.click()
    page.keyboard.type("print(6*7)")
    page.keyboard.press("Shift+Enter")
    out = panel.locator(".jp-OutputArea-output").first
    try:
        out.wait_for(timeout=30000)
    except Exception as e:
        raise why(e) from e
    assert out.inner_text().strip() == "42"
    url = next(e for e in reversed(events) if e.startswith("open ")).removeprefix("open ")
    assert "/user/" in url and "/api/kernels/" in url and "/channels" in url, url
    assert "> execute_request" in events and "< execute_reply" in events, events
    return url


def save_the_notebook(page: Any, user: Any) -> None:
    """The toolbar's save: a PUT through the hub with JupyterLab's own credentials."""
    panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)").first
    panel.locator(".jp-Toolbar [data-command='docmanager:save']").first.click()
    dirty, accept = (
        page.locator(".jp-mod-current.jp-mod-dirty"),
        page.locator(".jp-Dialog .jp-mod-accept"),
    )
    for _ in range(300):  # JupyterLab 4 asks for a name on an untitled file's first save
        if accept.count():
            accept.first.click()
        if not dirty.count():
            break
        page.wait_for_timeout(100)
    path = Path(user.home) / "Untitled.ipynb"
    assert path.stat().st_uid == user.uid
    assert "print(6*7)" in path.read_text()


def use_a_terminal(page: Any, user: Any) -> None:
    """A terminal from a new launcher: its websocket runs a shell as the user."""
    page.locator(".lm-TabBar-addButton:not(.lm-mod-hidden)").first.click()
    page.locator(".jp-LauncherCard", has_text="Terminal").first.click()
    term = page.locator(".jp-Terminal:not(.lm-mod-hidden) .xterm").first
    term.wait_for()
    out = Path(user.home) / "mhjl-term.txt"
    term.click()
    page.keyboard.type(f"id -un > {out.name}")
    page.keyboard.press("Enter")
    for _ in range(300):
        if out.exists() and out.read_text().strip():
            break
        page.wait_for_timeout(100)
    assert out.read_text().strip() == user.name
    assert out.stat().st_uid == user.uid


def _msg_type(frame: Any) -> str:
    m = re.search(r'"msg_type": ?"(\w+)"', str(frame))
    return m.group(1) if m else "?"


# --- a hub restart under a running JupyterLab -------------------------------------------------


async def _wait_running(s: aiohttp.ClientSession, hub: Hub, name: str) -> None:
    for _ in range(600):
        async with s.get(f"{hub.url}/hub/api/users/{name}") as r:
            model = await r.json()
        if model.get("server"):
            return
        if model.get("pending") is None and not model.get("servers"):
            break
        await asyncio.sleep(0.1)
    raise AssertionError(f"server not running: {model}\n{hub.tail()}")


async def _execute(s: aiohttp.ClientSession, hub: Hub, name: str, kernel: str, code: str) -> str:
    """Run code over the kernel's websocket through the hub (authenticated by the browser's
    cookies alone, as JupyterLab's are); return its stdout."""
    session, msg_id = uuid.uuid4().hex, uuid.uuid4().hex
    url = f"{hub.url}/user/{name}/api/kernels/{kernel}/channels?session_id={session}"
    request = execute_request(code, msg_id, session, name, lab=True)
    async with s.ws_connect(url, protocols=["v1.kernel.websocket.jupyter.org"]) as ws:
        # JupyterLab offers the v1 binary framing; the server picks it when it can.
        if ws.protocol:
            await ws.send_bytes(_v1(request))
        else:
            await ws.send_json(request)
        return await read_output(ws, msg_id, 30, decode=_decode)


def _v1(msg: dict[str, Any]) -> bytes:
    """A message in the v1.kernel.websocket.jupyter.org binary framing."""
    keys = ("header", "parent_header", "metadata", "content")
    parts = [msg["channel"].encode(), *(json.dumps(msg[k]).encode() for k in keys)]
    offsets, pos = [], 8 * (len(parts) + 2)
    for p in parts:
        offsets.append(pos)
        pos += len(p)
    offsets.append(pos)
    head = (len(offsets)).to_bytes(8, "little") + b"".join(o.to_bytes(8, "little") for o in offsets)
    return head + b"".join(parts)


def _decode(m: aiohttp.WSMessage) -> dict[str, Any]:
    if m.type == aiohttp.WSMsgType.TEXT:
        return dict(json.loads(m.data))
    assert m.type == aiohttp.WSMsgType.BINARY, m
    data: bytes = m.data
    n = int.from_bytes(data[:8], "little")
    offs = [int.from_bytes(data[8 * (i + 1) : 8 * (i + 2)], "little") for i in range(n)]
    fields = [data[offs[i] : offs[i + 1]] for i in range(n - 1)]
    return {
        "channel": fields[0].decode(),
        "header": json.loads(fields[1]),
        "msg_type": json.loads(fields[1])["msg_type"],
        "parent_header": json.loads(fields[2]),
        "content": json.loads(fields[4]),
    }


def _server_pid(name: str) -> int:
    out = subprocess.run(
        ["pgrep", "-u", name, "-f", "jupyterhub-singleuser"],
        check=False,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert len(out) == 1, out
    return int(out[0])


async def _open_lab(s: aiohttp.ClientSession, hub: Hub, name: str) -> tuple[list[str], str]:
    """GET /user/<name>/lab as a browser would; return the redirect hops taken and the hub
    token JupyterLab got (its page config)."""
    async with s.get(f"{hub.url}/user/{name}/lab") as r:
        html = await r.text()
        assert r.status == 200, (r.status, html[:500], hub.tail())
        hops = [str(h.url) for h in r.history]
    m = re.search(
        r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', html, re.DOTALL
    )
    assert m, html[:500]
    config = json.loads(m.group(1))
    assert config["hubUser"] == name, config
    return hops, str(config["token"])


@pytest.mark.parametrize("lab_hub", ["/jupyter/"], indirect=True)  # cookie paths, redirects
async def test_jupyterlab_server_survives_hub_restart(lab_hub: tuple[Hub, Any]) -> None:
    hub, user = lab_hub
    name = user.name
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1, as a browser keeps them
    async with aiohttp.ClientSession(cookie_jar=jar, timeout=aiohttp.ClientTimeout(total=30)) as s:
        async with s.post(
            f"{hub.url}/hub/login", data={"username": name, "password": user.password}
        ) as r:
            assert r.status == 200, await r.text()
        await _wait_running(s, hub, name)
        hops, token = await _open_lab(s, hub, name)
        assert any("/hub/api/oauth2/authorize" in h for h in hops), hops
        xsrf = next(
            c.value
            for c in jar
            if c.key == "_xsrf" and c["path"].startswith(f"{hub.base_url}user/")
        )
        async with s.post(
            f"{hub.url}/user/{name}/api/kernels", json={}, headers={"X-XSRFToken": xsrf}
        ) as r:
            assert r.status == 201, await r.text()
            kernel = (await r.json())["id"]
        pid = _server_pid(name)
        out = await _execute(s, hub, name, kernel, "import os; x = 6 * 7; print(os.getppid())")
        assert out.strip() == str(pid)

        hub.stop()
        mark = len(hub.log.read_text(errors="replace"))
        assert os.path.exists(f"/proc/{pid}"), "the hub's SIGTERM took the server with it"
        hub.start()

        # The same server answers through the new hub, to the browser's cookies alone.
        await _wait_running(s, hub, name)
        async with s.get(f"{hub.url}/user/{name}/api/kernels") as r:
            assert r.status == 200, await r.text()
            assert kernel in [k["id"] for k in await r.json()]
        out = await _execute(s, hub, name, kernel, "import os; print(x, os.getppid())")
        assert out.split() == ["42", str(pid)]
        assert _server_pid(name) == pid
        await _open_lab(s, hub, name)  # JupyterLab loads again (OAuth redone if needed)
        # The new hub still knows the OAuth token (the server checks it with the hub once
        # its cache expires), and it still reaches the server as an API client.
        auth = {"Authorization": f"token {token}"}
        async with s.get(f"{hub.url}/hub/api/user", headers=auth) as r:
            assert r.status == 200 and (await r.json())["name"] == name
        async with (
            aiohttp.ClientSession() as bare,
            bare.get(f"{hub.url}/user/{name}/api/status", headers=auth) as r,
        ):  # token alone
            assert r.status == 200, await r.text()

        # The server's own API token still works: its activity posts reach the new hub.
        posted = f"POST {hub.base_url}hub/api/users/{name}/activity"
        for _ in range(100):
            since = hub.log.read_text(errors="replace")[mark:]
            if f"204 {posted}" in since:
                break
            await asyncio.sleep(0.1)
        assert f"204 {posted}" in since and posted not in since.replace(f"204 {posted}", ""), since[
            -3000:
        ]
