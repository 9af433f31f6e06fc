"""Named servers in the hub's pages: the home page's list and form, spawn and pending pages,
the not-running landing, the admin page, XSRF and refusals; then the whole path in Chromium
through a real hub process and the real ForkSpawner.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from conftest import gone, hub_config, hub_log_faults, login, needs_root, xsrf_of
from helpers import Hub, hub_process, log_in
from test_browser_hub import shot
from test_browser_notebook import CHROMIUM, CHROMIUM_ARGS, account, needs_browser
from test_hub_spawn import h, make_tokens

from minihub.app import make_app

pytestmark = needs_root


async def as_user(c: TestClient, user: Any) -> str:
    """Log `user` in on this client (dropping whoever was logged in); return the XSRF token."""
    c.session.cookie_jar.clear()
    r = await login(c, user.name, user.password, next="/hub/home")
    assert r.status == 302 and r.headers["Location"] == "/hub/home", await r.text()
    return xsrf_of(c)


async def post(c: TestClient, url: str, xsrf: str, **data: str) -> Any:
    return await c.post(url, data={"_xsrf": xsrf, **data}, allow_redirects=False)


async def servers_of(c: TestClient, name: str, token: str) -> dict[str, Any]:
    r = await c.get(f"/hub/api/users/{name}?include_stopped_servers=1", headers=h(token))
    assert r.status == 200
    return dict((await r.json())["servers"])


async def until_running(c: TestClient, name: str, server: str) -> None:
    """Follow the pending page (as a browser without JavaScript would) until it lets go."""
    for _ in range(300):
        r = await c.get(f"/hub/spawn-pending/{name}/{server}", allow_redirects=False)
        if r.status == 302:
            assert r.headers["Location"] == f"/user/{name}/{server}/", r.headers["Location"]
            return
        assert r.status == 200, await r.text()
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name}/{server} never started")


async def test_home_page_forms_limits_and_refusals(aiohttp_client, data_dir, make_system_user):
    ann = make_system_user(account("mhnp_ann"))
    bob = make_system_user(account("mhnp_bob"))
    adm = make_system_user(account("mhnp_adm"))
    cfg = hub_config(
        data_dir,
        hub__allow_named_servers=True,
        hub__named_server_limit_per_user=2,
        auth__admin_users=[adm.name],
    )
    tok = await make_tokens(cfg, [ann.name])
    c = await aiohttp_client(make_app(cfg))
    xsrf = await as_user(c, ann)

    page = await (await c.get("/hub/home")).text()
    assert "Your servers" in page and 'id="new-server"' in page and "at most 2" in page

    # the form is refused without its XSRF token, and every bad name is a 400 in the page
    r = await c.post("/hub/home/servers", data={"server_name": "work"}, allow_redirects=False)
    assert r.status == 403
    bad = {
        "Work": "Invalid server name",
        "": "Invalid server name",
        "a" * 31: "Invalid",
        "../x": "Invalid",
        "a b": "Invalid",
        "tree": "cannot name a server",
        "<b>x</b>": "Invalid",
    }
    for name, why in bad.items():
        r = await post(c, "/hub/home/servers", xsrf, server_name=name)
        text = await r.text()
        assert r.status == 400 and why in text, (name, r.status, text[:300])
        assert 'id="new-server-error"' in text and "<b>x</b>" not in text
    assert await servers_of(c, ann.name, tok[ann.name]) == {}

    # create "work": on to its pending page, then to /user/ann/work/
    r = await post(c, "/hub/home/servers", xsrf, server_name="work")
    assert r.status == 302 and r.headers["Location"] == f"/hub/spawn-pending/{ann.name}/work"
    r = await c.get(r.headers["Location"], allow_redirects=False)
    if r.status == 200:  # still starting: the page follows the named server's own progress
        assert f"/hub/api/users/{ann.name}/servers/work/progress" in await r.text()
    await until_running(c, ann.name, "work")
    r = await c.get(f"/user/{ann.name}/work/api/status")
    assert r.status == 200
    page = await (await c.get("/hub/home")).text()
    assert 'data-server="work"' in page and f"/user/{ann.name}/work/tree/" in page
    assert f'action="/hub/stop/{ann.name}/work"' in page

    # a name she has, and one past the limit, are refused in the page
    r = await post(c, "/hub/home/servers", xsrf, server_name="work")
    assert r.status == 400 and "already have a server named" in await r.text()
    # a GET (a link from anywhere: no XSRF token) only offers to create one, with a form
    r = await c.get(f"/hub/spawn/{ann.name}/two", allow_redirects=False)
    text = await r.text()
    assert r.status == 200 and f'action="/hub/spawn/{ann.name}/two"' in text, text
    assert 'method="post"' in text and 'name="_xsrf"' in text
    assert "two" not in await servers_of(c, ann.name, tok[ann.name])
    r = await post(c, "/hub/spawn/" + ann.name + "/two", xsrf)  # JupyterHub's: creates it
    assert r.status == 302 and r.headers["Location"].startswith(
        f"/hub/spawn-pending/{ann.name}/two?next="
    )
    r = await post(c, "/hub/home/servers", xsrf, server_name="three")
    text = await r.text()
    assert r.status == 400 and "named_server_limit_per_user" in text and "remove one" in text
    page = await (await c.get("/hub/home")).text()
    assert 'id="at-limit"' in page and 'id="new-server"' not in page
    assert set(await servers_of(c, ann.name, tok[ann.name])) == {"work", "two"}
    await until_running(c, ann.name, "two")

    # bob: refused on every page and form about ann's servers, with his own valid XSRF token
    bx = await as_user(c, bob)
    for url in (
        f"/hub/spawn/{ann.name}/work",
        f"/hub/stop/{ann.name}/work",
        f"/hub/delete/{ann.name}/work",
        f"/hub/spawn/{ann.name}/new",
        f"/hub/admin/users/{ann.name}/servers/work/stop",
    ):
        r = await post(c, url, bx)
        assert r.status == 403, (url, r.status)
    for url in (
        f"/hub/spawn-pending/{ann.name}/work",
        f"/hub/user/{ann.name}/work/tree/",
        f"/user/{ann.name}/work/tree/",
    ):
        r = await c.get(url, allow_redirects=False)
        assert r.status == 403, (url, r.status)
    assert "new" not in await servers_of(c, ann.name, tok[ann.name])
    assert (await servers_of(c, ann.name, tok[ann.name]))["work"]["ready"] is True

    # ann stops "work": the others run on; /user/ann/work/ lands on its own not-running page
    xsrf = await as_user(c, ann)
    pid = (await servers_of(c, ann.name, tok[ann.name]))["work"]["state"]["pid"]
    r = await post(c, f"/hub/stop/{ann.name}/work", xsrf)
    assert r.status == 302 and r.headers["Location"] == "/hub/home"
    assert await gone(pid)
    model = await servers_of(c, ann.name, tok[ann.name])
    assert model["work"]["ready"] is False and model["two"]["ready"] is True
    r = await c.get(f"/user/{ann.name}/work/tree/?x=1", allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == f"/hub/user/{ann.name}/work/tree/?x=1"
    r = await c.get(r.headers["Location"])
    text = await r.text()
    assert r.status == 503 and "Your server “work” is not running" in text
    assert f'action="/hub/spawn/{ann.name}/work"' in text
    assert f'value="/user/{ann.name}/work/tree/"' in text
    # a first segment that names none of her servers is the default server's, as before
    r = await c.get(f"/hub/user/{ann.name}/nosuch/x")
    text = await r.text()
    assert r.status == 503 and "Your server is not running" in text
    assert f'action="/hub/spawn/{ann.name}"' in text
    page = await (await c.get("/hub/home")).text()
    row = re.search(r'<tr data-server="work">.*?</tr>', page, re.DOTALL)
    assert row and "stopped" in row[0] and f'action="/hub/spawn/{ann.name}/work"' in row[0]
    r = await c.get(f"/hub/spawn-pending/{ann.name}/nosuch")
    assert r.status == 404 and "no server named" in await r.text()
    r = await post(c, f"/hub/stop/{ann.name}/nosuch", xsrf)
    assert r.status == 404

    # the admin sees both named servers and starts and stops one of them; deletes the other
    ax = await as_user(c, adm)
    page = await (await c.get("/hub/admin")).text()
    assert f'action="/hub/admin/users/{ann.name}/servers/work/start"' in page
    assert f'action="/hub/admin/users/{ann.name}/servers/two/stop"' in page
    r = await post(c, f"/hub/admin/users/{ann.name}/servers/work/start", ax)
    assert r.status == 302 and r.headers["Location"] == "/hub/admin"
    await until_running(c, ann.name, "work")
    r = await post(c, f"/hub/admin/users/{ann.name}/servers/work/stop", ax)
    assert r.status == 302
    r = await post(c, f"/hub/admin/users/{ann.name}/servers/work/reboot", ax)
    assert r.status == 404
    r = await post(c, f"/hub/delete/{ann.name}/two", ax, next="/hub/admin")
    assert r.status == 302 and r.headers["Location"] == "/hub/admin"
    assert set(await servers_of(c, ann.name, tok[ann.name])) == {"work"}

    # ann deletes "work": forgotten
    xsrf = await as_user(c, ann)
    r = await post(c, f"/hub/delete/{ann.name}/work", xsrf)
    assert r.status == 302 and r.headers["Location"] == "/hub/home"
    assert await servers_of(c, ann.name, tok[ann.name]) == {}
    page = await (await c.get("/hub/home")).text()
    assert 'data-server="work"' not in page and 'id="new-server"' in page


async def test_without_named_servers_the_home_page_is_as_before(
    aiohttp_client, data_dir, make_system_user
):
    cy = make_system_user(account("mhnp_cy"))
    c = await aiohttp_client(make_app(hub_config(data_dir)))
    xsrf = await as_user(c, cy)
    page = await (await c.get("/hub/home")).text()
    assert "Your server</h1>" in page and 'id="start"' in page and "new-server" not in page
    r = await post(c, "/hub/home/servers", xsrf, server_name="work")
    assert r.status == 400 and "not enabled" in await r.text()
    r = await post(c, f"/hub/spawn/{cy.name}/work", xsrf)
    assert r.status == 400 and "allow_named_servers" in await r.text()


async def test_a_named_server_that_fails_shows_why_on_the_home_page(
    aiohttp_client, data_dir, make_system_user
):
    di = make_system_user(account("mhnp_di"))
    cfg = hub_config(
        data_dir,
        hub__allow_named_servers=True,
        spawner__cmd=["/bin/sh", "-c", "echo boom-from-named >&2; exit 3"],
    )
    c = await aiohttp_client(make_app(cfg))
    xsrf = await as_user(c, di)
    r = await post(c, "/hub/home/servers", xsrf, server_name="bad")
    assert r.status == 302
    for _ in range(300):
        r = await c.get(f"/hub/spawn-pending/{di.name}/bad", allow_redirects=False)
        if r.status != 200:
            break
        await asyncio.sleep(0.1)
    text = await r.text()
    assert r.status == 502 and "Your server “bad” failed to start" in text
    assert "boom-from-named" in text and f'action="/hub/spawn/{di.name}/bad"' in text
    page = await (await c.get("/hub/home")).text()
    why = re.search(r'<tr class="why" data-server-error="bad">.*?</tr>', page, re.DOTALL)
    assert why and "exited" in why[0] and "3" in why[0] and "boom-from-named" in why[0]


# --- the whole path in Chromium --------------------------------------------------------------
@pytest.fixture
def named_hub(data_dir: str, tmp_path: Path, make_system_user: Any) -> Iterator[Hub]:
    """`python -m minihub` with named servers on and the real ForkSpawner (the default)."""
    needs_browser()
    user = make_system_user(account("mhnp_web"))
    toml = tmp_path / "minihub.toml"
    toml.write_text(
        "[hub]\ncleanup_servers = true\nallow_named_servers = true\n"
        f'named_server_limit_per_user = 3\n[auth]\nadmin_users = ["{user.name}"]\n'
    )
    log = tmp_path / "hub.log"
    with hub_process(toml, data_dir, log) as url:
        yield Hub(url, user)
    assert not hub_log_faults(log), hub_log_faults(log)


def row(page: Any, server: str) -> Any:
    return page.locator(f'#servers tr[data-server="{server}"]')


@pytest.mark.browser
@pytest.mark.timeout(300)
def test_named_server_from_the_home_page_in_chromium(named_hub: Hub) -> None:
    from playwright.sync_api import sync_playwright

    hub, user = named_hub, named_hub.user
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            ctx = browser.new_context(viewport={"width": 1280, "height": 800})
            ctx.set_default_timeout(30000)
            page = ctx.new_page()
            log_in(page, hub.url, user)

            page.goto(hub.url + "/hub/home")
            page.fill("input[name=server_name]", "tree")  # passes the field's pattern
            page.locator("#create-server").click()
            assert "cannot name a server" in page.locator("#new-server-error").inner_text()
            assert page.locator("input[name=server_name]").input_value() == "tree"
            shot(page, "named-home-refused")
            page.fill("input[name=server_name]", "work")
            shot(page, "named-home-create")
            # The pending page follows the named server's own progress stream; held for a
            # screenshot (the page's 2 s refresh lets it move on in any case).
            progress = f"/hub/api/users/{user.name}/servers/work/progress"
            held: list[Any] = []
            page.route(f"**{progress}", lambda route: held.append(route))
            with page.expect_request(lambda r: progress in r.url):
                page.locator("#create-server").click()
            shot(page, "named-progress")
            assert held
            page.unroute(f"**{progress}")  # lets the held request go on
            page.wait_for_url(f"**/user/{user.name}/work/tree/", timeout=90000)
            page.locator("#file-rows tr").first.wait_for()
            shot(page, "named-tree")

            page.goto(hub.url + "/hub/home")
            assert row(page, "").locator(".status").inner_text() == "running"
            assert row(page, "work").locator(".status").inner_text() == "running"
            assert (
                row(page, "work").locator("a.open").get_attribute("href")
                == f"/user/{user.name}/work/tree/"
            )
            shot(page, "named-home-both")
            page.goto(hub.url + "/hub/admin")
            page.locator(f'tr[data-user="{user.name}"] .named[data-server="work"]').wait_for()
            shot(page, "named-admin")

            page.goto(hub.url + "/hub/home")
            row(page, "work").locator("button.stop").click()
            page.wait_for_url("**/hub/home")
            assert row(page, "work").locator(".status").inner_text() == "stopped"
            assert row(page, "").locator(".status").inner_text() == "running"
            shot(page, "named-home-stopped")
            page.goto(hub.url + f"/user/{user.name}/work/tree/")
            page.wait_for_url(f"**/hub/user/{user.name}/work/tree/")
            assert page.locator("h1").inner_text() == "Your server “work” is not running"
            shot(page, "named-not-running")

            page.goto(hub.url + "/hub/home")
            page.once("dialog", lambda d: d.accept())
            row(page, "work").locator("button.delete").click()
            page.wait_for_url("**/hub/home")
            row(page, "").wait_for()
            assert row(page, "work").count() == 0
            shot(page, "named-home-deleted")
        finally:
            browser.close()
