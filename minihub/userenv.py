"""The user environment kernels run in: a venv of its own, shared by every user, that root
installs a class's packages into; users' own `pip install` land in their ~/.local instead.

Why and how: docs/environments.md. `minihub env create|install|list` (commands.py) call this.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import HubError
from .kernels.zygote import USER_ENV_VAR
from .procfs import proc_stat

DEFAULT_PACKAGES = ("ipykernel", "numpy", "pandas", "matplotlib", "ipywidgets")
# pyvenv.cfg includes the system's site-packages only because that is what makes Python and
# pip accept a user site (~/.local) in a venv; this line, run by site while it reads the
# venv's own site-packages, drops the system's dist-packages again (Debian's python3-*).
PTH_NAME = "minihub-user-env.pth"
PTH_LINE = "import site, sys; site.PREFIXES[:] = [p for p in site.PREFIXES if p == sys.prefix]\n"
TIMEOUT = 1800  # seconds for one pip run: numpy and pandas from the registry on a slow line
# A terminal runs a login shell, and Debian's /etc/profile sets PATH afresh: without this the
# terminal's python and pip are Debian's (pip refuses `--user`: externally managed).
PROFILE = Path("/etc/profile.d/minihub-user-env.sh")
PROFILE_TEXT = f"""# Written by `minihub env create` (docs/environments.md): in minihub's servers, whose
# terminals run login shells, the user environment's bin/ (python, pip) leads PATH again after
# /etc/profile has reset it. Elsewhere {USER_ENV_VAR} is unset and this does nothing.
if [ -n "${{{USER_ENV_VAR}-}}" ] && [ -x "${USER_ENV_VAR}/bin/python" ]; then
  case ":$PATH:" in
    *":${USER_ENV_VAR}/bin:"*) ;;
    *) PATH="${USER_ENV_VAR}/bin:$PATH"; export PATH ;;
  esac
fi
"""


@dataclass(frozen=True)
class Kernel:
    """A running process of the user environment (a kernel, or a server's kernel zygote)."""

    pid: int
    user: str
    zygote: bool


def python(env: Path) -> Path:
    return env / "bin" / "python"


def site_packages(env: Path) -> Path:
    v = sys.version_info
    return env / "lib" / f"python{v.major}.{v.minor}" / "site-packages"


def create(env: Path, packages: tuple[str, ...] = DEFAULT_PACKAGES) -> list[str]:
    """Make the environment, or bring one up to date; returns what had to be done (nothing
    when it is already as it should be: a second run downloads nothing)."""
    done = []
    if not python(env).is_file():
        base = getattr(sys, "_base_executable", sys.executable)
        _run([base, "-m", "venv", "--system-site-packages", str(env)])
        done.append(f"created {env}")
    pth = site_packages(env) / PTH_NAME
    if not pth.is_file() or pth.read_text() != PTH_LINE:
        pth.write_text(PTH_LINE)
        done.append(f"wrote {pth}")
    missing = [p for p in packages if not _installed(env, p)]
    if missing:
        pip_install(env, missing, quiet=True)
        done.append("installed " + " ".join(missing))
    if write_kernelspec(env):
        done.append("wrote the python3 kernelspec")
    if write_profile():
        done.append(f"wrote {PROFILE}")
    readable(env)
    return done


def pip_install(env: Path, packages: list[str], quiet: bool = False) -> None:
    """pip into the environment itself (--no-user: never root's ~/.local)."""
    if not python(env).is_file():
        raise HubError(f"{env}: no user environment here; run `minihub env create`", status=404)
    flags = ["--no-user", "--no-input", *(["-q"] if quiet else [])]
    _run([str(python(env)), "-m", "pip", "install", *flags, *packages])
    readable(env)


def packages(env: Path) -> list[tuple[str, str]]:
    """(name, version) of what the environment itself holds, users' sites left out."""
    out = _run(
        [str(python(env)), "-m", "pip", "list", "--format=json", "--path", str(site_packages(env))],
        capture=True,
    )
    return [(p["name"], p["version"]) for p in json.loads(out)]


def running(env: Path) -> list[Kernel]:
    """Processes started from the environment's python: every kernel and kernel zygote. Its
    bin/python is a symlink to the system's, so /proc/PID/exe cannot tell; argv[0] can."""
    exe = str(python(env))
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and (argv := _argv(int(name))) and argv[0] == exe:
            pid = int(name)
            info = proc_stat(pid)
            if info is not None and info.state not in ("Z", "X"):
                parent = _argv(info.ppid)
                zygote = "zygote.main()" in "".join(argv[2:3]) and parent != argv
                found.append(Kernel(pid, _user(info.uid), zygote))
    return found


def readable(env: Path) -> None:
    """Every user runs it: files a+r, directories a+rx (pip keeps root's umask)."""
    for root, dirs, files in os.walk(env):
        for name in dirs + files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                mode = os.stat(path).st_mode
                want = mode | 0o444 | (0o111 if name in dirs or mode & 0o100 else 0)
                if want != mode:
                    os.chmod(path, want)


def _installed(env: Path, name: str) -> bool:
    found = list(site_packages(env).glob("*.dist-info"))
    norm = name.lower().replace("-", "_")
    return any(d.name.lower().split("-")[0].replace(".", "_") == norm for d in found)


def write_kernelspec(env: Path) -> bool:
    """python3 as ipykernel's wheel ships it (logos, language), with this python's absolute
    path (the wheel's "python" would be the server's, as jupyter_client reads it) and none of
    `ipykernel install`'s debugger flags (-Xfrozen_modules=off: the bridge offers no
    debugger, and a kernel started with flags cannot be forked from the zygote)."""
    spec_file = env / "share" / "jupyter" / "kernels" / "python3" / "kernel.json"
    try:
        spec = json.loads(spec_file.read_text())
    except (OSError, ValueError):
        spec = {"display_name": "Python 3 (ipykernel)", "language": "python", "metadata": {}}
    argv = [str(python(env)), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    if spec.get("argv") == argv:
        return False
    spec["argv"] = argv
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(json.dumps(spec, indent=1) + "\n")
    return True


def write_profile(path: Path = PROFILE) -> bool:
    """The login shells' PATH fix (root only; a machine without /etc/profile.d goes without)."""
    if os.geteuid() != 0 or not path.parent.is_dir():
        return False
    with contextlib.suppress(OSError):
        if path.read_text() == PROFILE_TEXT:
            return False
    path.write_text(PROFILE_TEXT)
    path.chmod(0o644)
    return True


def _argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0")[:-1]]
    except OSError:
        return []


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _run(cmd: list[str], capture: bool = False) -> str:
    try:
        done = subprocess.run(
            cmd,
            check=False,
            text=True,
            timeout=TIMEOUT,
            stdout=subprocess.PIPE if capture else None,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HubError(f"{cmd[0]}: {e}", status=500) from None
    if done.returncode != 0:
        raise HubError(f"`{' '.join(cmd[:4])} ...` failed (exit {done.returncode})", status=500)
    return done.stdout or ""
