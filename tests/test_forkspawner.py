"""ForkSpawner with real users: the same privilege drop, logs, stop and re-adoption as
LocalSpawner (test_spawner's stand-in server and checks), and the real user server forked."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from conftest import SystemUser, gone, needs_root
from test_spawner import _start_kernel, make_spec, report, wait_for

from minihub.errors import SpawnError
from minihub.procfs import proc_stat
from minihub.spawner.accounts import lookup_account
from minihub.spawner.cgroups import UserCgroup
from minihub.spawner.forkserver import ForkSpawner, forkable
from minihub.spawner.local import LocalSpawner, tail_log
from minihub.spawner.process import Account, LaunchSpec, Proc

pytestmark = needs_root


@pytest.fixture(scope="module")
def fred(make_system_user: Callable[..., SystemUser]) -> Iterator[Account]:
    u = make_system_user("mhfk_fred", groups=["users"])
    yield lookup_account(u.name, uid_min=1000)
    UserCgroup.for_user(u.name).remove()


@pytest.fixture
def log_dir(data_dir: str) -> Path:
    return Path(data_dir) / "logs"


@pytest.fixture
async def spawner() -> AsyncIterator[ForkSpawner]:
    sp = ForkSpawner()
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


def forked(sp: ForkSpawner, proc: Proc) -> bool:
    """The process is a child of the zygote, not an exec'd child of the hub."""
    info = proc_stat(proc.pid)
    return sp._zygote is not None and info is not None and info.ppid == sp._zygote.pid


async def test_forked_server_runs_as_the_user_with_a_clean_environment(
    spawner: ForkSpawner, fred: Account, log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINIHUB_TEST_SECRET", "must-not-leak")
    proc = await spawner.start_process(make_spec(fred, log_dir, umask=0o027))
    assert forked(spawner, proc)
    r = await report(proc)
    assert (r["uid"], r["euid"], r["gid"]) == (fred.uid, fred.uid, fred.gid)
    assert r["groups"] == sorted(set(fred.groups)) and 100 in r["groups"]
    assert r["cwd"] == fred.home
    assert r["umask"] == 0o027
    assert r["pid"] == r["pgid"] == r["sid"] == proc.pid
    env = r["env"]
    assert "MINIHUB_TEST_SECRET" not in env and env["MINIHUB_VISIBLE"] == "yes"
    # nor in the environment block the fork inherited from the fork server's memory
    assert "must-not-leak" not in r["environ"] and "PATH=" in r["environ"]
    assert (env["HOME"], env["USER"], env["LOGNAME"]) == (fred.home, fred.name, fred.name)
    assert (
        set(env) - {"MINIHUB_VISIBLE", "HOME", "USER", "LOGNAME", "SHELL", "PATH", "LC_CTYPE"}
        == set()
    )
    assert r["cfg"]["secret"] == "s3cret" and r["cfg"]["listen_fd"] == 3
    status = Path(f"/proc/{proc.pid}/status").read_text()
    caps = next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff"))
    assert int(caps, 16) == 0  # no root capabilities kept after the fork
    fds = set(map(int, os.listdir(f"/proc/{proc.pid}/fd")))
    assert fds <= {0, 1, 2, 3} | set(range(4, 12)) and len(fds) < 12  # nothing of the zygote's
    cg = UserCgroup.from_paths(proc.extra.get("cgroup", []))
    if cg.enabled:
        assert proc.pid in cg.pids()
    assert await spawner.poll_process(proc) is None


async def test_users_processes_go_before_the_hub_when_memory_runs_out(
    spawner: ForkSpawner, fred: Account, log_dir: Path
) -> None:
    local = LocalSpawner()
    for sp in (spawner, local):
        proc = await sp.start_process(make_spec(fred, log_dir, config={"ignore_term": True}))
        r = await report(proc)
        for pid in (proc.pid, r["kids"]["ignore_term"]):  # the server and what it starts
            assert Path(f"/proc/{pid}/oom_score_adj").read_text().strip() == "500"
        if sp is local:
            await local.stop_process(proc, 1)
    await local.close()


async def test_log_is_the_users_and_exit_status_is_reported(
    spawner: ForkSpawner, fred: Account, log_dir: Path
) -> None:
    spec = make_spec(
        fred,
        log_dir,
        cmd=[sys.executable, "-c", "import sys; print('bye', file=sys.stderr); sys.exit(3)"],
    )
    proc = await spawner.start_process(spec)
    assert await wait_for(lambda: "bye" in tail_log(spec.log_path))
    for _ in range(100):
        if await spawner.poll_process(proc) is not None:
            break
        await asyncio.sleep(0.05)
    assert await spawner.poll_process(proc) == 3
    st = os.stat(spec.log_path)
    # the hub's, not the user's: a user owning it could grow it by name past the cap
    assert (st.st_uid, st.st_mode & 0o777) == (os.geteuid(), 0o600)


async def test_start_errors_are_for_people(
    spawner: ForkSpawner, fred: Account, log_dir: Path
) -> None:
    with pytest.raises(SpawnError, match="does not exist or mhfk_fred cannot enter"):
        await spawner.start_process(make_spec(fred, log_dir, cwd="/nonexistent/dir"))
    root = Account("root", 0, 0, (0,), "/root", "/bin/sh")
    with pytest.raises(SpawnError, match="never runs a server as root"):
        await spawner.start_process(make_spec(root, log_dir))


async def test_stop_and_readoption_by_a_plain_local_spawner(
    spawner: ForkSpawner, fred: Account, log_dir: Path
) -> None:
    proc = await spawner.start_process(make_spec(fred, log_dir, config={"ignore_term": True}))
    r = await report(proc)
    kid = r["kids"]["ignore_term"]
    other = LocalSpawner()  # a restarted hub knows the Proc only from the database
    assert await other.poll_process(proc) is None
    await other.stop_process(proc, 1)
    assert await other.poll_process(proc) is not None
    assert await gone(kid)
    await other.close()


def test_only_the_hubs_python_is_forked() -> None:
    assert forkable([sys.executable, "-m", "minihub.singleuser"])
    assert not forkable(["/usr/bin/python3", "-m", "minihub.singleuser"]) or (
        os.path.realpath("/usr/bin/python3") == os.path.realpath(sys.executable)
    )
    assert not forkable(["jupyterhub-singleuser"])


async def test_real_singleuser_server_forked(
    spawner: ForkSpawner, fred: Account, log_dir: Path
) -> None:
    base_url = f"/user/{fred.name}/"
    config = {
        "base_url": base_url,
        "notebook_dir": fred.home,
        "user": fred.name,
        "kernel_idle_timeout": 0,
        "mem_limit": 0,
    }
    spec = make_spec(fred, log_dir, cmd=[sys.executable, "-m", "minihub.singleuser"], config=config)
    proc = await spawner.start_process(spec)
    url = f"http://{proc.host}:{proc.port}{base_url}"
    headers = {"X-Minihub-Secret": "s3cret"}
    async with aiohttp.ClientSession() as s:
        for _ in range(300):  # bounded: about 30 s
            try:
                async with s.get(url + "api/status", headers=headers) as r:
                    assert r.status == 200
                    break
            except aiohttp.ClientConnectionError:
                assert await spawner.poll_process(proc) is None, tail_log(spec.log_path)
                await asyncio.sleep(0.1)
        kernels = await _start_kernel(s, proc, base_url, spec.log_path)
    for pid in kernels:
        info = proc_stat(pid)
        assert info is not None and info[3] == fred.uid
    await spawner.stop_process(proc, timeout=5)
    assert await spawner.poll_process(proc) is not None
    assert all([await gone(p) for p in kernels])


async def test_a_burst_of_starts_bigger_than_the_socket_buffer(
    spawner: ForkSpawner, fred: Account, log_dir: Path
) -> None:
    # 100 KiB of environment per request: a few fill the socket to the zygote, so later
    # requests must wait for it to drain instead of failing with EAGAIN.
    env = {"MINIHUB_BULK": "x" * 100_000}
    cmd = [sys.executable, "-c", "import time; time.sleep(60)"]
    procs = await asyncio.gather(
        *(
            spawner.start_process(
                make_spec(fred, log_dir, cmd=cmd, env=env, username=f"mhfk_fred{i}")
            )
            for i in range(12)
        )
    )
    assert len({p.pid for p in procs}) == 12
    assert all([await spawner.poll_process(p) is None for p in procs])
