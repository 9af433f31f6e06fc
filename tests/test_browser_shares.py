"""The Share dialog in real Chromium: alice shares her server with bob, bob opens it from
"Shared with me", alice revokes it; then alice makes a link and bob accepts it; then she
shares it with bob's group and revokes that."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import fill_login, hub_process, log_in
from test_browser_notebook import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, account, needs_browser

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

TOML = """[hub]
cleanup_servers = true

[[roles]]
name = "user"
scopes = ["self", "shares!user", "read:users:name", "read:groups:name"]
"""


@pytest.fixture
def hub(data_dir: str, tmp_path: Path, make_system_user: Any) -> Iterator[tuple[str, Any, Any]]:
    needs_browser()
    alice = make_system_user(account("mhbs_a"))
    bob = make_system_user(account("mhbs_b"))
    toml = tmp_path / "minihub.toml"
    toml.write_text(TOML + f'\n[[groups]]\nname = "lab"\nusers = ["{bob.name}"]\n')
    with hub_process(toml, data_dir, tmp_path / "hub.log") as url:
        yield url, alice, bob


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"shares-{name}.png"), full_page=True)


def test_share_dialog_shared_with_me_and_a_link(hub: tuple[str, Any, Any]) -> None:
    from playwright.sync_api import sync_playwright

    url, alice, bob = hub
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            a = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            b = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            for page in (a, b):
                page.set_default_timeout(30000)
            log_in(a, url, alice)  # her server runs now
            log_in(b, url, bob)

            # alice shares her default server with bob through the dialog
            a.goto(url + "/hub/home")
            a.locator("button.share-open[data-server='']").click()
            a.locator("#share-dialog").wait_for(state="visible")
            a.fill("#share-name", bob.name)
            a.click("#share-submit")
            a.locator(f"#share-list li.share[data-name='{bob.name}']").wait_for()
            shot(a, "dialog")

            # bob finds it under "Shared with me" and opens it
            b.goto(url + "/hub/home")
            row = b.locator(f"#shared-with-me tr[data-owner='{alice.name}']")
            row.wait_for()
            shot(b, "shared-with-me")
            row.locator("a.shared-open").click()
            b.wait_for_url(f"**/user/{alice.name}/tree/**")
            assert b.request.get(f"{url}/user/{alice.name}/api/status").status == 200

            # alice revokes: bob's next request is refused
            a.locator(f"#share-list li.share[data-name='{bob.name}'] button.revoke").click()
            a.locator("#share-list li.muted", has_text="Nobody yet.").wait_for()
            assert b.request.get(f"{url}/user/{alice.name}/api/status").status == 403

            # alice makes a link; bob accepts it and lands on her server
            a.click("#code-make")
            a.locator("#code-made").wait_for(state="visible")
            link = a.input_value("#code-url")
            assert "/hub/accept-share#code=" in link
            a.locator("#code-list li.code").first.wait_for()
            b.goto(link)
            b.locator("#accept-share").wait_for()
            shot(b, "accept")
            b.click("#accept")
            b.wait_for_url(f"**/user/{alice.name}/**")
            assert b.request.get(f"{url}/user/{alice.name}/api/status").status == 200
            a.reload()
            a.locator("button.share-open[data-server='']").click()
            a.locator(f"#share-list li.share[data-name='{bob.name}']").wait_for()
            a.locator("#code-list li.code", has_text="accepted once").wait_for()

            # bob leaves the share from his home page
            b.goto(url + "/hub/home")
            b.locator(f"#shared-with-me tr[data-owner='{alice.name}'] button.shared-leave").click()
            b.locator(f"#shared-with-me tr[data-owner='{alice.name}']").wait_for(state="detached")
            assert b.request.get(f"{url}/user/{alice.name}/api/status").status == 403

            # alice shares with the group lab (bob is in it), then revokes it
            a.goto(url + "/hub/home")
            a.locator("button.share-open[data-server='']").click()
            a.select_option("#share-kind", "group")
            a.fill("#share-name", "lab")
            a.click("#share-submit")
            a.locator("#share-list li.share[data-kind='group'][data-name='lab']").wait_for()
            b.goto(url + "/hub/home")
            row = b.locator(f"#shared-with-me tr[data-owner='{alice.name}']")
            assert "through the group lab" in row.inner_text()
            assert b.request.get(f"{url}/user/{alice.name}/api/status").status == 200
            a.locator("#share-list li.share[data-name='lab'] button.revoke").click()
            a.locator("#share-list li.muted", has_text="Nobody yet.").wait_for()
            assert b.request.get(f"{url}/user/{alice.name}/api/status").status == 403

            # logged out, the link survives the login (the code waits in the tab, never in
            # a URL the browser sends), then the page shows what it gives
            sent: list[str] = []
            fresh = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            fresh.set_default_timeout(30000)
            fresh.on("request", lambda r: sent.append(r.url))
            fresh.goto(link)
            fresh.wait_for_url("**/hub/login?next=**")
            fill_login(fresh, bob)
            fresh.locator("#accept-share").wait_for()
            assert alice.name in fresh.inner_text("#accept-share h1")
            code = link.split("#code=", 1)[1]
            assert sent and not [u for u in sent if code in u]
        finally:
            browser.close()
