"""Per-user cgroups: limits written, the OOM killer confined to the user, kill_all."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import SystemUser, needs_root

from minihub.procfs import proc_stat
from minihub.spawner.accounts import lookup_account
from minihub.spawner.cgroups import Mode, UserCgroup, _detect, detect
from minihub.spawner.local import LocalSpawner, tail_log
from minihub.spawner.process import LaunchSpec

pytestmark = needs_root
MB = 1 << 20


def _usable() -> bool:
    mode = detect()
    return mode.version == 2 or mode.memory is not None


needs_cgroups = pytest.mark.skipif(not _usable(), reason="no usable memory cgroup here")


def _read(d: Path, name: str) -> str:
    return (d / name).read_text().strip()


@needs_cgroups
def test_limits_are_written_and_cleared() -> None:
    cg = UserCgroup.for_user("mhsp-limits")
    try:
        assert cg.setup(100 * MB, 0.5)
        if cg.version == 2:
            d = cg.dirs[0]
            assert _read(d, "memory.max") == str(100 * MB)
            assert _read(d, "cpu.max") == "50000 100000"
        else:
            mem = next(d for d in cg.dirs if (d / "memory.limit_in_bytes").exists())
            assert _read(mem, "memory.limit_in_bytes") == str(100 * MB)
            if (mem / "memory.memsw.limit_in_bytes").exists():
                assert _read(mem, "memory.memsw.limit_in_bytes") == str(100 * MB)
            for d in cg.dirs:
                if (d / "cpu.cfs_quota_us").exists():
                    assert _read(d, "cpu.cfs_quota_us") == "50000"
        assert cg.setup(0, 0)
        for d in cg.dirs:
            for name in ("memory.limit_in_bytes", "memory.max"):
                if (d / name).exists():
                    assert int(_read(d, name).replace("max", str(1 << 62))) > 1 << 40
            if (d / "cpu.cfs_quota_us").exists():
                assert _read(d, "cpu.cfs_quota_us") == "-1"
    finally:
        cg.remove()


@needs_cgroups
def test_kill_all_reaches_processes_outside_the_group() -> None:
    cg = UserCgroup.for_user("mhsp-killall")
    assert cg.setup(0, 0)
    sleepers = [subprocess.Popen(["sleep", "300"], start_new_session=True) for _ in range(2)]
    try:
        for p in sleepers:
            assert cg.add(p.pid)
        assert {p.pid for p in sleepers} <= cg.pids()
        assert cg.kill_all() >= {p.pid for p in sleepers}
        for p in sleepers:
            assert p.wait(timeout=10) == -9
        assert cg.pids() == set()
    finally:
        for p in sleepers:
            p.kill()
            p.wait(timeout=10)
        cg.remove()


# A server whose "kernel" (a child) allocates 300 MB: the kernel must die, the server live.
OOM_SERVER = r"""
import subprocess, sys, time
sys.stdin.readline()
hog = "data = b'x' * (300 << 20)\nprint('hog survived', flush=True)"
rc = subprocess.run([sys.executable, "-c", hog]).returncode
print(f"kernel exited {rc}", flush=True)
time.sleep(300)
"""


@needs_cgroups
async def test_memory_limit_kills_only_the_offending_kernel(
    make_system_user: Callable[..., SystemUser], data_dir: str
) -> None:
    user = make_system_user("mhsp_oom")
    account = lookup_account(user.name, uid_min=1000)
    log_path = Path(data_dir) / "logs" / "oom.log"
    spec = LaunchSpec(
        username=user.name,
        account=account,
        cmd=[sys.executable, "-c", OOM_SERVER],
        env={},
        cwd=account.home,
        stdin_config={},
        log_path=log_path,
        mem_limit=100 * MB,
    )
    spawner = LocalSpawner()
    proc = await spawner.start_process(spec)
    try:
        for _ in range(600):  # bounded: about 60 s
            if "kernel exited" in tail_log(log_path):
                break
            await asyncio.sleep(0.1)
        log = tail_log(log_path)
        assert "kernel exited -9" in log, log
        assert "hog survived" not in log
        assert await spawner.poll_process(proc) is None  # the server itself was spared
        assert spawner.oom_killed_process(proc)
    finally:
        await spawner.stop_process(proc, timeout=2)
        await spawner.close()
        UserCgroup.from_paths(proc.extra["cgroup"]).remove()


def test_without_cgroups_spawning_is_unlimited(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="minihub.spawner"):
        mode = _detect(tmp_path)
    assert mode.version == 0
    assert len([r for r in caplog.records if "not enforced" in r.getMessage()]) == 1
    cg = UserCgroup.for_user("mhsp-none", Mode(0))
    assert not cg.enabled and cg.setup(100 * MB, 1) and cg.add(1)
    assert cg.kill_all() == set() and not cg.oom_killed_recently()


def test_readopted_paths_must_be_minihub_cgroups() -> None:
    cg = UserCgroup.from_paths(
        ["/etc", "/sys/fs/cgroup/memory/../../../etc/minihub/x", "/sys/fs/cgroup/memory"]
    )
    assert not cg.enabled
    assert proc_stat(1) is not None
