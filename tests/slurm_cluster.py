"""A real Slurm for the tests (scripts/slurm: munged, slurmctld and three slurmd "nodes" n1..n3
on 127.0.0.1; partitions `debug` (default, all nodes) and `small` (n3 only)), brought up once
per session; Debian's slurm-wlm is installed by `bash scripts/install test`.

    def test_x(slurm_cluster):
        slurm_cluster.sbatch("-w", "n3", "--wrap", "sleep 60")

The cluster is left running after the session (it costs about 20 MB and a restart
re-reads its state); the jobs a test submitted through `sbatch` are cancelled at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "slurm"


@dataclass
class SlurmCluster:
    nodes: tuple[str, ...] = ("n1", "n2", "n3")
    _jobs: list[str] = field(default_factory=list)

    def run(self, *cmd: str, check: bool = True) -> str:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if check and proc.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}")
        return proc.stdout

    def sbatch(self, *args: str) -> str:
        """Submit a job as root (e.g. to fill a node); cancelled at the end of the session."""
        job = self.run("sbatch", "--parsable", "-o", "/dev/null", *args).strip()
        self._jobs.append(job)
        return job

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job`'s fields (JobState, Reason, NodeList, ...)."""
        out = self.run("scontrol", "-o", "show", "job", job_id, check=False)
        return dict(f.split("=", 1) for f in out.split() if "=" in f)

    def wait_state(self, job_id: str, states: set[str], timeout: float = 30) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if info.get("JobState") in states or time.monotonic() > deadline:
                return info
            time.sleep(0.2)

    def cancel(self, job_id: str) -> None:
        self.run("scancel", job_id, check=False)


@pytest.fixture(scope="session", name="slurm_cluster")
def slurm_cluster_fixture() -> Iterator[SlurmCluster]:
    if os.geteuid() != 0:
        pytest.skip("the Slurm tests run as root (they start Slurm's daemons)")
    if not shutil.which("slurmctld"):
        pytest.fail("Slurm is not installed: run `bash scripts/install test` (slurm-wlm, munge)")
    try:
        up = subprocess.run(["bash", str(SCRIPT), "up"], capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"scripts/slurm up did not finish in 90 s: {e.stdout}{e.stderr}")
    if up.returncode != 0:
        pytest.fail(f"scripts/slurm up failed:\n{up.stdout}{up.stderr}")
    cluster = SlurmCluster()
    yield cluster
    for job in cluster._jobs:
        cluster.cancel(job)
