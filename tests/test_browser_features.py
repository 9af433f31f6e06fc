"""Notebook editor features in real Chromium against a real user server and real kernels:
completion and inspection, display updates, checkpoints, autosave, kernels, SVG isolation.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_browser_notebook as base
from test_browser_notebook import Server, account, needs_browser, run_cell, user_server, wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

# One browser per module, on this module's own server.
browser = base.browser
context = base.context


@pytest.fixture(scope="module")
def server(make_system_user: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    needs_browser()
    user = make_system_user(account("mhfx_ft"))
    with user_server(user, tmp_path_factory.mktemp("mhfx") / "server.log") as srv:
        yield srv


def put_notebook(server: Server, path: str, sources: list[str]) -> None:
    cells = [
        {
            "id": f"c{i}",
            "cell_type": "code",
            "execution_count": None,
            "metadata": {},
            "source": src,
            "outputs": [],
        }
        for i, src in enumerate(sources)
    ]
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": cells}
    server.api("PUT", "api/contents/" + path, {"type": "notebook", "format": "json", "content": nb})


def open_new(context: Any, server: Server, path: str, sources: list[str] | None = None) -> Any:
    put_notebook(server, path, sources or [""])
    page = context.new_page()
    page.goto(server.url + "notebooks/" + path)
    wait_idle(page)
    return page


def type_in_cell(page: Any, index: int, text: str) -> None:
    """Click into cell `index`, move to its end and type as a person would."""
    page.locator(".cell .cm-content").nth(index).click()
    page.keyboard.press("Control+End")
    page.keyboard.type(text)


def source(page: Any, index: int) -> str:
    return str(page.evaluate("i => window.minihubNotebook.cells[i].source", index))


def test_tab_completion_and_shift_tab_inspection(context: Any, server: Server) -> None:
    page = open_new(context, server, "fx_complete.ipynb", [""])
    run_cell(page, 0, "mhfx_unique_name = 1\nmhfx_pair_alpha = 2\nmhfx_pair_beta = 3")

    # One match: Tab completes in place through complete_request.
    page.evaluate("() => window.minihubNotebook.insertCell(1, {cell_type: 'code', source: ''})")
    type_in_cell(page, 1, "mhfx_uni")
    page.keyboard.press("Tab")
    # The kernel's first completion loads jedi: seconds on a busy machine.
    page.wait_for_function(
        "() => window.minihubNotebook.cells[1].source === 'mhfx_unique_name'", timeout=60000
    )

    # Several matches: a list to pick from; Tab (or Enter) takes the highlighted one.
    page.keyboard.type("\nmhfx_pair_")
    page.keyboard.press("Tab")
    options = page.locator(".cm-tooltip-autocomplete li")
    options.first.wait_for()
    labels = sorted(options.all_inner_texts())
    assert labels == ["mhfx_pair_alpha", "mhfx_pair_beta"]
    page.keyboard.press("ArrowDown")
    chosen = page.locator(".cm-tooltip-autocomplete li[aria-selected=true]").inner_text()
    page.keyboard.press("Enter")
    page.wait_for_function(
        "s => window.minihubNotebook.cells[1].source.endsWith('\\n' + s)", arg=chosen
    )
    assert page.locator(".cm-tooltip-autocomplete").count() == 0

    # Tab at the start of a line still indents.
    page.keyboard.type("\n")
    page.keyboard.press("Tab")
    assert source(page, 1).endswith("\n    ")

    # Shift-Tab after a name shows the kernel's documentation of it.
    page.keyboard.type("len(")
    page.keyboard.press("Shift+Tab")
    doc = page.locator(".cell").nth(1).locator(".inspect")
    doc.wait_for()
    assert "Return the number of items in a container" in doc.inner_text()
    page.keyboard.press("Escape")
    assert doc.is_hidden()


def outputs_of(page: Any, index: int) -> list[dict[str, Any]]:
    return list(page.evaluate("i => window.minihubNotebook.cells[i].toJSON().outputs", index))


def watch_output_count(page: Any, index: int) -> None:
    """Record the fewest and most outputs cell `index` shows once it has shown one."""
    page.evaluate(
        """i => {
        const el = window.minihubNotebook.cells[i].outputsEl;
        window.mhfxCounts = {min: Infinity, max: 0};
        new MutationObserver(() => {
            const n = el.querySelectorAll(":scope > .output").length;
            if (n) window.mhfxCounts.max = Math.max(window.mhfxCounts.max, n);
            if (window.mhfxCounts.max) window.mhfxCounts.min = Math.min(window.mhfxCounts.min, n);
        }).observe(el, {childList: true});
    }""",
        index,
    )


def test_clear_output_wait_and_update_display(context: Any, server: Server) -> None:
    page = open_new(context, server, "fx_display.ipynb", [""] * 3)

    # clear_output(wait=True): each step replaces the last, the area never blinks empty.
    watch_output_count(page, 0)
    run_cell(
        page,
        0,
        "import time\nfrom IPython.display import clear_output\n"
        "for i in range(15):\n    clear_output(wait=True)\n"
        "    print(f'step {i}')\n    time.sleep(0.02)",
    )
    assert page.evaluate("window.mhfxCounts") == {"min": 1, "max": 1}
    assert outputs_of(page, 0) == [{"output_type": "stream", "name": "stdout", "text": "step 14\n"}]

    # A display handle updated in place, then a print after it.
    watch_output_count(page, 1)
    run_cell(
        page,
        1,
        "from IPython.display import display\n"
        "h = display('progress 0', display_id=True)\n"
        "for i in range(1, 11):\n    time.sleep(0.02)\n"
        "    h.update(f'progress {i}')\nprint('done')",
    )
    assert page.evaluate("window.mhfxCounts") == {"min": 1, "max": 2}
    cell = page.locator(".cell").nth(1)
    assert cell.locator(".output").nth(0).inner_text().strip() == "'progress 10'"
    assert cell.locator(".output").nth(1).inner_text().strip() == "done"

    # An update from another cell reaches the output where the handle was displayed.
    run_cell(page, 2, "h.update('updated from cell 3')")
    cell.locator(".output", has_text="updated from cell 3").wait_for()
    assert outputs_of(page, 2) == []
    assert outputs_of(page, 1)[0]["data"] == {"text/plain": "'updated from cell 3'"}

    # A progress bar drawn with "\r" in many chunks keeps one line, not every frame.
    run_cell(
        page,
        2,
        "import sys\nfor i in range(200):\n"
        "    sys.stdout.write(f'\\r{i:3d}%'); sys.stdout.flush()\n"
        "    time.sleep(0.002)\nprint(' finished')",
    )
    stream = outputs_of(page, 2)
    assert stream == [{"output_type": "stream", "name": "stdout", "text": "199% finished\n"}]
    held = page.evaluate("window.minihubNotebook.cells[2].outputs[0].text")
    assert len(held) < 40, held


def disk_sources(server: Server, path: str) -> list[str]:
    model = server.api("GET", "api/contents/" + path)
    return ["".join(c["source"]) for c in model["content"]["cells"]]


def set_source(page: Any, index: int, text: str) -> None:
    page.evaluate("([i, t]) => window.minihubNotebook.cells[i].setSource(t)", [index, text])


def save_with_ctrl_s(page: Any) -> None:
    page.keyboard.press("Escape")
    page.keyboard.press("Control+s")


def test_checkpoint_save_and_revert(context: Any, server: Server) -> None:
    path = "fx_checkpoint.ipynb"
    page = open_new(context, server, path, ["first version"])
    save_with_ctrl_s(page)  # save and checkpoint, as Jupyter's Ctrl-S
    page.locator("#save-state:not(.dirty)").wait_for()
    page.wait_for_function("() => !window.minihubNotebook.saving")
    checkpoints = server.api("GET", f"api/contents/{path}/checkpoints")
    assert [c["id"] for c in checkpoints] == ["checkpoint"]

    # A later version reaches the disk by autosave, which makes no checkpoint.
    set_source(page, 0, "second version")
    page.evaluate("window.minihubNotebook.save(false, true)")
    page.locator("#save-state:not(.dirty)").wait_for()
    assert disk_sources(server, path) == ["second version"]

    page.locator("summary", has_text="File").click()
    page.locator("[data-action=revert]").click()
    page.locator(".modal", has_text="Revert to the checkpoint").wait_for()
    page.locator(".modal button", has_text="Revert").click()
    page.wait_for_function("() => window.minihubNotebook.cells[0].source === 'first version'")
    assert disk_sources(server, path) == ["first version"]
    page.locator("#save-state:not(.dirty)").wait_for()


def test_warns_when_the_file_changed_on_disk(context: Any, server: Server) -> None:
    path = "fx_ondisk.ipynb"
    page = open_new(context, server, path, ["opened version"])
    put_notebook(server, path, ["changed behind the page's back"])
    set_source(page, 0, "the page's version")

    save_with_ctrl_s(page)
    dialog = page.locator(".modal", has_text="changed on disk")
    dialog.wait_for()
    page.locator(".modal button", has_text="Cancel").click()
    dialog.wait_for(state="detached")
    assert disk_sources(server, path) == ["changed behind the page's back"]
    page.locator("#save-state.dirty").wait_for()

    # Autosave never overwrites it either; it says why and waits for a person.
    page.evaluate("window.minihubNotebook.save(false, true)")
    page.locator("#notice.error", has_text="changed on disk").wait_for()
    assert disk_sources(server, path) == ["changed behind the page's back"]

    save_with_ctrl_s(page)
    dialog.wait_for()
    page.locator(".modal button", has_text="Overwrite").click()
    page.locator("#save-state:not(.dirty)").wait_for()
    assert disk_sources(server, path) == ["the page's version"]

    # Saved now: the next save asks nothing.
    set_source(page, 0, "and again")
    save_with_ctrl_s(page)
    page.locator("#save-state:not(.dirty)").wait_for()
    assert disk_sources(server, path) == ["and again"]


def install_kernelspec(server: Server, name: str, display_name: str) -> None:
    """A second Python kernelspec in the user's own Jupyter data dir, marked by its env."""
    folder = Path(server.home) / ".local/share/jupyter/kernels" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": display_name,
                "language": "python",
                "env": {"MHFX_KERNEL": name},
            }
        )
    )
    owner = os.stat(server.home)
    for p in [folder, *folder.parents]:
        if p == Path(server.home):
            break
        os.chown(p, owner.st_uid, owner.st_gid)
    os.chown(folder / "kernel.json", owner.st_uid, owner.st_gid)


def test_change_kernel(context: Any, server: Server) -> None:
    install_kernelspec(server, "mhfx_second", "Python (mhfx second)")
    path = "fx_kernel.ipynb"
    page = open_new(context, server, path, [""])
    which = "import os\nprint(os.environ.get('MHFX_KERNEL', 'default'))"
    assert run_cell(page, 0, which).locator(".output").inner_text().strip() == "default"
    old = server.api("GET", "api/sessions")
    old_kernel = next(s["kernel"]["id"] for s in old if s["path"] == path)

    page.locator("summary", has_text="Kernel").click()
    page.locator("[data-action=change-kernel]").click()
    page.locator(".modal select").wait_for()
    choices = page.locator(".modal select option").all_inner_texts()
    assert "Python (mhfx second)" in choices and len(choices) >= 2
    page.locator(".modal select").select_option("mhfx_second")
    page.locator(".modal button", has_text="OK").click()
    page.locator("#kernel-name", has_text="Python (mhfx second)").wait_for()
    wait_idle(page)
    assert run_cell(page, 0, which).locator(".output").inner_text().strip() == "mhfx_second"

    session = next(s for s in server.api("GET", "api/sessions") if s["path"] == path)
    assert session["kernel"]["name"] == "mhfx_second"
    assert old_kernel not in {k["id"] for k in server.api("GET", "api/kernels")}
    save_with_ctrl_s(page)
    page.locator("#save-state:not(.dirty)").wait_for()
    meta = server.api("GET", "api/contents/" + path)["content"]["metadata"]
    assert meta["kernelspec"]["name"] == "mhfx_second"


def test_autosave_when_dirty(context: Any, server: Server) -> None:
    path = "fx_autosave.ipynb"
    put_notebook(server, path, [""])
    page = context.new_page()
    # The page-level setting that shortens Jupyter's two minutes.
    page.add_init_script("window.minihubSettings = {autosaveSeconds: 0.5}")  # its least
    page.goto(server.url + "notebooks/" + path)
    wait_idle(page)

    type_in_cell(page, 0, "saved without asking")
    page.wait_for_function("() => !window.minihubNotebook.dirty", timeout=30000)
    assert disk_sources(server, path) == ["saved without asking"]
    # The session's first save checkpoints the file as it was opened (issue 12 item 3).
    assert [c["id"] for c in server.api("GET", f"api/contents/{path}/checkpoints")] == [
        "checkpoint"
    ]
    assert page.locator("#save-state").inner_text().startswith("Saved")

    # Changed behind its back: autosave stops, says so once, and keeps the other version.
    put_notebook(server, path, ["someone else's version"])
    type_in_cell(page, 0, " and more")
    page.locator("#notice.error", has_text="autosave is paused").wait_for()
    page.wait_for_timeout(1250)  # two more autosave ticks: still nothing written
    assert disk_sources(server, path) == ["someone else's version"]
    assert page.evaluate("window.minihubNotebook.dirty")

    # A person's save decides; autosave then carries on.
    save_with_ctrl_s(page)
    page.locator(".modal button", has_text="Overwrite").click()
    page.locator("#save-state:not(.dirty)").wait_for()
    type_in_cell(page, 0, "!")
    page.wait_for_function("() => !window.minihubNotebook.dirty", timeout=30000)
    assert disk_sources(server, path) == ["saved without asking and more!"]
