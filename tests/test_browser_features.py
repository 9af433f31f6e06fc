"""Notebook editor features in real Chromium against a real user server and real kernels:
completion and inspection, display updates, checkpoints, autosave, kernels, SVG isolation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import test_browser_notebook as base
from test_browser_notebook import Server, needs_browser, run_cell, user_server, wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

# One browser per module, on this module's own server.
browser = base.browser
context = base.context


@pytest.fixture(scope="module")
def server(make_system_user: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    needs_browser()
    user = make_system_user("mhfx_feat")
    with user_server(user, tmp_path_factory.mktemp("mhfx") / "server.log") as srv:
        yield srv


def put_notebook(server: Server, path: str, sources: list[str]) -> None:
    cells = [{"id": f"c{i}", "cell_type": "code", "execution_count": None, "metadata": {},
              "source": src, "outputs": []} for i, src in enumerate(sources)]
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": cells}
    server.api("PUT", "api/contents/" + path, {"type": "notebook", "format": "json",
                                                "content": nb})


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
    page.wait_for_function("() => window.minihubNotebook.cells[1].source === 'mhfx_unique_name'",
                           timeout=60000)

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
    page.wait_for_function("s => window.minihubNotebook.cells[1].source.endsWith('\\n' + s)",
                           arg=chosen)
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
