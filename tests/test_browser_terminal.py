"""The terminal in the notebook app, in real Chromium against a real user server running as
a real system user: New → Terminal, the shell is the user's, long output, resize, reload
with the scrollback replayed, the running list with Shut down, and a shell that exits.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import test_browser_notebook as base
from test_browser_notebook import Server, account, needs_browser, user_server

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

browser = base.browser
context = base.context

# The last line of xterm's buffer (scrollback and screen) that matches a regex, or false.
FIND_LINE = """(pattern) => {
  const re = new RegExp("^(?:" + pattern + ")$");
  const b = window.minihubTerminal.term.buffer.active;
  for (let i = b.length - 1; i >= 0; i--) {
    const line = b.getLine(i).translateToString(true);
    if (re.test(line)) return line;
  }
  return false;
}"""

# Select the last buffer line equal to the argument, as a mouse drag over it would.
SELECT_LINE = """(text) => {
  const t = window.minihubTerminal.term;
  const b = t.buffer.active;
  for (let i = b.length - 1; i >= 0; i--) {
    if (b.getLine(i).translateToString(true) === text) { t.select(0, i, text.length); return; }
  }
  throw new Error("no line " + text);
}"""


@pytest.fixture(scope="module")
def server(make_system_user: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    needs_browser()
    user = make_system_user(account("mhfx_tm"))
    with user_server(user, tmp_path_factory.mktemp("mhfx") / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def user_name(server: Server) -> str:
    return server.base_url.strip("/").split("/")[-1]


def wait_line(page: Any, pattern: str, timeout: float = 20000) -> str:
    """The last buffer line matching the regex `pattern` (anchored), waiting for one."""
    handle = page.wait_for_function(FIND_LINE, arg=pattern, timeout=timeout)
    return str(handle.json_value())


def run(page: Any, command: str) -> None:
    page.locator(".xterm-helper-textarea").focus()
    page.keyboard.type(command)
    page.keyboard.press("Enter")


def wait_connected(page: Any) -> None:
    page.wait_for_function(
        "() => window.minihubTerminal && window.minihubTerminal.state === 'connected'"
    )


def size_via_stty(page: Any, tag: str) -> tuple[int, int]:
    run(page, f"echo {tag} $(stty size)")
    rows, cols = wait_line(page, tag + r" \d+ \d+").split()[1:]
    return int(rows), int(cols)


def term_size(page: Any) -> tuple[int, int]:
    rows, cols = page.evaluate(
        "() => [window.minihubTerminal.term.rows, window.minihubTerminal.term.cols]"
    )
    return int(rows), int(cols)


def open_from_tree(context: Any, server: Server) -> tuple[Any, Any]:
    tree = context.new_page()
    tree.goto(server.url + "tree/")
    tree.locator("summary", has_text="New").click()
    item = tree.locator("#new-terminal")
    item.wait_for(state="visible")
    with context.expect_page() as opened:
        item.click()
    page = opened.value
    wait_connected(page)
    return tree, page


def test_terminal_day(context: Any, server: Server, user_name: str) -> None:
    tree, page = open_from_tree(context, server)
    name = page.evaluate("() => window.minihubTerminal.name")
    assert page.url == server.url + "terminals/" + name
    assert any(t["name"] == name for t in server.api("GET", "api/terminals"))

    run(page, "id -un")
    assert wait_line(page, re.escape(user_name)) == user_name

    run(page, "seq 10000")
    wait_line(page, "10000")

    # The terminal fits the window and the shell follows: stty sees xterm's size.
    assert size_via_stty(page, "SZ1") == term_size(page)
    before = term_size(page)
    page.set_viewport_size({"width": 700, "height": 420})
    page.wait_for_function(
        "([r, c]) => { const t = window.minihubTerminal.term; return t.rows < r && t.cols < c; }",
        arg=list(before),
    )
    after = size_via_stty(page, "SZ2")
    assert after == term_size(page)
    assert after[0] < before[0] and after[1] < before[1]

    # A reload reattaches to the same shell, its recent output replayed.
    run(page, "echo before-$((6 * 7))-reload")
    wait_line(page, "before-42-reload")
    page.reload()
    wait_connected(page)
    wait_line(page, "before-42-reload")
    wait_line(page, "SZ2 \\d+ \\d+")
    # A dropped connection shows, and comes back by itself on the same shell.
    page.evaluate("() => window.minihubTerminal.ws.close()")
    status = page.locator("#term-status")
    status.filter(has_text="Disconnected — reconnecting").wait_for()
    wait_connected(page)
    assert status.text_content() == "Connected"
    run(page, "echo still-$((6 * 7))-here")
    wait_line(page, "still-42-here")
    base.shot(page, "terminal")

    # Copy and paste: Ctrl+Shift+C copies xterm's selection, Ctrl+Shift+V pastes to the shell.
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page.evaluate(SELECT_LINE, "still-42-here")
    page.keyboard.press("Control+Shift+C")
    assert page.evaluate("() => navigator.clipboard.readText()") == "still-42-here"
    page.evaluate("() => navigator.clipboard.writeText('echo pasted-$((6 * 7))')")
    page.keyboard.press("Control+Shift+V")
    page.keyboard.press("Enter")
    wait_line(page, "pasted-42")

    # The file browser lists it; Shut down ends it, and its page says so.
    tree.reload()
    row = tree.locator(f"#terminals-list li[data-terminal='{name}']")
    row.wait_for()
    base.shot(tree, "terminal-tree")
    assert tree.locator("#terminals-count").text_content() != "0"
    row.get_by_role("button", name="Shut down").click()
    row.wait_for(state="detached")
    assert all(t["name"] != name for t in server.api("GET", "api/terminals"))
    page.wait_for_function("() => window.minihubTerminal.state === 'ended'")
    assert page.locator("#term-ended").is_visible()
    base.shot(page, "terminal-ended")
    assert "Terminal ended" in page.locator("#term-status").text_content()


def test_shell_exit_then_new_terminal(context: Any, server: Server) -> None:
    created = server.api("POST", "api/terminals")
    page = context.new_page()
    page.goto(server.url + "terminals/" + created["name"])
    wait_connected(page)
    run(page, "exit")
    page.wait_for_function("() => window.minihubTerminal.state === 'ended'")
    ended = page.locator("#term-ended")
    assert "Terminal ended" in ended.text_content()
    # Jupyter reuses the lowest free name, so the new one may have the same URL.
    with page.expect_navigation():
        ended.get_by_role("button", name="New terminal").click()
    wait_connected(page)
    run(page, "echo fresh-$((6 * 7))")
    wait_line(page, "fresh-42")
    fresh = page.evaluate("() => window.minihubTerminal.name")
    server.api("DELETE", "api/terminals/" + fresh)


def test_unknown_terminal_says_ended(context: Any, server: Server) -> None:
    page = context.new_page()
    page.goto(server.url + "terminals/no-such-terminal")
    page.wait_for_function("() => window.minihubTerminal.state === 'ended'")
    assert page.locator("#term-new").is_visible()
