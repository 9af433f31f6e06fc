"""Unix accounts user servers run as: lookup with safety checks, creation, shared-dir links.

Everything here may block (NSS lookups, useradd, a short subprocess), so callers in the event
loop use the async functions or wrap `lookup_account` in `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import grp
import json
import logging
import os
import pwd
import re
import subprocess
import sys
from pathlib import Path

from ..errors import SpawnError
from .base import Account

log = logging.getLogger("minihub.spawner")

# What useradd accepts everywhere (and what cannot be mistaken for an option).
_UNIX_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
_SUBPROCESS_TIMEOUT = 30.0


def lookup_account(name: str, *, uid_min: int, allow_root: bool = False) -> Account:
    """The account `name`, refusing root and uids below `uid_min` (SpawnError says why)."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise SpawnError(
            f"There is no Unix account named {name!r} on this machine. Create it, or set "
            "[users] create_system_users = true so minihub creates it at first start."
        ) from None
    if pw.pw_uid == 0 and not allow_root:
        raise SpawnError(f"minihub never runs a server as root ({name!r} has uid 0).", status=403)
    if 0 < pw.pw_uid < uid_min:
        raise SpawnError(
            f"Account {name!r} has uid {pw.pw_uid}, below [spawner] uid_min = {uid_min}. "
            "Lower uid_min in the configuration to let system accounts run servers.",
            status=403,
        )
    return _account(pw)


def _account(pw: pwd.struct_passwd) -> Account:
    # The groups initgroups() would give a login session: primary plus supplementary.
    groups = tuple(os.getgrouplist(pw.pw_name, pw.pw_gid))
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid, groups, pw.pw_dir, pw.pw_shell or "/bin/sh")


def group_names(account: Account) -> list[str]:
    """Names of the account's groups (for display and allowed_groups checks)."""
    names = []
    for gid in account.groups:
        try:
            names.append(grp.getgrgid(gid).gr_name)
        except KeyError:
            names.append(str(gid))
    return names


async def create_system_user(name: str, *, skel_dir: str | None = None) -> None:
    """`useradd -m -s /bin/bash NAME` (home populated from /etc/skel, or from `skel_dir`)."""
    if not _UNIX_NAME.match(name):
        raise SpawnError(
            f"Cannot create a Unix account for {name!r}: not a valid Unix user "
            "name (lowercase letters, digits, _ . -; at most 32 characters)."
        )
    cmd = ["useradd", "-m", "-s", "/bin/bash"]
    if skel_dir:
        cmd += ["-k", skel_dir]
    cmd += ["--", name]
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            cmd,
            capture_output=True,
            text=True,
            timeout=_SUBPROCESS_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SpawnError(f"Could not create the Unix account {name!r}: {e}") from None
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip()[-300:]
        log.error("useradd %s failed (exit %d): %s", name, done.returncode, why)
        raise SpawnError(f"Could not create the Unix account {name!r}: useradd says: {why}")
    log.info("created Unix account %s", name)


def unprivileged_account(data_dir: str | Path, name: str) -> Account:
    """When the hub is not root, every server runs as the hub's own account, one dir each."""
    if not name or "/" in name or name.startswith(".") or "\0" in name:
        raise SpawnError(f"User name {name!r} cannot be used as a directory name.")
    home = Path(data_dir) / "users" / name
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    pw = pwd.getpwuid(os.getuid())
    return Account(
        pw.pw_name,
        os.getuid(),
        os.getgid(),
        tuple(os.getgroups()) or (os.getgid(),),
        str(home),
        pw.pw_shell or "/bin/sh",
    )


# Run as the user, so the user's own permissions decide what can be created in their home:
# a root process creating links there could be redirected by a symlink the user planted
# (e.g. a home subdirectory swapped for a link to /etc) and would also fail on NFS homes
# with root_squash. As the user, the worst a planted link can do is what the user may do.
_LINK_SCRIPT = r"""
import json, os, sys
home, dirs = sys.argv[1], json.loads(sys.argv[2])
out = {}
for d in dirs:
    link = os.path.join(home, os.path.basename(d.rstrip("/")))
    try:
        if os.path.islink(link):
            out[d] = "ok" if os.readlink(link) == d else "kept: a different link exists"
        elif os.path.lexists(link):
            out[d] = "kept: a file or directory of that name exists"
        else:
            os.symlink(d, link)
            out[d] = "created"
    except OSError as e:
        out[d] = "error: " + (e.strerror or str(e))
print(json.dumps(out))
"""


async def link_shared_dirs(account: Account, dirs: list[str], python: str = "") -> dict[str, str]:
    """Make <home>/<basename(dir)> -> dir for each dir; never replaces anything existing.

    `python` runs the small helper as the user (default: this interpreter).

    Returns {dir: outcome} ("created", "ok", "kept: ...", "error: ..."); outcomes other
    than created/ok are logged but do not stop a spawn.
    """
    wanted = [os.path.abspath(d) for d in dirs if d and os.path.basename(d.rstrip("/"))]
    if not wanted:
        return {}
    try:
        out = await asyncio.to_thread(_run_link_script, account, wanted, python or sys.executable)
        result: dict[str, str] = json.loads(out)
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        log.warning("linking shared dirs for %s failed: %s", account.name, e)
        return {d: f"error: {e}" for d in wanted}
    for d, outcome in result.items():
        if outcome not in ("created", "ok"):
            log.warning("shared dir %s for %s: %s", d, account.name, outcome)
    return result


def drop_to(account: Account) -> tuple[int | None, int | None, list[int] | None]:
    """Popen's user=, group=, extra_groups= for the account (only root may, and needs to)."""
    if os.geteuid() != 0:
        return None, None, None
    return account.uid, account.gid, list(account.groups)


def _run_link_script(account: Account, dirs: list[str], python: str) -> str:
    user, group, extra = drop_to(account)
    done = subprocess.run(
        [python, "-I", "-c", _LINK_SCRIPT, account.home, json.dumps(dirs)],
        check=True,
        capture_output=True,
        text=True,
        timeout=_SUBPROCESS_TIMEOUT,
        stdin=subprocess.DEVNULL,
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
        user=user,
        group=group,
        extra_groups=extra,
    )
    return done.stdout
