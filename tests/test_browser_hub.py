"""The whole path in real Chromium: log in at /hub/login, wait for the spawn, use a notebook.

Proves the notebook app works through the hub's proxy, cookies and XSRF check (kernel
websocket, chunked upload, save), not only against a bare user server; screenshots of the
hub's pages land in test-artifacts/.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Hub, fill_login, hub_process
from test_browser_notebook import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, MIB, account, needs_browser

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


@pytest.fixture
def hub(data_dir: str, tmp_path: Path, make_system_user: Any) -> Iterator[Hub]:
    needs_browser()
    user = make_system_user(account("mhfx_hub"))
    toml = tmp_path / "minihub.toml"
    toml.write_text(f'[hub]\ncleanup_servers = true\n[auth]\nadmin_users = ["{user.name}"]\n')
    with hub_process(toml, data_dir, tmp_path / "hub.log") as url:
        yield Hub(url, user)


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"hub-{name}.png"), full_page=True)


def log_in(page: Any, hub: Hub) -> None:
    page.goto(hub.url + "/hub/login")
    page.locator("input[name=username]").wait_for()
    shot(page, "login")
    fill_login(page, hub.user)
    page.wait_for_url(f"**/user/{hub.user.name}/tree/", timeout=90000)
    page.locator("#file-rows tr").first.wait_for()


def upload_through_proxy(page: Any, hub: Hub, tmp_path: Path) -> None:
    """3.5 MiB in 1 MiB chunks through the hub's proxy and XSRF check."""
    upload = tmp_path / "fx_hub_upload.bin"
    upload.write_bytes(os.urandom(3 * MIB + MIB // 2))
    puts: list[int] = []
    page.on(
        "response",
        lambda r: (
            puts.append(r.status) if r.request.method == "PUT" and upload.name in r.url else None
        ),
    )
    page.locator("#upload-input").set_input_files(str(upload))
    page.locator(f"tr[data-path='{upload.name}']").wait_for()
    assert len(puts) == 4 and all(status in (200, 201) for status in puts), puts
    assert (Path(hub.user.home) / upload.name).read_bytes() == upload.read_bytes()


def run_through_proxied_websocket(nb: Any, hub: Hub) -> None:
    """Reload with a websocket listener: outputs must arrive over the hub-proxied socket."""
    frames: list[str] = []
    urls: list[str] = []

    def on_ws(ws: Any) -> None:
        urls.append(ws.url)
        ws.on("framereceived", lambda payload: frames.append(str(payload)))

    nb.on("websocket", on_ws)
    nb.reload()
    nb.wait_for_selector("#kernel-status[data-status=idle]", timeout=60000)
    nb.locator(".cell .cm-content").first.click()
    nb.keyboard.press("Control+a")
    nb.keyboard.type("import os; print('uid', os.getuid())")
    nb.keyboard.press("Shift+Enter")
    out = nb.locator(".cell").nth(0).locator(".output.stream")
    out.wait_for()
    assert out.inner_text().strip() == f"uid {hub.user.uid}"
    host = hub.url.removeprefix("http://")
    assert urls and all(
        u.startswith(f"ws://{host}/user/{hub.user.name}/api/kernels/") for u in urls
    ), urls
    assert any(f"uid {hub.user.uid}" in f for f in frames)


def test_login_spawn_and_run_a_notebook(hub: Hub, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    user = hub.user
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            ctx = browser.new_context(viewport={"width": 1280, "height": 900})
            ctx.set_default_timeout(30000)
            page = ctx.new_page()
            log_in(page, hub)
            upload_through_proxy(page, hub, tmp_path)
            shot(page, "tree")

            page.locator("summary", has_text="New").click()
            with ctx.expect_page() as new_page:
                page.locator("#new-menu button[data-kernel]").first.click()
            nb = new_page.value
            nb.wait_for_selector("#kernel-status[data-status=idle]", timeout=60000)
            run_through_proxied_websocket(nb, hub)
            # A PUT through the hub: passes only with the X-XSRFToken header the app sends.
            nb.keyboard.press("Escape")
            nb.keyboard.press("Control+s")
            nb.locator("#save-state:not(.dirty)").wait_for()
            path = nb.evaluate("window.minihubNotebook.path")
            assert (Path(user.home) / path).exists()
            shot(nb, "notebook")

            page.goto(hub.url + "/hub/home")
            page.locator("body").wait_for()
            assert user.name in page.content()
            shot(page, "home")
            page.goto(hub.url + "/hub/admin")
            page.get_by_text(user.name).first.wait_for()
            shot(page, "admin")
        finally:
            browser.close()
