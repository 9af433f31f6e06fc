"""The whole path in real Chromium: log in at /hub/login, wait for the spawn, use a notebook.

Proves the notebook app works through the hub's proxy, cookies and XSRF check, not only
against a bare user server.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_browser_notebook import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, _installed_bundle

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def hub(data_dir: str, tmp_path: Path) -> Iterator[str]:
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed")
    if not _installed_bundle().exists():
        pytest.skip("the notebook app is not built into the installed minihub: run scripts/install")
    port = _free_port()
    toml = tmp_path / "minihub.toml"
    toml.write_text("[hub]\ncleanup_servers = true\n")
    log = tmp_path / "hub.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "minihub", "-f", str(toml), "--data-dir",
                                 data_dir, "--port", str(port)], stdout=f, stderr=f)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("hub did not start: " + log.read_text()[-3000:])
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_login_spawn_and_run_a_notebook(hub: str, make_system_user: Any) -> None:
    from playwright.sync_api import sync_playwright

    user = make_system_user("mhfx_hub")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            ctx = browser.new_context(viewport={"width": 1280, "height": 900})
            ctx.set_default_timeout(30000)
            page = ctx.new_page()
            page.goto(hub + "/hub/login")
            page.fill("input[name=username]", user.name)
            page.fill("input[name=password]", user.password)
            page.locator("form button, form input[type=submit]").first.click()
            page.wait_for_url(f"**/user/{user.name}/tree/", timeout=90000)
            page.locator("#file-rows").wait_for(state="attached")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "hub-tree.png"))

            page.locator("summary", has_text="New").click()
            with ctx.expect_page() as new_page:
                page.locator("#new-menu button[data-kernel]").first.click()
            nb = new_page.value
            nb.wait_for_selector("#kernel-status[data-status=idle]", timeout=60000)
            nb.locator(".cell .cm-content").first.click()
            nb.keyboard.type("import os; print(os.getuid())")
            nb.keyboard.press("Shift+Enter")
            out = nb.locator(".cell").nth(0).locator(".output.stream")
            out.wait_for()
            assert out.inner_text().strip() == str(user.uid)
            # A PUT through the hub: passes only with the X-XSRFToken header the app sends.
            nb.keyboard.press("Control+s")
            nb.locator("#save-state:not(.dirty)").wait_for()
            path = nb.evaluate("window.minihubNotebook.path")
            assert (Path(user.home) / path).exists()
            nb.screenshot(path=str(ARTIFACTS / "hub-notebook.png"))
        finally:
            browser.close()
