"""The Kubernetes spawner in a real browser: a student logs in, chooses a profile on the spawn
page, watches the pod's events on the pending page, lands in the notebook app served from the
pod and runs a cell in a kernel there (headless Chromium, the real test cluster)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import fill_login
from kube_cluster import KubeCluster
from test_browser_notebook import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, needs_browser
from test_kube_spawner import SIZES, KubeHub, password, profiles_toml

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

# Keeps what the pending page showed, across its redirect to the server (same origin).
RECORD_PROGRESS = """
document.addEventListener("DOMContentLoaded", () => {
  const log = document.getElementById("progress-log");
  if (!log) return;
  const keep = () => sessionStorage.setItem("progress",
    JSON.stringify([...log.querySelectorAll("li")].map(li => li.textContent)));
  keep();
  new MutationObserver(keep).observe(log, {childList: true});
});
"""


def test_choose_a_profile_and_run_a_cell_in_the_pod(
    tmp_path: Path, kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    needs_browser()
    from playwright.sync_api import sync_playwright

    hub = KubeHub(tmp_path, kube_cluster, kube_namespace)
    hub.toml.write_text(hub.toml.read_text() + profiles_toml(SIZES) + "\n")
    hub.user("kleo")
    user = SimpleNamespace(name="kleo", password=password("kleo"))
    try:
        hub.start()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
                page.set_default_timeout(60000)
                page.add_init_script(RECORD_PROGRESS)
                page.goto(hub.url + "/hub/login")
                fill_login(page, user)
                page.wait_for_url("**/hub/spawn/kleo**")  # profiles: the user chooses first
                page.check("input[name=profile][value=large]")
                page.select_option("select[name='profile-option-large--cpus']", "half")
                shot(page, "kube-spawn-form")
                page.locator("#spawn-form button[type=submit]").click()
                page.wait_for_url("**/user/kleo/tree/", timeout=120000)
                progress = page.evaluate("JSON.parse(sessionStorage.getItem('progress') || '[]')")
                run_a_cell(page)
            finally:
                browser.close()
    finally:
        hub.stop()
    text = " | ".join(progress)
    assert "Creating pod jupyter-kleo (large)" in text, progress
    assert "Scheduled" in text, progress  # the pod's own events, on the pending page
    limits = hub.pod_of("kleo")["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "500m", "memory": str(700 << 20)}


def run_a_cell(page: Any) -> None:
    page.locator("#file-rows tr").first.wait_for()
    page.locator("summary", has_text="New").click()
    with page.context.expect_page() as new_page:
        page.locator("#new-menu button[data-kernel]").first.click()
    nb = new_page.value
    nb.wait_for_selector("#kernel-status[data-status=idle]", timeout=60000)
    nb.locator(".cell .cm-content").first.click()
    nb.keyboard.type("import os, socket; print('uid', os.getuid(), 'in', socket.gethostname())")
    nb.keyboard.press("Shift+Enter")
    out = nb.locator(".cell").nth(0).locator(".output.stream")
    out.wait_for()
    assert out.inner_text().startswith("uid 1000 in"), out.inner_text()
    shot(nb, "kube-notebook")


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
