"""Issue 12 item 3: one bad cell made autosave delete the cells after it.

A markdown link with a malformed %-escape (`[y](%zz)`) stopped the notebook page's load after
the cells before it; the page stayed dirty and autosave wrote only those cells, with no
checkpoint. Here, in real Chromium through a real hub (PAM login, spawned server, proxy):
every cell shows whatever one of them holds, the bad one shows a readable error, a save
keeps every cell on disk, a checkpoint is made before the first save of a session, a page
that failed to load never saves, and a save that would drop cells the page loaded is refused.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Hub, hub_process, log_in
from test_browser_notebook import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, account, needs_browser

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def hub(make_system_user: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    needs_browser()
    user = make_system_user(account("mhas"))
    tmp = tmp_path_factory.mktemp("mhas")
    toml = tmp / "minihub.toml"
    toml.write_text("[hub]\ncleanup_servers = true\n")
    log = tmp / "hub.log"
    with hub_process(toml, tmp / "data", log) as url:
        yield Hub(url, user)
        # Bad notebooks are 4xx with a message, never a server error, in the hub or the server.
        logs = [log, *(tmp / "data").rglob("*.log")]
        for f in logs:
            assert "Traceback" not in f.read_text(errors="replace"), f


@pytest.fixture(scope="module")
def context(hub: Hub) -> Iterator[Any]:
    """One browser logged in through /hub/login (real PAM), its server spawned."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            ctx = browser.new_context(viewport={"width": 1280, "height": 900})
            ctx.set_default_timeout(30000)
            page = ctx.new_page()
            log_in(page, hub.url, hub.user)
            page.close()
            yield ctx
        finally:
            browser.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"attack-autosave-{name}.png"), full_page=True)


def cell(kind: str, source: Any, **more: Any) -> dict[str, Any]:
    c: dict[str, Any] = {
        "id": f"c{abs(hash((kind, str(source)))) % 10**8}",
        "cell_type": kind,
        "metadata": {},
        "source": source,
    }
    if kind == "code":
        c.update(execution_count=None, outputs=[])
    c.update(more)
    return c


def notebook(cells: list[Any], **metadata: Any) -> dict[str, Any]:
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": metadata, "cells": cells}


def write_file(hub: Hub, name: str, data: bytes) -> Path:
    """Put a file in the user's home as the user owns it (the page saves it as the user)."""
    path = Path(hub.user.home) / name
    path.write_bytes(data)
    os.chown(path, hub.user.uid, hub.user.gid)
    return path


def write_nb(hub: Hub, name: str, nb: dict[str, Any]) -> Path:
    return write_file(hub, name, json.dumps(nb, indent=1).encode())


def nb_cells(data: bytes) -> list[Any]:
    """The cells as nbformat reads them (it writes sources as lists of lines)."""
    import nbformat

    cells: list[Any] = nbformat.reads(data.decode(), as_version=4)["cells"]
    return cells


def disk_cells(path: Path) -> list[Any]:
    return nb_cells(path.read_bytes())


def checkpoint_file(path: Path) -> Path:
    return path.parent / ".ipynb_checkpoints" / f"{path.stem}-checkpoint{path.suffix}"


class Opened:
    """A notebook page and the state-changing requests it sent, in order."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.writes: list[tuple[str, str]] = []
        page.on("request", self._seen)

    def _seen(self, request: Any) -> None:
        if request.method in ("PUT", "POST", "PATCH", "DELETE") and "/api/contents/" in request.url:
            kind = "checkpoint" if "/checkpoints" in request.url else "save"
            self.writes.append((request.method, kind))

    def saves(self) -> int:
        return sum(1 for method, kind in self.writes if kind == "save")


def open_nb(ctx: Any, hub: Hub, name: str, autosave: float | None = None, init: str = "") -> Opened:
    page = ctx.new_page()
    if autosave:
        page.add_init_script(f"window.minihubSettings = {{autosaveSeconds: {autosave}}}")
    if init:
        page.add_init_script(init)
    opened = Opened(page)
    page.goto(f"{hub.url}/user/{hub.user.name}/notebooks/{name}")
    # Loaded and its kernel up, or the load failed (then no kernel is started).
    page.wait_for_selector("#kernel-status[data-status=idle], .load-error", timeout=60000)
    return opened


def cell_count(page: Any) -> int:
    return int(page.evaluate("window.minihubNotebook.cells.length"))


def type_in_first_cell(page: Any, text: str) -> None:
    page.locator(".cell .cm-content").first.click()
    page.keyboard.press("Control+End")
    page.keyboard.type(text)
    page.keyboard.press("Escape")


def autosave_now(page: Any) -> None:
    """The autosave path itself (the interval's callback), without waiting for the interval."""
    page.evaluate("() => window.minihubNotebook.save(false, true)")
    page.wait_for_function("() => !window.minihubNotebook.saving")


THE_ATTACK = [
    cell("code", "a = 1"),
    cell("markdown", "see [y](%zz) here"),
    cell("markdown", "# the third cell"),
    cell("code", "print('fourth')"),
]


def test_bad_link_then_autosave_keeps_all_four_cells(context: Any, hub: Hub) -> None:
    path = write_nb(hub, "mhas_attack.ipynb", notebook(THE_ATTACK))
    original = path.read_bytes()
    nb = open_nb(context, hub, path.name, autosave=0.5)
    page = nb.page
    cells = page.locator(".cell")
    assert cells.count() == 4 and cell_count(page) == 4
    # The bad link shows as a link (its href left as written); the cells after it render.
    assert cells.nth(1).locator(".rendered").inner_text().strip() == "see y here"
    # A link to a file literally named "%zz", as the escape cannot be decoded.
    assert cells.nth(1).locator(".rendered a").get_attribute("href").endswith("/files/%25zz")
    assert cells.nth(2).locator(".rendered h1").inner_text() == "the third cell"
    assert "print('fourth')" in cells.nth(3).inner_text()
    shot(page, "bad-link-opened")

    type_in_first_cell(page, "  # edited")
    page.wait_for_function("() => !window.minihubNotebook.dirty", timeout=30000)  # autosave
    on_disk = disk_cells(path)
    assert [c["source"] for c in on_disk] == ["a = 1  # edited"] + [
        c["source"] for c in THE_ATTACK[1:]
    ]
    # A checkpoint of the file as it was was made before the first save, and only then.
    assert nb.writes[:2] == [("POST", "checkpoint"), ("PUT", "save")]
    assert json.loads(checkpoint_file(path).read_bytes()) == json.loads(original)
    type_in_first_cell(page, "!")
    page.wait_for_function("() => !window.minihubNotebook.dirty", timeout=30000)
    assert [k for _, k in nb.writes].count("checkpoint") == 1
    assert json.loads(checkpoint_file(path).read_bytes()) == json.loads(original)
    assert len(disk_cells(path)) == 4
    shot(page, "bad-link-saved")
    page.close()


# Each: (name, the bad cell, whether the notebook is valid nbformat, text the page shows for it).
# A valid notebook must save with the bad cell unchanged; an invalid one is refused by the
# server as a whole, so the file keeps every cell either way.
BAD_CELLS: list[tuple[str, Any, bool, str]] = [
    ("bad-image-escape", cell("markdown", "![pic](%zz.png) and [ok](a%20b.txt)"), True, "and ok"),
    ("bad-utf8-escape", cell("markdown", "[bytes](%ED%A0%80.txt)"), True, "bytes"),
    (
        "broken-katex",
        cell("markdown", "$\\frac{1}{$ and $$" + "{" * 3000 + "x$$ and $x^2$"),
        True,
        "and",
    ),
    ("placeholder-text", cell("markdown", "MHMATH7X stays and $y$"), True, "MHMATH7X stays"),
    (
        "stream-name-with-space",
        cell(
            "code",
            "print(1)",
            outputs=[{"output_type": "stream", "name": "std out", "text": "streamed text"}],
        ),
        True,
        "streamed text",
    ),
    (
        "vendor-json-output",
        cell(
            "code",
            "x",
            outputs=[
                {
                    "output_type": "display_data",
                    "metadata": {},
                    "data": {"application/vnd.mhas+json": {"answer": 42}},
                }
            ],
        ),
        True,
        '"answer": 42',
    ),
    (
        "markdown-output-bad-link",
        cell(
            "code",
            "x",
            outputs=[
                {
                    "output_type": "display_data",
                    "metadata": {},
                    "data": {"text/markdown": "out [y](%zz)"},
                }
            ],
        ),
        True,
        "out y",
    ),
    (
        "huge-output",
        cell(
            "code",
            "x",
            outputs=[
                {"output_type": "stream", "name": "stdout", "text": "0123456789\n" * 3_000_000}
            ],
        ),
        True,
        "not shown",
    ),
    (
        "many-outputs",
        cell(
            "code",
            "x",
            outputs=[
                {
                    "output_type": "stream",
                    "name": "stderr" if i % 2 else "stdout",
                    "text": f"o{i}\n",
                }
                for i in range(5000)
            ],
        ),
        True,
        "not shown",
    ),
    (
        "weird-metadata",
        cell(
            "markdown",
            "meta",
            metadata={
                "__proto__": {"polluted": True},
                "constructor": "x",
                "toString": 5,
                "scrolled": "auto",
                "vendor": {"deep": [[[[1]]]]},
            },
        ),
        True,
        "meta",
    ),
    (
        "png-not-text",
        cell(
            "code",
            "x",
            outputs=[{"output_type": "display_data", "metadata": {}, "data": {"image/png": 123}}],
        ),
        False,
        "could not be shown",
    ),
    (
        "traceback-not-list",
        cell(
            "code",
            "x",
            outputs=[
                {"output_type": "error", "ename": "E", "evalue": "v", "traceback": "not a list"}
            ],
        ),
        False,
        "could not be shown",
    ),
    ("source-a-number", cell("code", 42), False, "source is not text"),
    ("source-an-object", cell("markdown", {"text": "hi"}), False, "source is not text"),
    ("unknown-cell-type", cell("widget", "what am I"), False, "unknown cell type"),
]

# Cells nbformat cannot even read: the server answers 400, so the page's load fails.
UNREADABLE_CELLS = {
    "outputs-not-a-list": cell("code", "x", outputs="nope"),
    "cell-null": None,
    "cell-a-string": "just a string",
    "metadata-a-list": cell("raw", "r", metadata=[1, 2]),
}


@pytest.mark.parametrize("name, bad, valid, shown", BAD_CELLS, ids=[b[0] for b in BAD_CELLS])
def test_one_bad_cell_never_stops_the_others_nor_the_save(
    context: Any, hub: Hub, name: str, bad: Any, valid: bool, shown: str
) -> None:
    cells = [cell("markdown", f"**before** {name}"), bad, cell("code", f"after = '{name}'")]
    path = write_nb(hub, f"mhas_{name}.ipynb", notebook(cells))
    original = path.read_bytes()
    nb = open_nb(context, hub, path.name)
    page = nb.page
    shown_cells = page.locator(".cell")
    assert shown_cells.count() == 3 and cell_count(page) == 3
    assert shown_cells.nth(0).locator(".rendered strong").inner_text() == "before"
    assert f"after = '{name}'" in shown_cells.nth(2).inner_text()
    assert shown in shown_cells.nth(1).inner_text()
    assert page.evaluate("() => ({}).polluted === undefined")
    if name in ("bad-link", "bad-image-escape", "bad-utf8-escape"):
        assert shown_cells.nth(1).locator(".render-error").count() == 0
    shot(page, name)

    page.evaluate("() => window.minihubNotebook.changed()")  # dirty, as any edit makes it
    autosave_now(page)
    assert nb.saves() == 1
    if valid:
        page.locator("#save-state:not(.dirty)").wait_for()
        assert disk_cells(path) == nb_cells(original)  # every cell, the bad one unchanged
    else:
        # The server refuses an invalid notebook; the page says so and stays dirty.
        page.locator("#notice.error", has_text="invalid").wait_for()
        assert path.read_bytes() == original
        assert page.evaluate("window.minihubNotebook.dirty")
    page.close()


def test_weird_notebook_metadata_opens_and_saves(context: Any, hub: Hub) -> None:
    cells = [cell("markdown", "one"), cell("code", "two"), cell("raw", "three")]
    # A kernel that is not installed, a prototype-named key, deep vendor data: all valid.
    path = write_nb(
        hub,
        "mhas_nbmeta.ipynb",
        notebook(
            cells,
            kernelspec={"name": "mhas-no-such-kernel", "display_name": "Nope", "language": 7},
            language_info={"name": "python", "__proto__": {"polluted": True}},
            widgets={"deep": [[[[{"x": 1}]]]]},
        ),
    )
    before = json.loads(path.read_bytes())
    nb = open_nb(context, hub, path.name)
    assert cell_count(nb.page) == 3
    assert nb.page.evaluate("() => ({}).polluted === undefined")
    nb.page.locator("#notice.error", has_text="mhas-no-such-kernel").wait_for()
    nb.page.evaluate("() => window.minihubNotebook.changed()")
    autosave_now(nb.page)
    nb.page.locator("#save-state:not(.dirty)").wait_for()
    after = json.loads(path.read_bytes())
    assert nb_cells(path.read_bytes()) == nb_cells(json.dumps(before).encode())
    assert after["metadata"]["widgets"] == before["metadata"]["widgets"]
    assert after["metadata"]["language_info"] == before["metadata"]["language_info"]
    nb.page.close()


LOAD_FAILURES = [
    ("unreadable-json", b'{"cells": [{"cell_type": "code", "source": "x"', ""),
    (
        "cells-not-a-list",
        json.dumps(
            {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": {"a": cell("code", "x")}}
        ).encode(),
        "",
    ),
    # Any exception while the page builds itself, after every cell was inserted.
    (
        "exception-during-load",
        json.dumps(notebook(copy.deepcopy(THE_ATTACK))).encode(),
        "Element.prototype.scrollIntoView = function () { throw new Error('injected'); };",
    ),
] + [
    (name, json.dumps(notebook([cell("markdown", "before"), bad])).encode(), "")
    for name, bad in UNREADABLE_CELLS.items()
]


@pytest.mark.parametrize("name, data, init", LOAD_FAILURES, ids=[f[0] for f in LOAD_FAILURES])
def test_a_notebook_that_failed_to_load_is_never_written(
    context: Any, hub: Hub, name: str, data: bytes, init: str
) -> None:
    path = write_file(hub, f"mhas_fail_{name}.ipynb", data)
    nb = open_nb(context, hub, path.name, autosave=0.5, init=init)
    page = nb.page
    page.locator(".load-error").wait_for()
    assert "will not be saved" in page.locator(".load-error").inner_text()
    page.keyboard.press("Control+s")
    page.locator("#notice.error", has_text="not saved").wait_for()
    page.evaluate("() => window.minihubNotebook.changed()")
    autosave_now(page)
    page.wait_for_timeout(1500)  # three autosave ticks
    shot(page, f"load-failed-{name}")
    assert nb.writes == [] and path.read_bytes() == data
    assert not checkpoint_file(path).exists()
    page.close()


def test_a_save_that_drops_loaded_cells_is_refused(context: Any, hub: Hub) -> None:
    path = write_nb(hub, "mhas_drop.ipynb", notebook(copy.deepcopy(THE_ATTACK)))
    original = path.read_bytes()
    nb = open_nb(context, hub, path.name)
    page = nb.page
    # A cell leaves the page's model without a person deleting it (what the bad link did).
    page.evaluate(
        "() => { const nb = window.minihubNotebook; nb.cells.splice(1, 2); nb.changed(); }"
    )
    autosave_now(page)
    page.locator("#notice.error", has_text="2 cells").wait_for()
    page.keyboard.press("Control+s")
    page.locator("#notice.error", has_text="2 cells").wait_for()
    assert nb.saves() == 0 and path.read_bytes() == original
    shot(page, "drop-refused")
    page.close()

    # Deleting cells as a person does is saved, as before.
    nb = open_nb(context, hub, path.name)
    page = nb.page
    page.locator(".cell").nth(1).click()
    page.keyboard.press("Escape")
    page.keyboard.press("d")
    page.keyboard.press("d")
    page.wait_for_function("() => window.minihubNotebook.cells.length === 3")
    page.keyboard.press("Control+s")
    page.locator("#save-state:not(.dirty)").wait_for()
    assert [c["source"] for c in disk_cells(path)] == [
        THE_ATTACK[0]["source"],
        THE_ATTACK[2]["source"],
        THE_ATTACK[3]["source"],
    ]
    page.close()


BAD_DISPLAY = """from IPython.display import display
display({"image/png": 5, "text/plain": "plain fallback"}, raw=True)
display({"application/vnd.mhas+json": {"k": [1, 2]}}, raw=True)
print("printed after")"""


def test_a_bad_output_from_the_kernel_never_breaks_the_save(context: Any, hub: Hub) -> None:
    """A real kernel sends a PNG that is not text: kept, it would make every save invalid."""
    path = write_nb(hub, "mhas_live.ipynb", notebook([cell("code", ""), cell("code", "2")]))
    nb = open_nb(context, hub, path.name)
    page = nb.page
    page.evaluate("code => window.minihubNotebook.cells[0].setSource(code)", BAD_DISPLAY)
    page.locator(".cell .cm-content").first.click()
    page.keyboard.press("Shift+Enter")
    first = page.locator(".cell").nth(0)
    first.locator(".output.stream", has_text="printed after").wait_for(timeout=60000)
    assert "plain fallback" in first.inner_text()
    assert '"k": [' in first.inner_text()
    first.locator(".render-error", has_text="image/png").wait_for()
    shot(page, "live-bad-output")
    page.keyboard.press("Control+s")
    page.locator("#save-state:not(.dirty)").wait_for()
    outputs = disk_cells(path)[0]["outputs"]
    assert [o["output_type"] for o in outputs] == ["display_data", "display_data", "stream"]
    assert outputs[0]["data"] == {"text/plain": "plain fallback"}
    assert outputs[1]["data"] == {"application/vnd.mhas+json": {"k": [1, 2]}}
    assert len(disk_cells(path)) == 2
    page.close()
