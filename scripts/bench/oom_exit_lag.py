"""How long after the OOM killer counts a kill the victim is seen dead.

    sudo /opt/minihub/venv/bin/python scripts/bench/oom_exit_lag.py [--runs 10] [--limit-mb 400]

Makes a memory cgroup (v2, or v1's memory controller) with a limit, runs a Python process
in it that fills the limit and asks for twice as much, and polls the cgroup's oom_kill
count and the process every half millisecond: the time from the count going up to the
process being reaped. The kernel watch in minihub.kernels.kernel looks once a second, so
when this lag is not ~0 a watch may see the kernel alive after the kill was counted; why
its OomCounter keeps a baseline at least SETTLE seconds old. Prints one line per run
(exit status, lag in ms) and the median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HOG = (
    "import time; time.sleep(0.2); x = bytearray({fill} << 20); x[::4096] = b'x' * len(x[::4096]);"
    " y = b'x' * ({ask} << 20)"
)


def make_group(limit: int) -> tuple[Path, Path]:
    """(the group's dir, its file with the oom_kill line); v2 if mounted, else v1."""
    name = f"minihub-oom-lag-{os.getpid()}"
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    if v2.is_file() and "memory" in v2.read_text().split():
        group = Path("/sys/fs/cgroup") / name
        group.mkdir()
        (group / "memory.max").write_text(str(limit))
        return group, group / "memory.events"
    group = Path("/sys/fs/cgroup/memory") / name
    group.mkdir()
    (group / "memory.limit_in_bytes").write_text(str(limit))
    return group, group / "memory.oom_control"


def oom_kills(events: Path) -> int:
    for line in events.read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


def one_run(group: Path, events: Path, limit_mb: int) -> tuple[int | None, float | None]:
    base = oom_kills(events)
    code = HOG.format(fill=max(limit_mb - 20, 1), ask=2 * limit_mb)

    # The shell joins the group, then becomes the hog (no preexec_fn: not thread-safe).
    join = f'echo $$ > {group / "cgroup.procs"} && exec /usr/bin/python3 -c "$0"'
    proc = subprocess.Popen(["/bin/sh", "-c", join, code])
    counted = None
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if counted is None and oom_kills(events) > base:
            counted = time.monotonic()
        time.sleep(0.0005)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    reaped = time.monotonic()
    return proc.returncode, None if counted is None else (reaped - counted) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--limit-mb", type=int, default=400)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: it makes a memory cgroup")
    group, events = make_group(args.limit_mb << 20)
    lags = []
    try:
        for i in range(args.runs):
            status, lag = one_run(group, events, args.limit_mb)
            print(
                f"run {i + 1}: exit status {status}, lag {'-' if lag is None else f'{lag:.1f}'} ms"
            )
            if lag is not None:
                lags.append(lag)
    finally:
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    if lags:
        print(f"median lag {statistics.median(lags):.1f} ms over {len(lags)} kills")
    return 0


if __name__ == "__main__":
    sys.exit(main())
