"""nbgitpuller-compatible course links in the user's own server, so git runs as the user.

GET git-pull?repo=…&branch=…&urlpath=…&targetPath=…&subPath=…&app=… answers a page that
follows GET git-pull/api (same query), a text/event-stream of git's output lines. The first
pull clones into <notebook dir>/<targetPath>; later ones merge with nbgitpuller's rules: the
student's changes win (-Xours), a file the student deleted comes back, a local file in the
way of a new upstream file is renamed with a timestamp, a file the student changed and
upstream deleted is kept. Every event is JSON: {"phase": "syncing", "output": line},
{"phase": "finished", "redirect": url} or {"phase": "error", "kind", "message", "output"}.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import jinja2
from aiohttp import web

from ..errors import BadRequest, Forbidden
from .gitlink import Link, landing, parse_link
from .http import CONFIG, run

log = logging.getLogger("minihub.singleuser.gitpull")

GIT_TIMEOUT = 600.0  # one git command, a clone of a big course repository included
KEEPALIVE = 15.0  # seconds between comments on a quiet stream (proxies drop idle ones)
LOCK_WAIT = 60.0  # a second click waits this long for the first pull to finish
STALE_LOCK = 600.0  # an index.lock older than this is a crashed git's, as nbgitpuller says
MAX_LINES = 5000  # lines streamed to the page per pull; the rest are counted
TAIL_LINES = 30  # lines of a failed command shown with its explanation
PROTOCOLS = "http:https:git"  # GIT_ALLOW_PROTOCOL: no file://, ext::, ssh, fd::
COMMIT_ID = ["-c", "user.email=nbgitpuller@minihub.invalid", "-c", "user.name=nbgitpuller"]
# Not ours to choose: a student's gpg or hooks settings must not stop the automatic commit.
NO_SIGN = ["-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null"]

_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)")

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(Path(__file__).resolve().parent.parent / "web/templates")),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
LOCK = web.AppKey("gitpull_lock", asyncio.Lock)  # one pull at a time: git locks its index


class PullError(Exception):
    """A pull that cannot go on; `kind` names the class of failure for the page."""

    def __init__(self, kind: str, message: str, output: str = "") -> None:
        super().__init__(message)
        self.kind, self.message, self.output = kind, message, output


# --- running git ---------------------------------------------------------------------------
def git_env() -> dict[str, str]:
    """The server's own environment (the user's HOME and PATH), no prompts, and only the
    protocols a course link may use, for every command and every redirect it follows."""
    return {
        **os.environ,
        "LANG": "C",
        "LC_ALL": "C",
        "GIT_ALLOW_PROTOCOL": PROTOCOLS,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false",
        "GIT_EDITOR": ":",
        "GIT_MERGE_AUTOEDIT": "no",
    }


class Stream:
    """The event stream to the page; a page that went away stops hearing, not the pull."""

    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response
        self.gone = False
        self.lines = 0

    async def send(self, event: dict[str, object]) -> None:
        await self._write(f"data: {json.dumps(event)}\n\n")

    async def output(self, line: str) -> None:
        self.lines += 1
        if self.lines == MAX_LINES:
            line = "… (more output not shown)\n"
        if self.lines <= MAX_LINES:
            await self.send({"phase": "syncing", "output": line})

    async def keepalive(self) -> None:
        await self._write(": still working\n\n")

    async def _write(self, text: str) -> None:
        if self.gone:
            return
        try:
            await self.response.write(text.encode())
        except (ConnectionError, RuntimeError):
            self.gone = True


async def git(stream: Stream, cwd: str, *args: str, check: bool = True) -> tuple[int, str]:
    """Run `git args…` in `cwd`, streaming each output line as it comes (\\r-terminated
    progress lines too); (exit status, output). A failure raises PullError unless not
    `check`; GIT_TIMEOUT bounds it."""
    shown = [a for a in args if not a.startswith(("user.", "commit.", "core.hooks"))]
    await stream.output("$ git " + " ".join(a for a in shown if a != "-c") + "\n")
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        env=git_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    out: list[str] = []
    try:
        async with asyncio.timeout(GIT_TIMEOUT):
            await _relay(proc, stream, out)
            status = await proc.wait()
    except TimeoutError:
        raise PullError(
            "network",
            f"git {subcommand(args)} took longer than {GIT_TIMEOUT:.0f} s and was stopped.",
        ) from None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = "".join(out)
    if status != 0 and check:
        raise explain(args, text)
    return status, text


async def _relay(proc: asyncio.subprocess.Process, stream: Stream, out: list[str]) -> None:
    assert proc.stdout is not None
    pending = ""
    while True:
        try:
            chunk = await asyncio.wait_for(proc.stdout.read(4096), KEEPALIVE)
        except TimeoutError:
            await stream.keepalive()
            continue
        if not chunk:
            break
        pending += chunk.decode("utf-8", "replace")
        end = 0
        for m in _LINE.finditer(pending):
            await stream.output(m.group())
            out.append(m.group())
            end = m.end()
        pending = pending[end:]
        del out[: max(0, len(out) - 2 * TAIL_LINES)]
    if pending:
        await stream.output(pending + "\n")
        out.append(pending + "\n")


def subcommand(args: tuple[str, ...]) -> str:
    """clone, for ("-c", "user.name=x", "clone", ...)."""
    it = iter(args)
    for a in it:
        if a == "-c":
            next(it, None)
        elif not a.startswith("-"):
            return a
    return "git"


def explain(args: tuple[str, ...], text: str) -> PullError:
    """What a failed git command means for a person, from what git printed."""
    tail = "".join(text.splitlines(keepends=True)[-TAIL_LINES:])
    low = text.lower()
    host = next((urlsplit(a).hostname for a in args if "://" in a), None) or "the server"
    if "not allowed" in low and "transport" in low:
        why = "This hub pulls only over http, https and git:// URLs."
        return PullError("input", why, tail)
    if "could not resolve host" in low or "name or service not known" in low:
        why = f"The machine {host} was not found: check the repository's address in the link."
        return PullError("network", why, tail)
    if any(
        s in low
        for s in ("connection refused", "failed to connect", "unable to connect", "timed out")
    ) or ("network is unreachable" in low):
        why = (
            f"Could not connect to {host} (the connection was refused or timed out): the git "
            "server is down, or this machine may not reach it."
        )
        return PullError("network", why, tail)
    if any(
        s in low
        for s in ("could not read username", "authentication failed", "terminal prompts disabled")
    ):
        why = "The repository asks for a password: course links pull public repositories only."
        return PullError("repo", why, tail)
    if any(
        s in low
        for s in (
            "not found",
            "does not appear to be a git repository",
            "not exported",
            "returned error: 4",
            "not valid: is this a git repository",
            "no such repository",
        )
    ):
        why = "There is no git repository at that address: check the repo in the link."
        return PullError("repo", why, tail)
    return PullError("unknown", f"git {subcommand(args)} failed.", tail)


# --- the pull --------------------------------------------------------------------------------
async def remote_refs(stream: Stream, root: str, repo: str) -> tuple[str, dict[str, str]]:
    """(default branch, {name: "heads"|"tags"}) from one `git ls-remote`."""
    _, text = await git(stream, root, "ls-remote", "--symref", "--", repo)
    default, refs = "", dict[str, str]()
    for line in text.splitlines():
        fields = line.split()
        if line.startswith("ref: refs/heads/") and fields[-1] == "HEAD":
            default = fields[1].removeprefix("refs/heads/")
        elif len(fields) == 2 and fields[1].startswith(("refs/heads/", "refs/tags/")):
            kind, name = fields[1].removeprefix("refs/").split("/", 1)
            if not name.endswith("^{}"):
                refs.setdefault(name, kind)
    return default, refs


def choose_branch(link: Link, default: str, refs: dict[str, str]) -> tuple[str, str]:
    """(branch, heads|tags) the pull follows; PullError lists the branches there are."""
    if link.branch in refs:
        return link.branch, refs[link.branch]
    if not link.branch and default:
        return default, "heads"
    heads = sorted(n for n, k in refs.items() if k == "heads")
    if not link.branch:
        raise PullError("repo", "The repository is empty: it has no branch to pull.")
    listed = ", ".join(heads[:20]) + (" …" if len(heads) > 20 else "")
    raise PullError(
        "branch",
        f"The repository has no branch {link.branch!r}"
        + (f" (its branches: {listed})." if heads else "."),
    )


def target_state(root: str, link: Link) -> str:
    """'new', 'empty' or 'clone' for the target folder; PullError when it cannot be one."""
    path = os.path.join(root, link.target)
    parent = os.path.realpath(os.path.dirname(path))
    if parent != root and not parent.startswith(root.rstrip("/") + "/"):
        raise PullError("input", f"targetPath {link.target!r} leads out of your home.")
    if os.path.islink(path):
        raise PullError("input", f"{link.target} is a link: choose another targetPath.")
    if not os.path.lexists(path):
        return "new"
    if not os.path.isdir(path):
        raise PullError(
            "input", f"{link.target} exists and is a file: rename it, or choose another targetPath."
        )
    if os.path.isdir(os.path.join(path, ".git")):
        return "clone"
    if not os.listdir(path):
        return "empty"
    raise PullError(
        "input",
        f"The folder {link.target} exists and is not a copy of this repository: rename it, "
        "or give the link another targetPath.",
    )


def backup_name(path: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
    candidate, n = f"{path}_backup_{stamp}", 0
    while os.path.lexists(candidate):
        n += 1
        candidate = f"{path}_backup_{stamp}.{n}"
    return candidate


def timestamped(path: str) -> str:
    """Untitled1.ipynb -> Untitled1__20240101120000.ipynb (nbgitpuller's rename)."""
    head, name = os.path.split(path)
    stem, ext = os.path.splitext(name)
    return os.path.join(head, f"{stem}__{datetime.datetime.now():%Y%m%d%H%M%S}{ext}")


async def pull(stream: Stream, root: str, link: Link) -> None:
    """Clone or update the link's target; PullError says why not."""
    default, refs = await remote_refs(stream, root, link.repo)
    branch, kind = choose_branch(link, default, refs)
    state = await run(target_state, root, link)
    path = os.path.join(root, link.target)
    if state == "clone" and link.backup:
        moved = await run(backup_name, path)
        await run(os.rename, path, moved)
        await stream.output(f"Your copy was moved to {os.path.relpath(moved, root)}\n")
        state = "new"
    if state in ("new", "empty"):
        await clone(stream, root, link, branch)
    else:
        await update(stream, path, link, branch, kind)


async def clone(stream: Stream, root: str, link: Link, branch: str) -> None:
    depth = ["--depth", str(link.depth)] if link.depth else []
    await git(
        stream,
        root,
        "clone",
        "--progress",
        *depth,
        "--branch",
        branch,
        "--",
        link.repo,
        link.target,
    )


async def update(stream: Stream, path: str, link: Link, branch: str, kind: str) -> None:
    """nbgitpuller's merge: fetch; rename what would be overwritten; restore deleted files;
    commit the student's changes; merge upstream with the student's side winning."""
    _, origin = await git(stream, path, "config", "--get", "remote.origin.url", check=False)
    if origin.strip().rstrip("/") != link.repo.rstrip("/"):
        raise PullError(
            "input",
            f"The folder {link.target} holds a copy of another repository "
            f"({origin.strip()[:200] or 'none'}): give the link another targetPath.",
        )
    await check_lock(stream, path)
    upstream = f"refs/remotes/origin/{branch}"
    await git(stream, path, "fetch", "--progress", "origin", f"+refs/{kind}/{branch}:{upstream}")
    await rename_in_the_way(stream, path, upstream)
    _, deleted = await git(stream, path, "ls-files", "--deleted", "-z")
    gone = [f for f in deleted.split("\0") if f.strip("\n")]
    for i in range(0, len(gone), 200):  # the student's deleted files come back
        await git(stream, path, "checkout", "HEAD", "--", *gone[i : i + 200])
    await git(stream, path, "reset", "--mixed", "-q")
    dirty, _ = await git(stream, path, "diff-files", "--quiet", check=False)
    if dirty:
        await commit_all(stream, path)
    await merge(stream, path, link, upstream)


async def check_lock(stream: Stream, path: str) -> None:
    lock = os.path.join(path, ".git", "index.lock")
    try:
        age = await run(lambda: datetime.datetime.now().timestamp() - os.path.getmtime(lock))
    except FileNotFoundError:
        return
    if age < STALE_LOCK:
        raise PullError(
            "busy", "Another git command is working in this folder: try again in a few minutes."
        )
    await stream.output("Removing a stale .git/index.lock\n")
    with contextlib.suppress(FileNotFoundError):
        await run(os.remove, lock)


async def rename_in_the_way(stream: Stream, path: str, upstream: str) -> None:
    """A local file where upstream adds one is renamed with a timestamp, never overwritten."""
    _, text = await git(
        stream, path, "diff", "--name-status", "--no-renames", "-z", f"HEAD..{upstream}"
    )
    fields = text.split("\0")
    added = [fields[i + 1] for i in range(0, len(fields) - 1, 2) if fields[i] == "A"]
    for f in added:
        local = os.path.join(path, f)
        if await run(os.path.lexists, local):
            new = await run(timestamped, local)
            await run(os.rename, local, new)
            await stream.output(
                f"Renamed your {f} to {os.path.relpath(new, path)}: the course "
                "added a file of that name\n"
            )


async def commit_all(stream: Stream, path: str) -> None:
    await git(
        stream,
        path,
        *COMMIT_ID,
        *NO_SIGN,
        "commit",
        "-q",
        "-a",
        "--allow-empty",
        "--no-verify",
        "-m",
        "Automatic commit by minihub's git-pull",
    )


async def merge(stream: Stream, path: str, link: Link, upstream: str) -> None:
    status, text = await git(
        stream, path, *COMMIT_ID, *NO_SIGN, "merge", "-Xours", "--no-edit", upstream, check=False
    )
    if status == 0:
        return
    if "CONFLICT (modify/delete)" in text and "CONFLICT (content)" not in text:
        await stream.output("Keeping the files you changed that the course deleted\n")
        await commit_all(stream, path)
        return
    await git(stream, path, "merge", "--abort", check=False)
    raise PullError(
        "conflict",
        "Your copy and the course's repository could not be merged (its history was "
        "rewritten, or your copy has commits of its own). Your files are unchanged. "
        f"Use “Keep my copy and get a fresh one” to move {link.target} aside and clone again.",
        "".join(text.splitlines(keepends=True)[-TAIL_LINES:]),
    )


# --- the handlers ------------------------------------------------------------------------------
def _root(request: web.Request) -> str:
    return os.path.realpath(request.app[CONFIG].notebook_dir)


async def page(request: web.Request) -> web.Response:
    """The progress page; a bad link is explained here at once (400)."""
    cfg = request.app[CONFIG]
    error, link = "", None
    try:
        link = parse_link(request.query)
    except BadRequest as e:
        error = e.message
    html = _env.get_template("nb_gitpull.html").render(
        base_url=cfg.base_url,
        hub_url=(cfg.base_url.rpartition("/user/")[0] or "") + "/hub/",
        link=link,
        error=error,
        api_url=cfg.base_url + "git-pull/api?" + request.rel_url.raw_query_string,
        backup_url=cfg.base_url + "git-pull?" + _with_backup(request),
        git=bool(shutil.which("git")),
    )
    return web.Response(
        text=html,
        content_type="text/html",
        status=400 if error else 200,
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


def _with_backup(request: web.Request) -> str:
    from urllib.parse import urlencode

    query = [(k, v) for k, v in request.query.items() if k != "backup"]
    return urlencode([*query, ("backup", "true")])


async def api(request: web.Request) -> web.StreamResponse:
    """The pull itself, as a text/event-stream; only this origin's pages may start one."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        raise Forbidden("A pull starts from its own page, not from another site.")
    link = parse_link(request.query)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    stream = Stream(response)
    await run_pull(request, stream, link)
    with contextlib.suppress(ConnectionError, RuntimeError):
        await response.write_eof()
    return response


async def run_pull(request: web.Request, stream: Stream, link: Link) -> None:
    root = _root(request)
    lock = request.app[LOCK]
    try:
        async with asyncio.timeout(LOCK_WAIT):
            await lock.acquire()
    except TimeoutError:
        await stream.send(_error(PullError("busy", "Another pull is running: try again soon.")))
        return
    try:
        await pull(stream, root, link)
        await stream.send(
            {"phase": "finished", "redirect": landing(request.app[CONFIG].base_url, link, root)}
        )
        log.info("pulled %s into %s", link.repo[:200], link.target[:200])
    except PullError as e:
        log.info("pull of %s failed: %s", link.repo[:200], e.message)
        await stream.send(_error(e))
    except FileNotFoundError as e:
        if e.filename == "git":
            why = "git is not installed on the machine your server runs on: ask an admin."
        else:
            why = f"No such file or directory: {e.filename}"
        await stream.send(_error(PullError("unknown", why)))
    except OSError as e:
        await stream.send(_error(PullError("unknown", f"{e.strerror or e}")))
    finally:
        lock.release()


def _error(e: PullError) -> dict[str, object]:
    return {"phase": "error", "kind": e.kind, "message": e.message, "output": e.output}


def setup(app: web.Application, base_url: str) -> None:
    app[LOCK] = asyncio.Lock()
    app.router.add_get(base_url + "git-pull", page)
    app.router.add_get(base_url + "git-pull/api", api)
