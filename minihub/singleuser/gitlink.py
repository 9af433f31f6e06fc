"""The parameters of an nbgitpuller link (minihub.singleuser.gitpull runs the pull), checked
before git sees them: a repository URL git may fetch from, a branch name, paths that stay in
the notebook dir, and where to land afterwards."""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from ..errors import BadRequest

_BRANCH = re.compile(r"^(?!-)(?!.*\.\.)(?!.*//)(?!.*@\{)[A-Za-z0-9._/+-]{1,200}(?<![./])$")
_CONTROL = re.compile(r"[\x00-\x20\x7f\\]")


@dataclass(frozen=True)
class Link:
    repo: str
    branch: str  # "" = the repository's default branch
    target: str  # relative to the notebook dir, normalised, never escaping it
    sub_path: str  # inside the target
    urlpath: str  # "" = open target/sub_path
    depth: int  # 0 = full history
    backup: bool  # move an existing copy aside and clone afresh


def _arg(query: Mapping[str, str], *names: str) -> str:
    for n in names:
        if query.get(n):
            return query[n]
    return ""


def parse_link(query: Mapping[str, str]) -> Link:
    """The link's parameters, checked (BadRequest says which one is wrong and why)."""
    repo = check_repo(_arg(query, "repo"))
    branch = check_branch(_arg(query, "branch"))
    default = posixpath.basename(urlsplit(repo).path.rstrip("/")).removesuffix(".git")
    target = relative_path(_arg(query, "targetPath", "targetpath") or default, "targetPath")
    if not target:
        raise BadRequest("targetPath must name a folder inside your home.")
    check_visible(target, "targetPath")
    sub = relative_path(_arg(query, "subPath", "subpath"), "subPath")
    depth = _arg(query, "depth") or "1"
    if not (depth.isascii() and depth.isdigit() and len(depth) <= 7):
        raise BadRequest("depth must be a number of commits (0: all of them).")
    return Link(
        repo,
        branch,
        target,
        sub,
        check_urlpath(_arg(query, "urlpath", "urlPath")),
        int(depth),
        _arg(query, "backup").lower() in ("1", "true", "yes"),
    )


def check_branch(branch: str) -> str:
    if branch and not _BRANCH.match(branch):
        raise BadRequest(f"branch {branch[:80]!r} is not a branch name.")
    return branch


def check_repo(repo: str) -> str:
    """An http(s):// or git:// URL with a host: never a local path, file://, ext:: or an
    option git would read from the argument."""
    if not repo:
        raise BadRequest("The link has no repo: it must name a git repository (repo=https://…).")
    if len(repo) > 2000 or _CONTROL.search(repo) or "::" in repo or repo.startswith("-"):
        raise BadRequest(f"repo {repo[:80]!r} is not a repository URL.")
    parts = urlsplit(repo)
    if parts.scheme not in ("http", "https", "git") or not parts.hostname:
        raise BadRequest(
            f"repo {repo[:80]!r} is not an http://, https:// or git:// URL: course links "
            "pull from a git server, never from a path on this machine."
        )
    return repo


def relative_path(value: str, what: str) -> str:
    """A path inside the notebook dir, normalised; BadRequest when it would leave it."""
    if not value.strip("/") or value.strip() in (".", "./"):
        return ""
    if _CONTROL.search(value.replace(" ", "")) or len(value) > 1000:
        raise BadRequest(f"{what} {value[:80]!r} is not a path.")
    if value.startswith(("/", "~")):
        raise BadRequest(f"{what} must be relative to your home, not {value[:80]!r}.")
    norm = posixpath.normpath(value)
    if norm == ".." or norm.startswith("../"):
        raise BadRequest(f"{what} {value[:80]!r} leads out of your home.")
    return "" if norm == "." else norm


def check_visible(target: str, what: str) -> None:
    """No hidden folder in the target (nor the repository's name, its default): programs
    read settings and code there (.ipython/profile_default/startup, .local/lib/…/
    site-packages, .ssh, .jupyter, .config), and a link on any website starts a pull."""
    if any(part.startswith(".") for part in target.split("/")):
        raise BadRequest(
            f"{what} {target[:80]!r} is in a hidden folder (a name starting with '.'), where "
            "programs read their settings and code: course files go in a visible folder."
        )


def check_urlpath(value: str) -> str:
    """Where to go afterwards, relative to this server (never another origin)."""
    value = value.lstrip("/")
    if not value:
        return ""
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or "\\" in value or re.search(r"[\x00-\x1f\x7f]", value):
        raise BadRequest("urlpath must be a path on your server, like tree/course/intro.ipynb.")
    path = posixpath.normpath(parts.path) if parts.path else ""
    if path == ".." or path.startswith("../"):
        raise BadRequest("urlpath must stay on your server.")
    return path + (f"?{parts.query}" if parts.query else "")


def landing(base_url: str, link: Link, root: str) -> str:
    """urlpath, or the view of what was pulled: a notebook opens, a file is edited, a folder
    is listed (JupyterLab's lab/tree when app=lab: its server has no other view)."""
    if link.urlpath:
        return base_url + link.urlpath
    rel = posixpath.join(link.target, link.sub_path) if link.sub_path else link.target
    os_path = os.path.join(root, rel)
    if rel.endswith(".ipynb"):
        view = "notebooks/"
    elif os.path.isfile(os_path):
        view = "edit/"
    else:
        view = "tree/"
    return base_url + view + quote(rel)
