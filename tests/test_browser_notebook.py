"""The notebook app in real headless Chromium against a real user server and real kernels.

The user server runs as a real system user (launch contract of minihub.singleuser); the
browser gets the per-server secret as an extra header, standing in for the hub's proxy.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _png(width: int, height: int) -> bytes:
    """A red RGB PNG, made here rather than shipped."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


PNG_B64 = base64.b64encode(_png(40, 20)).decode()


@dataclass
class Server:
    url: str
    base_url: str
    secret: str
    home: str
    proc: subprocess.Popen[bytes]

    def api(self, method: str, path: str, body: Any = None) -> Any:
        req = urllib.request.Request(
            self.url + path,
            method=method,
            headers={"X-Minihub-Secret": self.secret, "Content-Type": "application/json"},
            data=None if body is None else json.dumps(body).encode(),
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read()
        return json.loads(text) if text else None


def _installed_bundle() -> Path:
    """The bundle of the installed minihub, the copy user servers run (not this checkout)."""
    out = subprocess.run(
        [sys.executable, "-c", "import minihub; print(minihub.__file__)"],
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return Path(out.strip()).parent / "web" / "static" / "nb" / "manifest.json"


def _wait_ready(server: Server, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail("user server exited: " + log.read_text()[-3000:])
        try:
            server.api("GET", "api/status")
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    pytest.fail("user server did not answer api/status in 60 s: " + log.read_text()[-3000:])


def account(prefix: str) -> str:
    """A user name unique to this test session: engineers run the suite side by side, and
    make_system_user first kills and removes any account of the same name."""
    return f"{prefix}{os.getpid() % 100000}"


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (Playwright) for a module's tests; each test opens its own context."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def needs_browser() -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed")
    if not _installed_bundle().exists():
        pytest.skip("the notebook app is not built into the installed minihub: run scripts/install")


@contextlib.contextmanager
def user_server(user: Any, log: Path) -> Iterator[Server]:
    """The real minihub.singleuser server of `user`, started as that user."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    base_url = f"/user/{user.name}/"
    secret = secrets.token_urlsafe(24)
    config = {
        "secret": secret,
        "base_url": base_url,
        "notebook_dir": user.home,
        "user": user.name,
        "listen_fd": sock.fileno(),
        "kernel_idle_timeout": 0,
        "mem_limit": "",
    }
    env = {
        "HOME": user.home,
        "USER": user.name,
        "LOGNAME": user.name,
        "SHELL": "/bin/bash",
        "PATH": f"{os.path.dirname(sys.executable)}:/usr/bin:/bin",
        "LANG": "C.UTF-8",
    }
    with open(log, "wb") as errlog:
        proc = subprocess.Popen(
            [sys.executable, "-m", "minihub.singleuser"],
            user=user.uid,
            group=user.gid,
            extra_groups=[],
            cwd=user.home,
            env=env,
            stdin=subprocess.PIPE,
            stderr=errlog,
            pass_fds=[sock.fileno()],
        )
    assert proc.stdin is not None
    proc.stdin.write((json.dumps(config) + "\n").encode())
    proc.stdin.close()
    sock.close()
    srv = Server(f"http://127.0.0.1:{port}{base_url}", base_url, secret, user.home, proc)
    try:
        _wait_ready(srv, log)
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(make_system_user: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    needs_browser()
    user = make_system_user(account("mhfx_nb"))
    with user_server(user, tmp_path_factory.mktemp("mhfx") / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def browser(server: Server) -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture
def context(browser: Any, server: Server) -> Iterator[Any]:
    ctx = browser.new_context(
        extra_http_headers={"X-Minihub-Secret": server.secret},
        viewport={"width": 1280, "height": 900},
    )
    ctx.set_default_timeout(30000)
    # Stands in for the hub's cookies: output frames must never be able to read them.
    ctx.add_cookies(
        [
            {"name": "_xsrf", "value": "xsrf-cookie-value", "url": server.url},
            {"name": "minihub-session", "value": "session-cookie-value", "url": server.url},
        ]
    )
    try:
        yield ctx
    finally:
        ctx.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def open_notebook(context: Any, server: Server, path: str) -> Any:
    page = context.new_page()
    page.goto(server.url + "notebooks/" + path)
    wait_idle(page)
    return page


def wait_idle(page: Any) -> None:
    page.wait_for_selector("#kernel-status[data-status=idle]", timeout=60000)


def run_cell(page: Any, index: int, code: str) -> Any:
    """Put code in cell `index` (adding cells as needed), run it, return its locator."""
    page.evaluate(
        """([i, code]) => {
        const nb = window.minihubNotebook;
        while (nb.cells.length <= i) nb.insertCell(nb.cells.length, {cell_type: "code", source: ""});
        nb.cells[i].setSource(code);
        nb.select(nb.cells[i], false);
    }""",
        [index, code],
    )
    page.keyboard.press("Shift+Enter")
    cell = page.locator(".cell").nth(index)
    page.wait_for_function(
        "i => !window.minihubNotebook.cells[i].running", arg=index, timeout=60000
    )
    return cell


def test_notebook_lifecycle(context: Any, server: Server) -> None:
    page = context.new_page()
    page.goto(server.url)
    assert page.url.endswith("/tree/")
    page.locator("summary", has_text="New").click()
    with context.expect_page() as new_page:
        page.locator("#new-menu button[data-kernel]").first.click()
    nb = new_page.value
    wait_idle(nb)
    path = nb.evaluate("window.minihubNotebook.path")
    assert path.endswith(".ipynb")

    # Typed for real: the keyboard model, CodeMirror and Shift-Enter.
    nb.locator(".cell .cm-content").first.click()
    nb.keyboard.type('print("hello " + str(6*7))')
    nb.keyboard.press("Shift+Enter")
    first = nb.locator(".cell").nth(0)
    first.locator(".output.stream").wait_for()
    assert "hello 42" in first.locator(".output.stream").inner_text()
    assert "[1]" in first.locator(".input-prompt").inner_text()

    png = run_cell(
        nb,
        1,
        "from IPython.display import Image\nimport base64\n"
        f"Image(data=base64.b64decode('{PNG_B64}'))",
    )
    assert png.locator(".output img").get_attribute("src").startswith("data:image/png;base64,")
    html = run_cell(nb, 2, "from IPython.display import HTML\nHTML('<b id=\"bold\">bold</b> text')")
    frame = html.locator("iframe.output-frame")
    assert frame.get_attribute("sandbox") == "allow-scripts"
    assert html.frame_locator("iframe.output-frame").locator("#bold").inner_text() == "bold"
    err = run_cell(nb, 3, "1/0")
    assert "ZeroDivisionError" in err.locator(".output.error").inner_text()
    stream = run_cell(nb, 4, "import sys\nfor i in range(5): print(f'\\r{i}', end='')\nprint()")
    assert stream.locator(".output.stream").inner_text().strip() == "4"

    # A markdown cell with math, rendered by marked + KaTeX.
    nb.evaluate("""() => { const nb = window.minihubNotebook;
        nb.select(nb.cells[nb.cells.length - 1], false); }""")
    nb.keyboard.press("b")
    nb.keyboard.press("m")
    nb.keyboard.press("Enter")
    nb.keyboard.type("# Title\n\nEuler: $e^{i\\pi} + 1 = 0$")
    nb.keyboard.press("Shift+Enter")
    md = nb.locator(".cell[data-type=markdown]").first
    md.locator(".rendered h1").wait_for()
    assert md.locator(".rendered .katex").count() == 1

    # input() is answered through the stdin channel.
    ask = nb.locator(".cell").nth(6)
    nb.evaluate("""() => { const nb = window.minihubNotebook;
        nb.insertCell(6, {cell_type: "code", source: "name = input('Name? ')\\nprint('hi', name)"});
        nb.select(nb.cells[6], false); }""")
    nb.keyboard.press("Shift+Enter")
    ask.locator(".input-request input").fill("Ada")
    ask.locator(".input-request input").press("Enter")
    ask.locator(".output.stream", has_text="hi Ada").wait_for()
    shot(nb, "notebook")

    # Interrupt a long cell.
    long = run_cell_async(nb, 7, "import time\nfor _ in range(600): time.sleep(0.1)")
    nb.wait_for_selector("#kernel-status[data-status=busy]")
    nb.locator("button[aria-label=Interrupt]").click()
    long.locator(".output.error", has_text="KeyboardInterrupt").wait_for()

    # Save with Ctrl-S, reload, everything is back.
    nb.keyboard.press("Escape")
    nb.keyboard.press("Control+s")
    nb.locator("#save-state:not(.dirty)").wait_for()
    saved = server.api("GET", "api/contents/" + path)
    assert saved["content"]["cells"][0]["outputs"][0]["text"] == "hello 42\n"
    nb.reload()
    wait_idle(nb)
    assert "hello 42" in nb.locator(".cell").nth(0).locator(".output.stream").inner_text()
    assert nb.locator(".cell").nth(1).locator(".output img").count() == 1
    assert nb.locator(".cell[data-type=markdown] .katex").count() == 1

    # Restart: the kernel forgets its variables.
    nb.locator("button[aria-label=Restart]").click()
    nb.locator(".modal button", has_text="Restart").click()
    wait_idle(nb)
    gone = run_cell(nb, nb.evaluate("window.minihubNotebook.cells.length"), "name")
    assert "NameError" in gone.locator(".output.error").inner_text()


def run_cell_async(page: Any, index: int, code: str) -> Any:
    page.evaluate(
        """([i, code]) => { const nb = window.minihubNotebook;
        nb.insertCell(i, {cell_type: "code", source: code}); nb.select(nb.cells[i], false); }""",
        [index, code],
    )
    page.keyboard.press("Control+Enter")
    return page.locator(".cell").nth(index)


MIB = 1024 * 1024


def upload_big_file(page: Any, server: Server, upload: Path) -> None:
    """Upload 3.5 MiB from the file browser: four 1 MiB chunks, with a progress bar."""
    upload.write_bytes(os.urandom(3 * MIB + MIB // 2))
    bodies: list[int] = []
    page.on(
        "request",
        lambda r: (
            bodies.append(len(r.post_data_buffer or b""))
            if r.method == "PUT" and upload.name in r.url
            else None
        ),
    )
    page.evaluate("""() => { window.mhfxProgress = [];
        new MutationObserver((records) => { for (const r of records)
            if (r.target.tagName === "PROGRESS") window.mhfxProgress.push(r.target.value); })
        .observe(document.getElementById("uploads"),
                 {subtree: true, attributes: true, attributeFilter: ["value"]}); }""")
    page.locator("#upload-input").set_input_files(str(upload))
    page.locator(f"tr[data-path='{upload.name}']").wait_for()
    got = server.api("GET", f"api/contents/{upload.name}?content=1&format=base64")
    assert base64.b64decode(got["content"]) == upload.read_bytes()
    # 1 MiB of file per request, about 1.4 MB of base64 JSON each.
    assert len(bodies) == 4
    assert all(len(base64.b64encode(b"x" * MIB)) < n < 1.5 * MIB for n in bodies[:3])
    assert page.evaluate("window.mhfxProgress") == [25, 50, 75, 100]


def test_file_browser(context: Any, server: Server, tmp_path: Path) -> None:
    server.api(
        "PUT", "api/contents/fe_notes.txt", {"type": "file", "format": "text", "content": "notes"}
    )
    page = context.new_page()
    page.goto(server.url + "tree/")
    row = page.locator("tr[data-path='fe_notes.txt']")
    row.wait_for()

    row.locator("input[type=checkbox]").check()
    page.locator("#act-rename").click()
    page.locator(".modal input").fill("fe_renamed.txt")
    page.locator(".modal button", has_text="OK").click()
    page.locator("tr[data-path='fe_renamed.txt']").wait_for()
    names = {i["name"] for i in server.api("GET", "api/contents/")["content"]}
    assert "fe_renamed.txt" in names and "fe_notes.txt" not in names

    upload_big_file(page, server, tmp_path / "fx_upload.bin")
    shot(page, "tree")

    page.locator("tr[data-path='fe_renamed.txt'] input[type=checkbox]").check()
    page.locator("#act-delete").click()
    page.locator(".modal button", has_text="Delete").click()
    page.locator("tr[data-path='fe_renamed.txt']").wait_for(state="detached")
    names = {i["name"] for i in server.api("GET", "api/contents/")["content"]}
    assert "fe_renamed.txt" not in names


MALICIOUS = """
<div id="result">pending</div>
<script>
(async () => {
  const r = {};
  try { r.cookie = document.cookie; } catch (e) { r.cookie = "blocked"; }
  try { r.parentCookie = parent.document.cookie; } catch (e) { r.parentCookie = "blocked"; }
  try { r.storage = String(localStorage.length); } catch (e) { r.storage = "blocked"; }
  try {
    const resp = await fetch(BASE + "api/contents/", {credentials: "include"});
    r.api = await resp.text();
  } catch (e) { r.api = "blocked"; }
  document.getElementById("result").textContent = JSON.stringify(r);
})();
</script>
"""


def _svg_payload(base: str) -> str:
    script = MALICIOUS.split("<script>")[1].split("</script>")[0].replace("BASE", base)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<svg xmlns="http://www.w3.org/2000/svg" width="400" height="80">'
        '<circle id="dot" cx="30" cy="30" r="20" fill="red"/>'
        '<text id="result" x="60" y="35">pending</text>'
        f"<script><![CDATA[{script}]]></script></svg>"
    )


@pytest.mark.parametrize("mime", ["text/html", "image/svg+xml"])
def test_malicious_output_is_sandboxed(context: Any, server: Server, mime: str) -> None:
    base = json.dumps(server.url)
    payload = MALICIOUS.replace("BASE", base) if mime == "text/html" else _svg_payload(base)
    notebook = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {},
        "cells": [
            {
                "id": "evil",
                "cell_type": "code",
                "execution_count": 1,
                "metadata": {},
                "source": "display(...)",
                "outputs": [
                    {
                        "output_type": "display_data",
                        "metadata": {},
                        "data": {mime: payload, "text/plain": "x"},
                    }
                ],
            }
        ],
    }
    path = f"fx_evil_{mime.split('/')[1].split('+')[0]}.ipynb"
    server.api(
        "PUT", "api/contents/" + path, {"type": "notebook", "format": "json", "content": notebook}
    )
    page = open_notebook(context, server, path)
    assert "xsrf-cookie-value" in page.evaluate("document.cookie")
    frame = page.locator(f".output[data-mime='{mime}'] iframe.output-frame")
    assert frame.get_attribute("sandbox") == "allow-scripts"
    result = page.frame_locator("iframe.output-frame").locator("#result")
    result.filter(has_not_text="pending").wait_for()
    found = json.loads(result.text_content() or "")
    assert found == {
        "cookie": "blocked",
        "parentCookie": "blocked",
        "storage": "blocked",
        "api": "blocked",
    }
    if mime == "image/svg+xml":
        # Drawn inside the frame, which grows to the picture's height.
        assert page.frame_locator("iframe.output-frame").locator("#dot").count() == 1
        page.wait_for_function(
            "f => f.getBoundingClientRect().height >= 80", arg=frame.element_handle()
        )
    shot(page, "sandbox-" + mime.split("/")[1].split("+")[0])


def test_reconnect_replays_missed_output(context: Any, server: Server) -> None:
    empty = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []}
    server.api(
        "PUT",
        "api/contents/fe_reconnect.ipynb",
        {"type": "notebook", "format": "json", "content": empty},
    )
    page = open_notebook(context, server, "fe_reconnect.ipynb")
    run_cell_async(page, 0, "import time\ntime.sleep(2)\nprint('after the drop')")
    page.wait_for_selector("#kernel-status[data-status=busy]")
    page.evaluate("window.minihubNotebook.kernel.ws.close()")  # a network drop, as seen here
    page.wait_for_selector("#kernel-status[data-status=disconnected]")
    cell = page.locator(".cell").nth(0)
    cell.locator(".output.stream", has_text="after the drop").wait_for(timeout=60000)
    wait_idle(page)


def test_text_editor_saves(context: Any, server: Server) -> None:
    server.api(
        "PUT", "api/contents/fe_script.py", {"type": "file", "format": "text", "content": "x = 1\n"}
    )
    page = context.new_page()
    page.goto(server.url + "edit/fe_script.py")
    page.locator(".cm-content").click()
    page.keyboard.press("Control+End")
    page.keyboard.type("y = 2\n")
    page.locator("#save-state.dirty").wait_for()
    page.keyboard.press("Control+s")
    page.locator("#save-state:not(.dirty)").wait_for()
    saved = server.api("GET", "api/contents/fe_script.py")
    assert saved["content"] == "x = 1\ny = 2\n"
    shot(page, "editor")


def row_names(page: Any) -> list[str]:
    return [n.strip() for n in page.locator("#file-rows tr[data-path] td.name a").all_inner_texts()]


def test_file_browser_copy_download_and_sort(context: Any, server: Server) -> None:
    files = {"a2.txt": 1_000_000_000, "a10.txt": 1_000_300_000, "b.txt": 1_000_200_000}
    server.api("PUT", "api/contents/fx_sort", {"type": "directory"})
    server.api("PUT", "api/contents/fx_sort/zdir", {"type": "directory"})
    for name, mtime in files.items():
        server.api(
            "PUT",
            f"api/contents/fx_sort/{name}",
            {"type": "file", "format": "text", "content": f"this is {name}\n"},
        )
        os.utime(Path(server.home) / "fx_sort" / name, (mtime, mtime))
    page = context.new_page()
    page.goto(server.url + "tree/fx_sort")
    page.locator("tr[data-path='fx_sort/b.txt']").wait_for()

    # Folders first whichever way; names in natural order (a2 before a10).
    name_th = page.locator("th[data-sort=name]")
    modified_th = page.locator("th[data-sort=last_modified]")
    assert row_names(page) == ["zdir", "a2.txt", "a10.txt", "b.txt"]
    name_th.locator("button").click()
    assert name_th.get_attribute("aria-sort") == "descending"
    assert row_names(page) == ["zdir", "b.txt", "a10.txt", "a2.txt"]
    modified_th.locator("button").click()  # newest first
    assert modified_th.get_attribute("aria-sort") == "descending"
    assert name_th.get_attribute("aria-sort") == "none"
    assert row_names(page) == ["zdir", "a10.txt", "b.txt", "a2.txt"]
    modified_th.locator("button").click()
    assert row_names(page) == ["zdir", "a2.txt", "b.txt", "a10.txt"]

    # Duplicate: the copy lands next to it as name-Copy1.ext.
    page.locator("tr[data-path='fx_sort/b.txt'] input[type=checkbox]").check()
    page.locator("#act-copy").click()
    page.locator("tr[data-path='fx_sort/b-Copy1.txt']").wait_for()
    copied = server.api("GET", "api/contents/fx_sort/b-Copy1.txt")
    assert copied["content"] == "this is b.txt\n"
    assert not page.locator("tr[data-path='fx_sort/b.txt'] input[type=checkbox]").is_checked()

    # Download: the browser saves the file's bytes under its own name.
    page.locator("tr[data-path='fx_sort/a10.txt'] input[type=checkbox]").check()
    with page.expect_download() as info:
        page.locator("#act-download").click()
    download = info.value
    assert download.suggested_filename == "a10.txt"
    assert Path(download.path()).read_bytes() == b"this is a10.txt\n"
    # Several at once: each selected file is its own download.
    downloads: list[Any] = []
    page.on("download", lambda d: downloads.append(d))
    page.locator("tr[data-path='fx_sort/a2.txt'] input[type=checkbox]").check()
    page.locator("#act-download").click()
    deadline = time.monotonic() + 30
    while len(downloads) < 2 and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    got = {d.suggested_filename: Path(d.path()).read_bytes() for d in downloads}
    assert got == {"a2.txt": b"this is a2.txt\n", "a10.txt": b"this is a10.txt\n"}
    shot(page, "tree-sorted")
