"""A course link in real Chromium: a logged-out student clicks an nbgitpuller link, logs
in, watches the pull (git's own output on the page) and lands on the notebook; a link to a
branch that does not exist stays on the page and says why."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from helpers import Hub, fill_login, hub_process
from test_browser_notebook import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, account, needs_browser
from test_course import GitServer, course_files

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


@pytest.fixture
def hub(data_dir: str, tmp_path: Path, make_system_user: Any) -> Iterator[tuple[Hub, GitServer]]:
    needs_browser()
    user = make_system_user(account("mhbc_stu"))
    git = GitServer(tmp_path / "git")
    git.base.mkdir()
    git.create("course", course_files())
    git.start()
    toml = tmp_path / "minihub.toml"
    toml.write_text("[hub]\ncleanup_servers = true\n")
    try:
        with hub_process(toml, data_dir, tmp_path / "hub.log") as url:
            yield Hub(url, user), git
    finally:
        git.stop()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"course-{name}.png"), full_page=True)


def test_a_logged_out_student_follows_a_git_pull_link_to_the_notebook(hub: Any) -> None:
    from playwright.sync_api import expect, sync_playwright

    h, git = hub
    query = {"repo": git.url("course"), "urlpath": "notebooks/course/intro.ipynb"}
    link = f"{h.url}/hub/user-redirect/git-pull?{urlencode(query)}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            streamed: list[str] = []
            page.on(
                "response",
                lambda r: streamed.append(r.url) if "/git-pull/api?" in r.url else None,
            )
            page.goto(link)
            page.wait_for_url("**/hub/login?next=**")
            fill_login(page, h.user)
            # the server starts, the pull streams, then the notebook opens
            page.wait_for_url(f"**/user/{h.user.name}/notebooks/course/intro.ipynb", timeout=90000)
            expect(page.locator("body")).to_contain_text("Week 1", timeout=30000)
            shot(page, "notebook")
            assert streamed, "the page did not read the pull's event stream"
            assert (Path(h.user.home) / "course" / "intro.ipynb").exists()

            # a broken link: the page stays, shows git's output and the reason
            bad = {"repo": git.url("course"), "branch": "week9"}
            page.goto(f"{h.url}/hub/user-redirect/git-pull?{urlencode(bad)}")
            expect(page.locator("#gitpull-error")).to_contain_text(
                "no branch 'week9' (its branches: main)", timeout=30000
            )
            expect(page.locator("#gitpull-log")).to_contain_text("$ git ls-remote")
            expect(page.locator("#gitpull-actions")).to_be_visible()
            shot(page, "error")
        finally:
            browser.close()
