"""Course material: /hub/user-redirect/… links that land on each user's own server
(nbgitpuller's git-pull links among them), the link builder and class folders on the admin
page.

A class folder is a root-owned directory users may read and not write; it is linked into
every hub user's home at once (as the user, by minihub.spawner.accounts) and at each spawn
(the local spawner asks `Spawner.hub_shared_dirs`), and unlinked when it is removed.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import pwd
import stat
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from aiohttp import web

from ..access.http import allows, require
from ..body import read_form
from ..context import Parts, parts
from ..errors import BadRequest, HubError
from ..singleuser import gitlink
from ..spawner import accounts
from ..spawner.local import LocalSpawner
from .admin import add_routes, admin_page, require_admin, section
from .pages import current, redirect, spawn_url

routes = web.RouteTableDef()
SETTING = "shared_dirs"
MAX_FOLDERS = 50
LINK_CONCURRENCY = 8  # link helpers running at once (one short process per home)
# Never shared, nor anything inside them: the system's own secrets and pseudo-filesystems.
SYSTEM = ("/root", "/etc", "/proc", "/sys", "/dev", "/boot", "/run", "/var/run")


# --- user-redirect ---------------------------------------------------------------------------
@routes.get("/hub/user-redirect")
@routes.get("/hub/user-redirect/{tail:.*}")
async def user_redirect(request: web.Request) -> web.Response:
    """The same path and query on the caller's own default server: at once when it runs,
    else through its start (the spawn page: options form or progress, then on)."""
    user = current(request)  # not logged in: the login page, then back here
    p = parts(request)
    target = f"{p.cfg.base_url}user/{user.name}/{_tail(request.match_info.get('tail', ''))}"
    if request.query:
        target += "?" + urlencode(list(request.query.items()))
    srv = p.servers.peek(user.id)
    if srv is not None and srv.status == "running":
        raise redirect(target)
    raise redirect(f"{spawn_url(p, user, '')}?next={quote(target, safe='')}")


def _tail(tail: str) -> str:
    """The path, normalised so that no ../ climbs out of the user's own prefix."""
    if not tail.strip("/"):
        return ""
    norm = posixpath.normpath("/" + tail).lstrip("/")
    return quote(norm, safe="/:@!$&'()*+,;=~") + ("/" if tail.endswith("/") else "")


# --- the admin page's section ------------------------------------------------------------------
@section("_admin_course.html", 60)
async def course_values(request: web.Request) -> dict[str, Any]:
    p = parts(request)
    q = request.query
    built = {k: q.get(f"course_{k}", "").strip() for k in ("repo", "branch", "file", "target")}
    link, link_error = "", ""
    if built["repo"]:
        try:
            link = build_link(request, p, built)
        except BadRequest as e:
            link_error = e.message
    return {
        "course": built,
        "course_link": link,
        "course_link_error": link_error,
        "class_folders": list(p.settings.get(SETTING)),
        "config_folders": list(p.cfg.get("users.shared_dirs")),
        "may_share_folders": allows(request, "admin:users"),
    }


def build_link(request: web.Request, p: Parts, f: dict[str, str]) -> str:
    """The nbgitpuller link for the builder's fields (absolute: it is pasted elsewhere)."""
    repo = gitlink.check_repo(f["repo"])
    gitlink.check_branch(f["branch"])
    default = posixpath.basename(urlsplit(repo).path.rstrip("/")).removesuffix(".git")
    target = gitlink.relative_path(f["target"] or default, "The folder") or default
    gitlink.check_visible(target, "The folder")
    file = gitlink.relative_path(f["file"], "The file to open")
    query = {"repo": repo}
    if f["branch"]:
        query["branch"] = f["branch"]
    rel = posixpath.join(target, file) if file else target
    query["urlpath"] = _view(p, rel, bool(file)) + rel
    if f["target"]:
        query["targetPath"] = target
    return f"{_origin(request, p)}{p.cfg.base_url}hub/user-redirect/git-pull?{urlencode(query)}"


def _view(p: Parts, rel: str, is_file: bool) -> str:
    if str(p.servers.protocol.landing_path()).lstrip("/").startswith("lab"):
        return "lab/tree/"
    if rel.endswith(".ipynb"):
        return "notebooks/"
    return "edit/" if is_file and "." in posixpath.basename(rel) else "tree/"


def _origin(request: web.Request, p: Parts) -> str:
    public = urlsplit(str(p.cfg.get("hub.public_url")))
    if public.netloc:
        return f"{public.scheme}://{public.netloc}"
    return f"{request.scheme}://{request.host}"


# --- class folders -------------------------------------------------------------------------------
@routes.post("/hub/admin/course/folders")
async def add_folder(request: web.Request) -> web.Response:
    """Share a folder read-only: every hub user's home gets a link to it, now and at spawn."""
    _may_share(request)
    p = parts(request)
    path = (await read_form(request)).get("path", "").strip()
    try:
        real = await asyncio.to_thread(check_folder, path, p)
    except BadRequest as e:
        return await admin_page(request, error=e.message, status=e.status)
    await p.settings.set(SETTING, [*p.settings.get(SETTING), real])
    done = await link_homes(p, [real], remove=False)
    return await admin_page(request, f"Shared {real} read-only: {done}")


@routes.post("/hub/admin/course/folders/remove")
async def remove_folder(request: web.Request) -> web.Response:
    _may_share(request)
    p = parts(request)
    path = (await read_form(request)).get("path", "").strip()
    folders = list(p.settings.get(SETTING))
    if path not in folders:
        return await admin_page(request, error=f"{path[:200]} is not a class folder.", status=404)
    await p.settings.set(SETTING, [d for d in folders if d != path])
    done = await link_homes(p, [path], remove=True)
    return await admin_page(request, f"Stopped sharing {path}: {done}")


def _may_share(request: web.Request) -> None:
    require_admin(request)
    require(request, "admin:users", "every user's home")


def check_folder(path: str, p: Parts) -> str:
    """The folder's real path if it may be shared read-only with every user; BadRequest
    says why not. Blocking (stat, the account database): run it in a thread."""
    if not path.startswith("/") or "\0" in path or len(path) > 4096:
        raise BadRequest("Give the folder's absolute path, like /srv/class/week1.")
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError as e:
        raise BadRequest(f"{path[:200]}: {e.strerror}.") from None
    if not stat.S_ISDIR(st.st_mode):
        raise BadRequest(f"{path[:200]} is not a folder.")
    _not_private(real, p)
    if st.st_uid != 0:
        raise BadRequest(
            f"{real} belongs to {_owner(st.st_uid)}: a class folder must be root's so that "
            f"users cannot change it (chown root {real})."
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise BadRequest(
            f"{real} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}): users "
            f"could change the class's files (chmod go-w {real})."
        )
    if st.st_mode & (stat.S_IROTH | stat.S_IXOTH) != stat.S_IROTH | stat.S_IXOTH:
        raise BadRequest(f"Users cannot open {real} (chmod o+rx {real}).")
    shared = [*p.settings.get(SETTING), *p.cfg.get("users.shared_dirs")]
    if real in shared:
        raise BadRequest(f"{real} is shared already.")
    if len(p.settings.get(SETTING)) >= MAX_FOLDERS:
        raise BadRequest(f"At most {MAX_FOLDERS} class folders: remove one first.")
    name = os.path.basename(real)
    if any(os.path.basename(d.rstrip("/")) == name for d in shared):
        raise BadRequest(f"A folder named {name} is shared already: its link would clash.")
    return real


def _not_private(real: str, p: Parts) -> None:
    """Refuse /, the system's folders, the hub's data, and users' homes (or what holds them)."""
    if real == "/":
        raise BadRequest("Sharing / would show users the whole machine.")
    for d in SYSTEM:
        if _within(real, d):
            raise BadRequest(f"{real} is a system folder ({d}): it cannot be shared.")
    data = os.path.realpath(p.cfg.data_dir)
    if _within(real, data) or _within(data, real):
        raise BadRequest(f"{real} holds the hub's own data ({data}): it cannot be shared.")
    uid_min = int(p.cfg.get("spawner.uid_min"))
    for pw in pwd.getpwall():
        if (
            pw.pw_uid < uid_min
            or pw.pw_uid in accounts.NOBODY_UIDS
            or not pw.pw_dir.startswith("/")
        ):
            continue
        home = os.path.realpath(pw.pw_dir)
        if home != "/" and (_within(real, home) or _within(home, real)):
            raise BadRequest(f"{real} is or holds {pw.pw_name}'s home: homes are never shared.")


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


async def link_homes(p: Parts, dirs: list[str], remove: bool) -> str:
    """Link (or unlink) `dirs` in every hub user's home, each as its user; what happened."""
    if os.geteuid() != 0 or not isinstance(p.servers.spawner, LocalSpawner):
        return "homes get the link when their servers start."
    uid_min = int(p.cfg.get("spawner.uid_min"))
    gate = asyncio.Semaphore(LINK_CONCURRENCY)

    async def one(name: str) -> dict[str, str]:
        async with gate:
            try:
                account = await asyncio.to_thread(accounts.lookup_account, name, uid_min=uid_min)
            except HubError:  # no Unix account yet: linked at its first spawn
                return {}
            if remove:
                return await accounts.unlink_shared_dirs(account, dirs)
            return await accounts.link_shared_dirs(account, dirs)

    outcomes = [
        o
        for r in await asyncio.gather(*(one(u.name) for u in await p.store.list_users()))
        for o in r.values()
    ]
    changed = sum(o in ("created", "removed") for o in outcomes)
    kept = len(outcomes) - changed - sum(o == "ok" for o in outcomes)
    verb = "removed from" if remove else "linked into"
    text = f"{verb} {changed} home(s)"
    if kept:
        text += f"; {kept} home(s) kept a file of that name (see the hub's log)"
    if not remove:
        text += "; servers running now show it after their next start"
    return text + "."


def setup(app: web.Application, base_url: str) -> None:
    add_routes(app, base_url, list(routes))
