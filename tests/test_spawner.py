"""LocalSpawner and accounts with real system users and real processes."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import SystemUser, needs_root

from minihub.errors import SpawnError
from minihub.procfs import proc_stat
from minihub.spawner.accounts import (
    create_system_user,
    link_shared_dirs,
    lookup_account,
    unprivileged_account,
)
from minihub.spawner.base import UNKNOWN_EXIT
from minihub.spawner.cgroups import UserCgroup
from minihub.spawner.local import LocalSpawner, open_log, tail_log
from minihub.spawner.process import Account, LaunchSpec, Proc

pytestmark = needs_root

# A stand-in server: reads its config from stdin, then answers every connection on the
# inherited socket with a JSON report of who and where it is. Optional helpers it starts:
# "ignore_term" (a grandchild ignoring SIGTERM, same group) and "escape" (a grandchild that
# leaves the group with setsid and ignores SIGTERM too).
REPORTER = r"""
import json, os, signal, socket, subprocess, sys, time
cfg = json.loads(sys.stdin.readline())
print("reporter-started", flush=True)
print("to-stderr", file=sys.stderr, flush=True)
sleeper = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(300)"
kids = {}
if cfg.get("ignore_term"):
    kids["ignore_term"] = subprocess.Popen([sys.executable, "-c", sleeper]).pid
if cfg.get("escape"):
    kids["escape"] = subprocess.Popen([sys.executable, "-c", sleeper],
                                      start_new_session=True).pid
mask = os.umask(0); os.umask(mask)
def environ_block():
    # the environment block it started with, read from its own memory (a forked process:
    # its fork server's), as a user's code could; /proc/self/stat fields 50-51 say where
    import ctypes
    fields = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
    start, end = int(fields[47]), int(fields[48])
    return ctypes.string_at(start, end - start).decode("utf-8", "replace") if end > start else ""
report = {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
          "groups": sorted(os.getgroups()), "env": dict(os.environ), "cwd": os.getcwd(),
          "umask": mask, "pid": os.getpid(), "pgid": os.getpgid(0), "sid": os.getsid(0),
          "cfg": cfg, "kids": kids,
          "environ": environ_block()}
srv = socket.socket(fileno=cfg["listen_fd"])
while True:
    conn, _ = srv.accept()
    conn.sendall(json.dumps(report).encode())
    conn.close()
"""


def make_spec(
    account: Account, log_dir: Path, cmd: list[str] | None = None, **kw: Any
) -> LaunchSpec:
    config = kw.pop("config", {})
    return LaunchSpec(
        username=kw.pop("username", account.name),
        account=account,
        cmd=cmd or [sys.executable, "-c", REPORTER],
        env=kw.pop("env", {"MINIHUB_VISIBLE": "yes"}),
        cwd=kw.pop("cwd", account.home),
        stdin_config={"secret": "s3cret", **config},
        log_path=log_dir / f"{account.name}.log",
        **kw,
    )


async def report(proc: Proc, timeout: float = 20) -> dict[str, Any]:
    async def ask() -> dict[str, Any]:
        reader, writer = await asyncio.open_connection(proc.host, proc.port)
        data = await reader.read()
        writer.close()
        await writer.wait_closed()
        return dict(json.loads(data))

    return await asyncio.wait_for(ask(), timeout)


def gone(pid: int) -> bool:
    info = proc_stat(pid)
    return info is None or info[0] == "Z"


def ignores_term(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    sigign = next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn"))
    return bool(int(sigign, 16) & (1 << (signal.SIGTERM - 1)))


async def wait_for(cond: Callable[[], bool], timeout: float = 10) -> bool:
    for _ in range(int(timeout / 0.05)):
        if cond():
            return True
        await asyncio.sleep(0.05)
    return cond()


@pytest.fixture(scope="module")
def alice(make_system_user: Callable[..., SystemUser]) -> Iterator[Account]:
    u = make_system_user("mhsp_alice", groups=["users"])
    yield lookup_account(u.name, uid_min=1000)
    UserCgroup.for_user(u.name).remove()


@pytest.fixture
def log_dir(data_dir: str) -> Path:
    return Path(data_dir) / "logs"


@pytest.fixture
async def spawner() -> AsyncIterator[LocalSpawner]:
    sp = LocalSpawner()
    started: list[Proc] = []
    orig = sp.start

    async def start(spec: LaunchSpec) -> Proc:
        proc = await orig(spec)
        started.append(proc)
        return proc

    sp.start = start  # type: ignore[method-assign]
    yield sp
    for proc in started:
        await sp.stop_process(proc, 2)
    await sp.close()


async def test_server_runs_as_the_user_with_a_clean_environment(
    spawner: LocalSpawner, alice: Account, log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINIHUB_TEST_SECRET", "must-not-leak")
    proc = await spawner.start_process(make_spec(alice, log_dir, umask=0o027))
    r = await report(proc)
    assert (r["uid"], r["euid"], r["gid"]) == (alice.uid, alice.uid, alice.gid)
    assert r["groups"] == sorted(set(alice.groups))
    assert 100 in r["groups"]  # supplementary group "users"
    assert r["cwd"] == alice.home
    assert r["umask"] == 0o027
    assert r["pid"] == r["pgid"] == r["sid"] == proc.pid
    env = r["env"]
    assert "MINIHUB_TEST_SECRET" not in env
    assert env["MINIHUB_VISIBLE"] == "yes"
    assert (env["HOME"], env["USER"], env["LOGNAME"]) == (alice.home, alice.name, alice.name)
    assert env["SHELL"] == "/bin/bash" and env["PATH"]
    assert (
        set(env) - {"MINIHUB_VISIBLE", "HOME", "USER", "LOGNAME", "SHELL", "PATH", "LC_CTYPE"}
        == set()
    )
    assert r["cfg"]["secret"] == "s3cret" and "listen_fd" in r["cfg"]
    assert await spawner.poll_process(proc) is None


async def test_log_file_is_the_users_and_tail_shows_output(
    spawner: LocalSpawner, alice: Account, log_dir: Path
) -> None:
    spec = make_spec(alice, log_dir)
    proc = await spawner.start_process(spec)
    await report(proc)
    st = os.stat(spec.log_path)
    # the hub's, not the user's: a user owning it could grow it by name past the cap
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), 0o600)
    assert await wait_for(lambda: "to-stderr" in tail_log(spec.log_path))
    assert "reporter-started" in tail_log(spec.log_path)
    assert tail_log(spec.log_path, lines=1).strip() in ("to-stderr", "reporter-started")
    assert tail_log(log_dir / "missing.log") == ""


def test_log_rotates_when_big_and_tail_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "u.log"
    path.parent.mkdir()
    path.write_bytes(b"x" * (5 << 20) + b"\nlast line\n")
    assert tail_log(path, lines=1) == "last line"
    assert len(tail_log(path, lines=10**6)) <= 64 << 10
    fd = open_log(path, 1234, 1234)
    os.close(fd)
    assert path.stat().st_size == 0 and path.stat().st_uid == 1234
    assert Path(str(path) + ".1").stat().st_size > 5 << 20


def test_log_refuses_a_planted_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("precious")
    (tmp_path / "u.log").symlink_to(target)
    with pytest.raises(OSError):
        open_log(tmp_path / "u.log", 1234, 1234)
    assert target.read_text() == "precious" and target.stat().st_uid == 0


async def test_refuses_root_and_low_uids(
    spawner: LocalSpawner, alice: Account, log_dir: Path
) -> None:
    with pytest.raises(SpawnError, match="root"):
        lookup_account("root", uid_min=0)
    with pytest.raises(SpawnError, match=r"uid_min"):
        lookup_account(alice.name, uid_min=alice.uid + 1)
    with pytest.raises(SpawnError, match="uid_min"):
        lookup_account("daemon", uid_min=1000)
    with pytest.raises(SpawnError, match="create_system_users"):
        lookup_account("mhsp_nobody_here", uid_min=1000)
    root = Account("root", 0, 0, (0,), "/root", "/bin/sh")
    with pytest.raises(SpawnError, match="root"):
        await spawner.start_process(make_spec(root, log_dir))


async def test_start_errors_are_for_people(
    spawner: LocalSpawner, alice: Account, log_dir: Path
) -> None:
    with pytest.raises(SpawnError, match="notebook_dir"):
        await spawner.start_process(make_spec(alice, log_dir, cwd="/nonexistent/dir"))
    with pytest.raises(SpawnError, match=r"permission denied.*\[spawner\] python"):
        await spawner.start_process(make_spec(alice, log_dir, cmd=["/root/somewhere/python"]))
    with pytest.raises(SpawnError, match="no such file"):
        await spawner.start_process(make_spec(alice, log_dir, cmd=["/usr/bin/no-such-python"]))


async def test_server_that_exits_at_once_reports_its_log(
    spawner: LocalSpawner, alice: Account, log_dir: Path
) -> None:
    cmd = [sys.executable, "-c", "import sys; sys.exit('config? no thanks')"]
    try:
        proc = await spawner.start_process(make_spec(alice, log_dir, cmd=cmd))
    except SpawnError as e:  # it may die before or after reading its stdin
        assert "no thanks" in e.log_tail
        return
    assert await wait_for(lambda: gone(proc.pid))
    assert await spawner.poll_process(proc) == 1
    assert "no thanks" in tail_log(log_dir / f"{alice.name}.log")


async def test_stop_kills_the_group_and_escaped_kernels(
    spawner: LocalSpawner, alice: Account, log_dir: Path
) -> None:
    spec = make_spec(alice, log_dir, config={"ignore_term": True, "escape": True})
    proc = await spawner.start_process(spec)
    kids = (await report(proc))["kids"]
    assert await wait_for(lambda: ignores_term(kids["ignore_term"]))
    assert await wait_for(lambda: ignores_term(kids["escape"]))
    await spawner.stop_process(proc, timeout=1)
    assert gone(proc.pid)
    assert await spawner.poll_process(proc) == -signal.SIGTERM
    assert gone(kids["ignore_term"])
    if proc.extra.get("cgroup"):  # without cgroups a setsid'd process cannot be found
        assert gone(kids["escape"])
    else:
        os.kill(kids["escape"], signal.SIGKILL)


async def test_poll_and_readoption(spawner: LocalSpawner, alice: Account, log_dir: Path) -> None:
    proc = await spawner.start_process(make_spec(alice, log_dir))
    await report(proc)
    fresh = LocalSpawner()  # as after a hub restart: knows only the stored Proc
    assert await fresh.poll_process(proc) is None
    reused = Proc(proc.pid, proc.start_ticks + 1, proc.host, proc.port)
    assert await fresh.poll_process(reused) == UNKNOWN_EXIT
    assert await spawner.poll_process(reused) == UNKNOWN_EXIT
    os.kill(proc.pid, signal.SIGKILL)
    assert await wait_for(lambda: gone(proc.pid))
    assert await fresh.poll_process(proc) == UNKNOWN_EXIT
    assert await spawner.poll_process(proc) == -signal.SIGKILL
    await fresh.close()


async def test_readopting_spawner_stops_a_live_server(
    spawner: LocalSpawner, alice: Account, log_dir: Path
) -> None:
    proc = await spawner.start_process(make_spec(alice, log_dir, config={"ignore_term": True}))
    kids = (await report(proc))["kids"]
    assert await wait_for(lambda: ignores_term(kids["ignore_term"]))
    stored = Proc(**json.loads(json.dumps(proc.__dict__)))  # as read back from SQLite
    fresh = LocalSpawner()
    await fresh.stop_process(stored, timeout=1)
    assert gone(proc.pid) and gone(kids["ignore_term"])
    assert await fresh.poll_process(stored) == UNKNOWN_EXIT
    await fresh.close()


async def test_listen_on_ipv6_loopback(
    spawner: LocalSpawner, alice: Account, log_dir: Path
) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no ::1")
    proc = await spawner.start_process(make_spec(alice, log_dir, listen_host="::1"))
    assert (await report(proc))["uid"] == alice.uid


def _userdel(name: str) -> None:
    subprocess.run(["userdel", "-r", "-f", name], capture_output=True, check=False)


async def test_create_system_user_copies_skel(tmp_path: Path) -> None:
    skel = tmp_path / "skel"
    skel.mkdir()
    (skel / ".marker").write_text("from skel")
    (skel / "link-marker").symlink_to("/usr/share")
    name = "mhsp_created"
    await asyncio.to_thread(_userdel, name)
    try:
        await create_system_user(name, skel_dir=str(skel))
        acct = lookup_account(name, uid_min=1000)
        home = Path(acct.home)
        assert (home / ".marker").read_text() == "from skel"
        assert os.readlink(home / "link-marker") == "/usr/share"
        assert acct.shell == "/bin/bash" and home.stat().st_uid == acct.uid
        with pytest.raises(SpawnError, match="useradd says"):
            await create_system_user(name)
    finally:
        await asyncio.to_thread(_userdel, name)
    with pytest.raises(SpawnError, match="not a valid Unix user name"):
        await create_system_user("-o")


async def test_shared_dirs_are_linked_idempotently(alice: Account, tmp_path: Path) -> None:
    shared = [str(tmp_path / "datasets"), str(tmp_path / "course")]
    for d in shared:
        os.mkdir(d)
    home = Path(alice.home)
    (home / "course").unlink(missing_ok=True)
    await asyncio.to_thread(
        subprocess.run,
        ["install", "-o", alice.name, "-m", "600", "/dev/null", str(home / "course")],
        check=True,
    )
    (home / "datasets").unlink(missing_ok=True)
    first = await link_shared_dirs(alice, shared)
    assert first[shared[0]] == "created"
    assert first[shared[1]].startswith("kept")
    assert os.readlink(home / "datasets") == shared[0]
    assert os.lstat(home / "datasets").st_uid == alice.uid  # made by the user, not root
    assert not (home / "course").is_symlink()
    again = await link_shared_dirs(alice, shared)
    assert again[shared[0]] == "ok" and again[shared[1]].startswith("kept")
    assert await link_shared_dirs(alice, []) == {}


def test_unprivileged_account(data_dir: str) -> None:
    acct = unprivileged_account(data_dir, "someone")
    assert acct.uid == os.getuid() and acct.home == f"{data_dir}/users/someone"
    assert stat.S_IMODE(os.stat(acct.home).st_mode) == 0o700
    assert acct.name == pwd.getpwuid(os.getuid()).pw_name
    with pytest.raises(SpawnError):
        unprivileged_account(data_dir, "../escape")


def _singleuser_available() -> bool:
    try:
        return importlib.util.find_spec("minihub.singleuser.__main__") is not None
    except ImportError:
        return False


@pytest.mark.skipif(not _singleuser_available(), reason="minihub.singleuser not written yet")
async def test_real_singleuser_server(spawner: LocalSpawner, alice: Account, log_dir: Path) -> None:
    base_url = f"/user/{alice.name}/"
    config = {
        "base_url": base_url,
        "notebook_dir": alice.home,
        "user": alice.name,
        "kernel_idle_timeout": 0,
        "mem_limit": 0,
    }
    # The server is the venv's minihub (python -I ignores PYTHONPATH), never one of the
    # user's: a ~/minihub/ in its working directory would be first on sys.path with -m and
    # get the server's secret and proof.
    home = Path(alice.home)
    planted = home / "minihub" / "singleuser"
    planted.mkdir(parents=True, exist_ok=True)
    (home / "minihub" / "__init__.py").write_text("")
    (planted / "__init__.py").write_text("")
    (planted / "__main__.py").write_text(
        "import sys\nopen('hijacked', 'w').write(sys.stdin.read())\n"
    )
    subprocess.run(["chown", "-R", f"{alice.uid}:{alice.gid}", str(home / "minihub")], check=True)
    env = {"PYTHONPATH": str(home)}  # ignored too
    cmd = [sys.executable, "-m", "minihub.singleuser"]
    spec = make_spec(alice, log_dir, cmd=cmd, config=config, env=env)
    proc = await spawner.start_process(spec)
    url = f"http://{proc.host}:{proc.port}{base_url}api/status"
    status = 0
    async with aiohttp.ClientSession() as s:
        for _ in range(300):  # bounded: about 30 s
            try:
                async with s.get(url, headers={"X-Minihub-Secret": "s3cret"}) as r:
                    status = r.status
                    break
            except aiohttp.ClientConnectionError:
                assert await spawner.poll_process(proc) is None, tail_log(spec.log_path)
                await asyncio.sleep(0.1)
        assert status == 200, tail_log(spec.log_path)
        async with s.get(url) as r:
            assert r.status == 403
        kernels = await _start_kernel(s, proc, base_url, spec.log_path)
    assert not (home / "hijacked").exists()
    shutil.rmtree(home / "minihub")
    for pid in kernels:
        info = proc_stat(pid)
        assert info is not None and info[3] == alice.uid
    await spawner.stop_process(proc, timeout=5)
    assert await spawner.poll_process(proc) is not None
    assert all(gone(pid) for pid in kernels)


async def _start_kernel(s: aiohttp.ClientSession, proc: Proc, base_url: str, log: Path) -> set[int]:
    """Start a real kernel; the pids it added to the user's cgroup (empty without cgroups)."""
    url = f"http://{proc.host}:{proc.port}{base_url}api/kernels"
    async with s.post(url, json={}, headers={"X-Minihub-Secret": "s3cret"}) as r:
        assert r.status == 201, (await r.text(), tail_log(log))
    cg = UserCgroup.from_paths(proc.extra.get("cgroup", []))
    if not cg.enabled:
        return set()
    assert await wait_for(lambda: len(cg.pids() - {proc.pid}) > 0, 30)
    return cg.pids() - {proc.pid}


# A hub that starts one server, prints its Proc, and dies by SIGKILL without cleaning up.
DYING_HUB = r"""
import asyncio, json, os, signal, sys
from pathlib import Path
from minihub.spawner.process import Account, LaunchSpec
from minihub.spawner.local import LocalSpawner
args = json.loads(sys.argv[1])
async def main():
    acct = Account(**{**args["account"], "groups": tuple(args["account"]["groups"])})
    spec = LaunchSpec(username=acct.name, account=acct, cmd=args["cmd"], env={},
                      cwd=acct.home, stdin_config={"ignore_term": True},
                      log_path=Path(args["log"]))
    proc = await LocalSpawner().start_process(spec)
    print(json.dumps(proc.__dict__), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
asyncio.run(main())
"""


async def test_readoption_after_the_hub_was_killed(alice: Account, log_dir: Path) -> None:
    args = {
        "account": alice.__dict__,
        "cmd": [sys.executable, "-c", REPORTER],
        "log": str(log_dir / "dying.log"),
    }
    hub = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        DYING_HUB,
        json.dumps(args),
        stdout=subprocess.PIPE,
        cwd=str(Path(__file__).parent.parent),
    )
    out, _ = await asyncio.wait_for(hub.communicate(), 30)
    assert hub.returncode == -signal.SIGKILL
    proc = Proc(**json.loads(out))
    new_hub = LocalSpawner()
    try:
        assert await new_hub.poll_process(proc) is None
        r = await report(proc)
        assert r["uid"] == alice.uid and proc_stat(proc.pid) is not None
        assert await wait_for(lambda: ignores_term(r["kids"]["ignore_term"]))
        await new_hub.stop_process(proc, timeout=1)
        assert gone(proc.pid) and gone(r["kids"]["ignore_term"])
        assert await new_hub.poll_process(proc) == UNKNOWN_EXIT
    finally:
        await new_hub.stop_process(proc, timeout=1)
        await new_hub.close()


# The hub running as an ordinary user: servers run as that user, one directory each, and
# without cgroup permissions spawning still works (unlimited, said once in the log).
UNPRIVILEGED_HUB = r"""
import asyncio, json, logging, socket, sys
from pathlib import Path
from minihub.spawner.accounts import unprivileged_account
from minihub.spawner.process import LaunchSpec
from minihub.spawner.local import LocalSpawner
logging.basicConfig(level=logging.WARNING)
data_dir, reporter = sys.argv[1], sys.argv[2]
async def main():
    acct = unprivileged_account(data_dir, "bob")
    spec = LaunchSpec(username="bob", account=acct, cmd=[sys.executable, "-c", reporter],
                      env={}, cwd=acct.home, stdin_config={},
                      log_path=Path(data_dir) / "logs" / "bob.log", mem_limit=100 << 20)
    sp = LocalSpawner()
    proc = await sp.start_process(spec)
    reader, writer = await asyncio.open_connection(proc.host, proc.port)
    report = json.loads(await asyncio.wait_for(reader.read(), 20))
    writer.close()
    await sp.stop_process(proc, 2)
    print(json.dumps({"report": report, "home": acct.home, "after": await sp.poll_process(proc)}))
    await sp.close()
asyncio.run(main())
"""


@pytest.fixture
def user_writable_dir(alice: Account) -> Iterator[Path]:
    """A directory alice owns (pytest's tmp_path sits below a root-only directory)."""
    path = Path(tempfile.mkdtemp(prefix="mhsp-"))
    os.chown(path, alice.uid, alice.gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_unprivileged_hub_spawns_as_itself(alice: Account, user_writable_dir: Path) -> None:
    data = user_writable_dir
    hub = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        UNPRIVILEGED_HUB,
        str(data),
        REPORTER,
        user=alice.uid,
        group=alice.gid,
        extra_groups=list(alice.groups),
        cwd="/",
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(Path(__file__).parent.parent),
            "HOME": alice.home,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(hub.communicate(), 60)
    assert hub.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["report"]["uid"] == alice.uid
    assert result["report"]["cwd"] == result["home"] == f"{data}/users/bob"
    assert result["after"] == -signal.SIGTERM
    assert err.decode().count("not enforced") == 1, err.decode()


def test_ports_handed_out_at_once_are_never_the_same() -> None:
    """Servers that bind their own port get it from free_port moments before; spawns at
    once (the growth benchmark's 20) once drew the same one and the second failed with
    "Address already in use". Within the window no port is handed out twice."""
    from minihub.spawner import local

    got = [local.free_port("127.0.0.1") for _ in range(2000)]
    assert len(set(got)) == len(got)
    assert all(p < local._ephemeral_low() for p in got[:1000])


def test_trying_a_port_never_binds_one_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """free_port tries a port by binding it for a moment; a port it handed out earlier is
    being bound by its server meanwhile (with SO_REUSEADDR, as asyncio and tornado do), and
    a try then made that bind fail: "Address already in use", 1 spawn in ~3,000 at 20 at a
    time. Here one thread keeps asking for ports with the handed-out one drawn first, while
    this one binds it as its server would, 3,000 times: it never fails."""
    import random
    import threading

    from minihub.spawner import local

    handed = local.free_port("127.0.0.1")
    draw = random.sample

    def handed_first(population: Any, k: int) -> list[int]:
        return [handed, *draw(population, k)]

    monkeypatch.setattr(local.random, "sample", handed_first)
    stop = threading.Event()
    given: list[int] = []

    def ask() -> None:
        while not stop.is_set():
            given.append(local.free_port("127.0.0.1"))

    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    try:
        for _ in range(3000):
            with socket.socket() as srv:
                srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                srv.bind(("127.0.0.1", handed))  # OSError here: a try bound it meanwhile
    finally:
        stop.set()
        asker.join(10)
    assert given and handed not in given


def test_no_server_runs_as_nobody() -> None:
    """A hub user named nobody (an OAuth login under allow_all, say) must not run as the
    account that owns every file whose owner is unmapped (uid 65534 passes uid_min)."""
    from minihub.spawner.accounts import lookup_account

    with pytest.raises(SpawnError) as e:
        lookup_account("nobody", uid_min=1000)
    assert e.value.status == 403 and "nobody" in e.value.message
