"""Outputs a class expects, in real Chromium through a real hub, from a kernel of the user
environment (issue 16): a matplotlib plot as PNG and as SVG, a pandas table, an ipywidgets
widget as its text and a note, IPython's Audio and Video from files, the kernel menu."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Hub, hub_process, log_in
from test_browser_notebook import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    account,
    needs_browser,
    run_cell,
    wait_idle,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]
NOTEBOOK = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, make_system_user: Any) -> Iterator[Hub]:
    needs_browser()
    tmp = tmp_path_factory.mktemp("outputs")
    data = tmp / "data"
    data.mkdir(mode=0o711)
    user = make_system_user(account("mhfx_out"))
    nb = Path(user.home) / "class.ipynb"
    nb.write_text(json.dumps(NOTEBOOK))
    os.chown(nb, user.uid, user.gid)
    toml = tmp / "minihub.toml"
    toml.write_text('[hub]\ncleanup_servers = true\n[spawner]\nuser_env = "/opt/minihub/user"\n')
    with hub_process(toml, data, tmp / "hub.log") as url:
        yield Hub(url, user)


@pytest.fixture(scope="module")
def page(hub: Hub) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        ctx.set_default_timeout(30000)
        p = ctx.new_page()
        log_in(p, hub.url, hub.user)
        p.goto(f"{hub.url}/user/{hub.user.name}/notebooks/class.ipynb")
        wait_idle(p)
        try:
            yield p
        finally:
            ARTIFACTS.mkdir(exist_ok=True)
            p.screenshot(path=str(ARTIFACTS / "outputs.png"), full_page=True)
            browser.close()


# A media element's source and its duration in whole seconds, once its metadata has loaded
# (an error: "error N").
LOADED = """m => new Promise(ok => {
    const done = () => ok(m.error ? `error ${m.error.code}` : `${m.currentSrc} ${Math.round(m.duration)}`);
    if (m.readyState > 0 || m.error) done();
    else { m.addEventListener('loadedmetadata', done); m.addEventListener('error', done, true); }
})"""


def decoded(img: Any) -> int:
    """The width the browser decoded the image to (0: it could not)."""
    return int(img.evaluate("el => el.decode().then(() => el.naturalWidth, () => 0)"))


def test_numpy_pandas_matplotlib_png_and_svg(page: Any) -> None:
    cell = run_cell(
        page,
        0,
        "import numpy, pandas, matplotlib\nimport matplotlib.pyplot as plt\n"
        "plt.plot(numpy.arange(10) ** 2)\nplt.show()",
    )
    img = cell.locator(".output img")
    assert img.get_attribute("src").startswith("data:image/png;base64,")
    assert decoded(img) > 100
    cell = run_cell(
        page,
        1,
        "%config InlineBackend.figure_formats = ['svg']\nplt.plot([3, 1, 2])\nplt.show()",
    )
    assert cell.locator(".output").get_attribute("data-mime") == "image/svg+xml"
    frame = cell.frame_locator(".output-frame")
    assert frame.locator("svg path").count() > 3


def test_dataframe_is_a_table_in_the_sandbox(page: Any) -> None:
    cell = run_cell(page, 2, "pandas.DataFrame({'name': ['ada', 'bob'], 'score': [9.5, 7]})")
    assert cell.locator(".output-frame").get_attribute("sandbox") == "allow-scripts"
    table = cell.frame_locator(".output-frame").locator("table.dataframe")
    assert table.locator("td").all_inner_texts() == ["ada", "9.5", "bob", "7.0"]
    border = table.locator("td").first.evaluate("td => getComputedStyle(td).borderTopStyle")
    assert border == "solid"


def test_widget_shows_its_text_and_a_note(page: Any) -> None:
    cell = run_cell(page, 3, "import ipywidgets\nipywidgets.IntSlider(value=3, description='n')")
    out = cell.locator(".output")
    assert "IntSlider(value=3" in out.locator("pre").inner_text()
    assert "widget" in out.locator(".output-note").inner_text().lower()


def test_audio_and_video_from_files(page: Any, hub: Hub) -> None:
    code = (
        "import wave, numpy\n"
        "from IPython.display import Audio, Video, display\n"
        "with wave.open('tone.wav', 'wb') as w:\n"
        "    w.setnchannels(1); w.setsampwidth(2); w.setframerate(8000)\n"
        "    w.writeframes((numpy.sin(numpy.arange(8000) / 3) * 9000).astype('<i2').tobytes())\n"
        "open('clip.mp4', 'wb').write(b'\\0' * 64)\n"
        "display(Audio('tone.wav'), Video('clip.mp4', embed=True), Video('tone.wav'))"
    )
    cell = run_cell(page, 4, code)
    # Native elements of the page (a sandboxed frame's requests carry no cookie), only media.
    assert cell.locator(".output-frame").count() == 0
    audio = cell.locator(".output audio")
    assert audio.locator("source").get_attribute("src").startswith("data:audio/")
    assert audio.evaluate(LOADED).endswith(" 1")
    videos = cell.locator(".output video")
    assert videos.nth(0).locator("source").get_attribute("src").startswith("data:video/mp4;")
    # A file named relative to the notebook loads from its files/ URL, through the hub.
    assert videos.nth(1).evaluate(LOADED) == f"{hub.url}/user/{hub.user.name}/files/tone.wav 1"


def test_other_html_stays_in_the_sandbox(page: Any) -> None:
    cell = run_cell(
        page,
        5,
        "from IPython.display import HTML\nHTML('<video src=\"javascript:alert(1)\"></video>')",
    )
    assert cell.locator(".output video").count() == 0
    assert cell.locator(".output-frame").get_attribute("sandbox") == "allow-scripts"


def test_a_students_kernelspec_in_new_and_change_kernel(page: Any, hub: Hub) -> None:
    run_cell(
        page,
        6,
        "!python -m ipykernel install --user --name myenv --display-name 'My env' >/dev/null",
    )
    tree = page.context.new_page()
    tree.goto(f"{hub.url}/user/{hub.user.name}/tree/")
    tree.locator("summary", has_text="New").click()
    assert tree.locator("#new-menu button[data-kernel=myenv]").inner_text() == "Notebook: My env"
    tree.close()
    page.locator("summary", has_text="Kernel").click()
    page.locator("button[data-action=change-kernel]").click()
    select = page.locator("select[aria-label=Kernel]")
    select.locator("option", has_text="My env").wait_for(state="attached")  # filled by a fetch
    assert "My env" in select.locator("option").all_inner_texts()
    select.select_option("myenv")
    page.locator("button", has_text="OK").click()
    page.locator("#kernel-name", has_text="My env").wait_for()
    wait_idle(page)
    cell = run_cell(page, 7, "print(6 * 7)")
    assert cell.locator(".output pre").inner_text().strip() == "42"


def test_markdown_cannot_lay_itself_over_the_app(page: Any) -> None:
    """Markdown renders in the page itself (not the sandbox): its inline styles keep colour
    but lose what would lift it out of its cell over the whole app (a fake sign-in page)."""
    cover = (
        '<a class="cover" href="https://evil.example/" style="position:fixed;inset:0;'
        'z-index:2147483647;transform:scale(9);color:rgb(255, 0, 0)">Session expired</a>'
    )
    cell = run_cell(page, 8, f"from IPython.display import Markdown\nMarkdown({cover!r})")
    link = cell.locator(".output a.cover")
    style = link.evaluate(
        "el => { const s = getComputedStyle(el);"
        " return [s.position, s.zIndex, s.transform, s.color]; }"
    )
    assert style == ["static", "auto", "none", "rgb(255, 0, 0)"], style
