"""The Slurm spawner in a real browser: a user logs in, chooses a profile on the spawn page,
watches the job wait in the queue (Slurm's reason) and start on the pending page, lands in
the notebook app served from the job and runs a cell in a kernel there (headless Chromium,
the real Slurm of tests/slurm_cluster.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import fill_login
from slurm_cluster import SlurmCluster, slurm_cluster_fixture  # noqa: F401 (a fixture)
from test_browser_notebook import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, needs_browser
from test_kube_browser import RECORD_PROGRESS
from test_slurm_spawner import PROFILES, SlurmHub

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]
NAME = "mhs_lea"


def test_choose_a_profile_wait_in_the_queue_and_run_a_cell_in_the_job(
    tmp_path: Path, slurm_cluster: SlurmCluster, make_system_user: Any
) -> None:
    needs_browser()
    from playwright.sync_api import sync_playwright

    make_system_user(NAME)
    hub = SlurmHub(tmp_path, PROFILES)
    hub.user(NAME)
    user = SimpleNamespace(name=NAME, password=f"pw-{NAME}-long-enough")
    # n3 (the "small" partition) is full: the job waits in the queue until this ends.
    blocker = slurm_cluster.sbatch("-p", "small", "-c", "8", "--mem=100M", "--wrap", "sleep 300")
    slurm_cluster.wait_state(blocker, {"RUNNING"})
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
                page.wait_for_url(f"**/hub/spawn/{NAME}**")  # profiles: the user chooses first
                form = page.locator("#spawn-form").inner_text()
                assert "Small node <n3>" in form and "time limit 0:30:00" in form, form
                # the partition's limits, from sinfo, which the hub asked at start-up
                assert "partition small (up to 1:00:00, 1 nodes of 8 CPUs" in form, form
                assert "Staff" not in form  # offered to the staff group only
                page.check("input[name=profile][value=small]")
                shot(page, "slurm-spawn-form")
                page.locator("#spawn-form button[type=submit]").click()
                page.locator(
                    "#progress-log li", has_text="waiting in the queue (Resources)"
                ).wait_for()
                shot(page, "slurm-spawn-pending")
                slurm_cluster.cancel(blocker)
                page.wait_for_url(f"**/user/{NAME}/tree/", timeout=90000)
                progress = page.evaluate("JSON.parse(sessionStorage.getItem('progress') || '[]')")
                out = run_a_cell(
                    page,
                    "import os; print(os.environ['SLURMD_NODENAME'], os.environ['SLURM_JOB_PARTITION'])",
                )
            finally:
                browser.close()
    finally:
        hub.stop()
        slurm_cluster.cancel(blocker)
        for job in slurm_cluster.run("squeue", "-h", "-u", NAME, "-o", "%i").split():
            slurm_cluster.cancel(job)
    assert out == "n3 small", out
    text = " | ".join(progress)
    assert "Submitting the job to Slurm (small)" in text, progress
    assert "waiting in the queue (Resources)" in text, progress
    assert "is running on n3" in text, progress
    assert progress.count("Server requested") == 1, progress  # each message once


def run_a_cell(page: Any, code: str) -> str:
    page.locator("#file-rows tr").first.wait_for()
    page.locator("summary", has_text="New").click()
    with page.context.expect_page() as new_page:
        page.locator("#new-menu button[data-kernel]").first.click()
    nb = new_page.value
    nb.wait_for_selector("#kernel-status[data-status=idle]", timeout=60000)
    nb.locator(".cell .cm-content").first.click()
    nb.keyboard.type(code)
    nb.keyboard.press("Shift+Enter")
    out = nb.locator(".cell").nth(0).locator(".output.stream")
    out.wait_for()
    shot(nb, "slurm-notebook")
    return str(out.inner_text()).strip()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
