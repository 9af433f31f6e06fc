"""The admin page's groups in real Chromium: create a group, paste a class list (an unknown
name is reported), remove a member, delete the group; each user's row shows their groups."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Hub, fill_login, hub_process
from test_browser_notebook import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, account, needs_browser

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


@pytest.fixture
def hub(data_dir: str, tmp_path: Path, make_system_user: Any) -> Iterator[Hub]:
    needs_browser()
    user = make_system_user(account("mhbg_adm"))
    toml = tmp_path / "minihub.toml"
    toml.write_text(f'[hub]\ncleanup_servers = true\n[auth]\nadmin_users = ["{user.name}"]\n')
    with hub_process(toml, data_dir, tmp_path / "hub.log") as url:
        yield Hub(url, user)


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"groups-{name}.png"), full_page=True)


def row_groups(page: Any, name: str) -> str:
    return str(page.locator(f"#users tr[data-user='{name}'] td.groups").inner_text()).strip()


def test_admin_manages_a_group_from_a_class_list(hub: Hub) -> None:
    from playwright.sync_api import expect, sync_playwright

    students = ["mhbg_s1", "mhbg_s2", "mhbg_s3"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(hub.url + "/hub/login?next=%2Fhub%2Fadmin")
            fill_login(page, hub.user)
            page.wait_for_url("**/hub/admin")
            expect(page.locator("#groups")).to_contain_text("No groups yet.")

            page.fill("textarea[name=usernames]", "\n".join(students))
            page.click("#add-users")
            expect(page.locator(".notice")).to_contain_text("Added 3 user(s)")

            page.fill("#new-group input[name=name]", "cs 101")
            page.click("#new-group button")
            group = page.locator("div.group[data-group='cs 101']")
            expect(group).to_contain_text("No members yet.")

            # a class list as a teacher pastes it: commas, spaces, lines, a name too many
            group.locator("textarea[name=users]").fill("MHBG_S1, mhbg_s2\nmhbg_s3  mhbg_nobody")
            group.locator("button.add-members").click()
            expect(page.locator(".notice")).to_contain_text("Added 3 to cs 101")
            expect(page.locator(".error")).to_contain_text("mhbg_nobody")
            shot(page, "class-list")
            group = page.locator("div.group[data-group='cs 101']")
            for s in students:
                expect(group.locator(f"li[data-member='{s}']")).to_be_visible()
                assert row_groups(page, s) == "cs 101"
            expect(group.locator("li[data-member='mhbg_nobody']")).to_have_count(0)

            group.locator("li[data-member='mhbg_s2'] button").click()
            expect(page.locator(".notice")).to_contain_text("Removed mhbg_s2 from cs 101")
            group = page.locator("div.group[data-group='cs 101']")
            expect(group.locator("li[data-member='mhbg_s2']")).to_have_count(0)
            assert row_groups(page, "mhbg_s2") == ""
            assert row_groups(page, "mhbg_s1") == "cs 101"

            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))
            group.locator("button.danger").click()
            expect(page.locator(".notice")).to_contain_text("Deleted group cs 101")
            assert dialogs and "cs 101" in dialogs[0]
            expect(page.locator("div.group")).to_have_count(0)
            assert row_groups(page, "mhbg_s1") == ""
            shot(page, "deleted")
        finally:
            browser.close()
