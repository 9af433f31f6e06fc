"""Unix accounts user servers run as: lookup with safety checks, creation, shared-dir links.

Everything here may block (NSS lookups, useradd, a short subprocess), so callers in the event
loop use the async functions or wrap `lookup_account` in `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import SpawnError
from .process import Account

log = logging.getLogger("minihub.spawner")

# What useradd accepts everywhere (and what cannot be mistaken for an option).
_UNIX_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
_SUBPROCESS_TIMEOUT = 30.0
NOBODY_UIDS = frozenset({65534, 4294967294})  # nobody, in 16- and 32-bit


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
    if pw.pw_uid in NOBODY_UIDS:  # the kernel's overflow ids: files of unmapped owners
        raise SpawnError(
            f"minihub never runs a server as {name!r} (uid {pw.pw_uid}, the 'nobody' account, "
            "which owns whatever has no owner of its own).",
            status=403,
        )
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


async def ensure_account(
    name: str, *, create: bool, home_mode: int, creating: Callable[[], object] = lambda: None
) -> None:
    """A Unix account `name` exists afterwards, or SpawnError (400) says what the admin can do.
    `create` is [users] create_system_users; `creating` is called just before it does."""
    if await asyncio.to_thread(account_exists, name):
        return
    if not create:
        raise SpawnError(
            f"There is no Unix account named {name!r} on this hub's machine yet. An admin can "
            f"create it (useradd -m {name}) or set [users] create_system_users = true.",
            status=400,
        )
    creating()
    await create_system_user(name, home_mode=home_mode)


def account_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


async def create_system_user(
    name: str, *, skel_dir: str | None = None, home_mode: int = 0o700
) -> None:
    """`useradd -m -s /bin/bash NAME` (home populated from /etc/skel, or from `skel_dir`),
    the home then set to `home_mode` ([users] home_mode): Debian's useradd makes it 0755,
    which lets every other user read every notebook in it."""
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
    await asyncio.to_thread(_set_home_mode, name, home_mode)
    log.info("created Unix account %s (home mode %04o)", name, home_mode)


def _set_home_mode(name: str, mode: int) -> None:
    """chmod the fresh home without following a link (no user process has run yet, but a
    planted link must never turn this into a chmod of something else)."""
    home = pwd.getpwnam(name).pw_dir
    try:
        fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        log.warning("cannot set the mode of %s's home %s: %s", name, home, e.strerror)
        return
    try:
        if os.fstat(fd).st_uid == pwd.getpwnam(name).pw_uid:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


def open_homes(names: list[str]) -> list[tuple[str, str, int]]:
    """(user, home, mode) of the accounts among `names` whose home others may read or enter
    (the class folders in [users] shared_dirs are meant to be readable; homes are not)."""
    found = []
    for name in names:
        try:
            home = pwd.getpwnam(name).pw_dir
            mode = stat.S_IMODE(os.stat(home).st_mode)
        except (KeyError, OSError):
            continue
        if mode & (stat.S_IROTH | stat.S_IXOTH) and home not in ("/", ""):
            found.append((name, home, mode))
    return found


def apply_disk_quota(account: Account, limit: int) -> str:
    """Set the account's hard block quota on its home's filesystem with setquota; "" when
    done, else why it cannot be (no quota tools, quotas not on for that filesystem...)."""
    if shutil.which("setquota") is None or shutil.which("quotaon") is None:
        return "the quota tools are not installed (apt install quota)"
    mount = mount_point(account.home)
    state = _run(["quotaon", "-p", "-u", mount])
    if state is None or "is on" not in state.stdout:
        return (
            f"user quotas are not on for {mount} (mount it with usrquota, then "
            "quotacheck and quotaon; the kernel needs quota support)"
        )
    kib = str(max(1, limit >> 10))
    done = _run(["setquota", "-u", account.name, "0", kib, "0", "0", mount])
    if done is None or done.returncode != 0:
        why = (done.stderr or done.stdout).strip()[-200:] if done else "did not run"
        return f"setquota for {account.name} on {mount} failed: {why}"
    return ""


def mount_point(path: str) -> str:
    """The mount point of the filesystem holding `path` (the longest mounted prefix)."""
    real = os.path.realpath(path)
    best = "/"
    with open("/proc/self/mounts") as f:
        for line in f:
            point = line.split()[1].replace("\\040", " ")
            inside = real == point or real.startswith(point.rstrip("/") + "/")
            if inside and len(point) > len(best):
                best = point
    return best


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(
            cmd,
            check=False,
            capture_output=True,
            text=True,
            timeout=_SUBPROCESS_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


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


# The reverse, as the user too: only a link that leads exactly to the folder goes.
_UNLINK_SCRIPT = r"""
import json, os, sys
home, dirs = sys.argv[1], json.loads(sys.argv[2])
out = {}
for d in dirs:
    link = os.path.join(home, os.path.basename(d.rstrip("/")))
    try:
        if os.path.islink(link) and os.readlink(link) == d:
            os.unlink(link)
            out[d] = "removed"
        else:
            out[d] = "ok"
    except OSError as e:
        out[d] = "error: " + (e.strerror or str(e))
print(json.dumps(out))
"""


async def unlink_shared_dirs(account: Account, dirs: list[str], python: str = "") -> dict[str, str]:
    """Remove <home>/<basename(dir)> where it is a link to dir (what `link_shared_dirs`
    made); {dir: "removed" | "ok" (no such link) | "error: ..."}."""
    wanted = [os.path.abspath(d) for d in dirs if d and os.path.basename(d.rstrip("/"))]
    if not wanted:
        return {}
    try:
        out = await asyncio.to_thread(
            _run_link_script, account, wanted, python or sys.executable, _UNLINK_SCRIPT
        )
        result: dict[str, str] = json.loads(out)
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        log.warning("unlinking shared dirs for %s failed: %s", account.name, e)
        return {d: f"error: {e}" for d in wanted}
    return result


def drop_to(account: Account) -> tuple[int | None, int | None, list[int] | None]:
    """Popen's user=, group=, extra_groups= for the account (only root may, and needs to)."""
    if os.geteuid() != 0:
        return None, None, None
    return account.uid, account.gid, list(account.groups)


def _run_link_script(
    account: Account, dirs: list[str], python: str, script: str = _LINK_SCRIPT
) -> str:
    user, group, extra = drop_to(account)
    done = subprocess.run(
        [python, "-I", "-c", script, account.home, json.dumps(dirs)],
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


# --- removing an account (the admin page's "also remove the Unix account") ----------------


def removable_account(name: str, *, uid_min: int, keep: set[str]) -> pwd.struct_passwd | None:
    """The account `name` if minihub may remove it: an ordinary user (uid >= uid_min, not
    root, not one of `keep`, e.g. the admin asking) whose home, if any, is their own
    directory. None if there is no such account; SpawnError (403) says why not."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    nobody = pw.pw_uid in (65534, 2**32 - 2, 2**32 - 1)  # above any uid_min, yet the system's
    if pw.pw_uid == 0 or pw.pw_uid < max(uid_min, 1) or nobody or name in keep:
        raise SpawnError(
            f"The Unix account {name!r} (uid {pw.pw_uid}) is not an ordinary user's "
            f"(uid {max(uid_min, 1)} or more, not nobody, not yours): minihub does not "
            "remove it.",
            status=403,
        )
    try:
        st = os.lstat(pw.pw_dir)
    except FileNotFoundError:
        return pw
    except OSError as e:
        raise SpawnError(
            f"Cannot look at {name}'s home {pw.pw_dir}: {e.strerror}", status=403
        ) from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != pw.pw_uid or pw.pw_dir in ("/", ""):
        raise SpawnError(
            f"{name}'s home {pw.pw_dir} is not a directory of their own: minihub does not "
            "archive or remove it (remove the account by hand).",
            status=403,
        )
    return pw


async def remove_account(pw: pwd.struct_passwd, archive_dir: Path) -> Path | None:
    """Archive the account's home as <archive_dir>/<name>-<time>.tar.gz (root only, mode
    0600), then `userdel -r`. The archive is read by tar running as the user, so a link the
    user planted reaches only what they could read anyway. Returns the archive (None: no
    home). SpawnError if either step fails; the account is kept if the archive failed."""
    archive = None
    if os.path.isdir(pw.pw_dir):
        archive = await asyncio.to_thread(_archive_home, pw, archive_dir)
    cmd = ["userdel", *(["-r"] if archive else []), "--", pw.pw_name]
    done = await asyncio.to_thread(_run, cmd)
    if done is None or done.returncode != 0:
        why = (done.stderr or done.stdout).strip()[-300:] if done else "did not run"
        raise SpawnError(f"Could not remove the Unix account {pw.pw_name!r}: {why}", status=409)
    log.info("removed Unix account %s (home archived to %s)", pw.pw_name, archive)
    return archive


_ARCHIVE_TIMEOUT = 900.0


def _archive_home(pw: pwd.struct_passwd, archive_dir: Path) -> Path:
    archive_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(archive_dir, 0o700)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    path = archive_dir / f"{pw.pw_name}-{stamp}.tar.gz"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    user, group, extra = drop_to(_account(pw))
    try:
        with os.fdopen(fd, "wb") as out:
            done = subprocess.run(
                ["tar", "-C", pw.pw_dir, "-czf", "-", "."],
                check=False,
                stdout=out,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                timeout=_ARCHIVE_TIMEOUT,
                cwd="/",
                env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
                user=user,
                group=group,
                extra_groups=extra,
            )
    except (OSError, subprocess.TimeoutExpired) as e:
        path.unlink(missing_ok=True)
        raise SpawnError(f"Could not archive {pw.pw_name}'s home: {e}", status=409) from None
    if done.returncode != 0:
        path.unlink(missing_ok=True)
        why = done.stderr.decode(errors="replace").strip()[-300:]
        raise SpawnError(
            f"Could not archive {pw.pw_name}'s home, so the account is kept: tar says: {why}",
            status=409,
        )
    return path
