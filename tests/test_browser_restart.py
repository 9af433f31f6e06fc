"""A hub restart under an open notebook, in real Chromium: the kernel and its output survive.

SIGTERM the hub while a cell is running and the browser's websocket is open; start a new hub;
the page reconnects to the same kernel and shows the output that arrived meanwhile.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Hub, launch_hub, stop_hub
from test_browser_hub import log_in
from test_browser_notebook import account, chromium, needs_browser
from test_config_cli import free_port

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for both signals; each test has a context (cookies) of its own."""
    needs_browser()
    with chromium() as b:
        yield b


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_notebook_survives_hub_restart(
    data_dir: str, tmp_path: Path, make_system_user: Any, browser: Any, sig: signal.Signals
) -> None:
    user = make_system_user(account(f"mhrs_{sig.name[3:].lower()}"))
    port = free_port()
    cmd = [sys.executable, "-m", "minihub", "--data-dir", data_dir, "--port", str(port)]
    log = tmp_path / "hub.log"
    proc = launch_hub(cmd, port, log)
    hub = Hub(f"http://127.0.0.1:{port}", user)
    try:
        ctx = browser.new_context()
        try:
            ctx.set_default_timeout(30000)
            page = ctx.new_page()
            log_in(page, hub)
            page.locator("summary", has_text="New").click()
            with ctx.expect_page() as new_page:
                page.locator("#new-menu button[data-kernel]").first.click()
            nb = new_page.value
            nb.wait_for_selector("#kernel-status[data-status=idle]", timeout=60000)
            kernel_id = nb.evaluate("window.minihubNotebook.kernel.id")
            # The cell prints once the test, the hub gone, says so (a flag file; at most
            # 60 s), then says it has printed (another).
            go, printed = Path(user.home) / "mhrs-go", Path(user.home) / "mhrs-printed"
            nb.locator(".cell .cm-content").first.click()
            nb.keyboard.insert_text(
                f"import os, time; [time.sleep(0.05) for _ in range(1200) if not "
                f"os.path.exists('{go}')]; print('after restart'); open('{printed}', 'w')"
            )
            nb.keyboard.press("Shift+Enter")
            nb.wait_for_selector("#kernel-status[data-status=busy]")
            proc.send_signal(sig)
            proc.wait(30)
            go.touch()  # the output arrives while no hub is there to pass it on
            deadline = time.monotonic() + 30
            while not printed.exists():
                assert time.monotonic() < deadline, "the cell did not print"
                time.sleep(0.05)
            proc = launch_hub(cmd, port, log)
            out = nb.locator(".cell").nth(0).locator(".output.stream")
            out.wait_for(timeout=60000)
            assert "after restart" in out.inner_text()
            nb.wait_for_selector("#kernel-status[data-status=idle]", timeout=60000)
            assert nb.evaluate("window.minihubNotebook.kernel.id") == kernel_id
        finally:
            ctx.close()
    finally:
        stop_hub(proc)
        subprocess.run(["pkill", "-KILL", "-u", user.name], capture_output=True)
