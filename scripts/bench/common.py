"""Shared helpers for the side-by-side benchmark: installs, system users, memory, statistics.

Everything here runs as root on loopback; each helper is bounded in count and time.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path("/opt/minihub-bench")  # world-readable: users' servers run JupyterHub's venv
JH_VENV = BENCH_DIR / "jhvenv"
CHP_DIR = BENCH_DIR / "chp"
CHP_BIN = CHP_DIR / "node_modules" / ".bin" / "configurable-http-proxy"
PREFIX = "mhbn"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- installs


def install_jupyterhub() -> None:
    """JupyterHub, JupyterLab and ipykernel in their own venv from Debian's python."""
    BENCH_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(BENCH_DIR, 0o755)
    if not (JH_VENV / "bin" / "jupyterhub-singleuser").exists():
        log(f"installing jupyterhub, jupyterlab, ipykernel into {JH_VENV} ...")
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(JH_VENV)], check=True)
        subprocess.run(
            [
                str(JH_VENV / "bin" / "pip"),
                "install",
                "-q",
                "jupyterhub",
                "jupyterlab",
                "ipykernel",
            ],
            check=True,
            timeout=900,
        )
    if not CHP_BIN.exists():
        log(f"installing configurable-http-proxy with npm into {CHP_DIR} ...")
        subprocess.run(
            [
                "npm",
                "install",
                "--silent",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(CHP_DIR),
                "configurable-http-proxy",
            ],
            check=True,
            timeout=600,
        )


def versions() -> dict[str, str]:
    code = (
        "import importlib.metadata as m\nfor p in ('jupyterhub','jupyterlab','jupyter_server',"
        "'ipykernel'):\n    print(p, m.version(p))"
    )
    out = subprocess.run(
        [str(JH_VENV / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    found = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    chp = subprocess.run(
        [str(CHP_BIN), "--version"], capture_output=True, text=True, timeout=60, check=False
    ).stdout.strip()
    found["configurable-http-proxy"] = chp
    mh = subprocess.run(
        [sys.executable, "-c", ("import importlib.metadata as m; print(m.version('minihub'))")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout.strip()
    found["minihub"] = mh or "checkout"
    found["python"] = sys.version.split()[0]
    return found


def machine() -> str:
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPUs ({model}), {mem / 1024:.1f} GiB RAM, Linux {os.uname().release}"


# --------------------------------------------------------------------------- system users


@dataclass
class Users:
    """Real system accounts mhbn0..; passwords kept for the login test."""

    passwords: dict[str, str] = field(default_factory=dict)

    def make(self, name: str) -> None:
        self.remove(name)
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True, capture_output=True)
        pw = "pw-" + secrets.token_urlsafe(12)
        subprocess.run(
            ["chpasswd"], input=f"{name}:{pw}\n", text=True, check=True, capture_output=True
        )
        self.passwords[name] = pw

    def ensure(self, names: list[str]) -> None:
        for n in names:
            if n not in self.passwords:
                self.make(n)

    @staticmethod
    def remove(name: str) -> None:
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True, check=False)
        subprocess.run(["userdel", "-r", "-f", name], capture_output=True, check=False)

    def remove_all(self) -> None:
        for name in list(self.passwords):
            self.remove(name)
        self.passwords.clear()

    @staticmethod
    def uid(name: str) -> int:
        return pwd.getpwnam(name).pw_uid


def leftover_users() -> list[str]:
    return [p.pw_name for p in pwd.getpwall() if p.pw_name.startswith(PREFIX)]


# --------------------------------------------------------------------------- processes, memory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rollup_kib(pid: int) -> dict[str, int]:
    """One process's smaps_rollup, KiB by field (Pss, Pss_Anon, Pss_File, ...); {} if gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if rest.strip().endswith("kB"):
                    out[key] = int(rest.split()[0])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


def pss_kib(pid: int) -> int:
    """Proportional set size of one process (0 if it is gone)."""
    return rollup_kib(pid).get("Pss", 0)


def pids_of_uid(uid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            out.append(int(entry))
                        break
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def children(pid: int) -> list[int]:
    """Direct children, from /proc/PID/task/*/children."""
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task") if os.path.exists(f"/proc/{pid}/task") else []:
        try:
            out += [int(x) for x in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return out


def owner(pid: int) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return -1


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def user_pss_mib(name: str) -> float:
    return sum(pss_kib(p) for p in pids_of_uid(Users.uid(name))) / 1024


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait(10)


def wait_http(port: int, proc: subprocess.Popen[bytes], path: str, timeout: float = 60) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"hub on port {port} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing answered on port {port} after {timeout}s")


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- statistics


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def replace_block(path: Path, begin: str, end: str, text: str) -> None:
    """Put `text` between the markers `begin` and `end` in a doc; the prose around them is
    hand-written and stays. A doc without both markers is left alone (and said so)."""
    old = path.read_text()
    if begin not in old or end not in old:
        log(f"no {begin!r} marker pair in {path}: not written")
        return
    head, rest = old.split(begin, 1)
    path.write_text(head + begin + "\n" + text + end + rest.split(end, 1)[1])
    log(f"wrote {path}")
