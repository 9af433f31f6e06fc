"""A spawner from outside minihub, found only through its entry point (tests/test_plugins.py).

DemoSpawner runs minihub's own server as a plain local process under one fixed Unix
account, `[demo] run_as`, for every hub user, who therefore needs no account of their own.
It declares its own section, [demo], as any third-party spawner would. It is a test's
plugin: it cannot re-adopt its servers after a hub restart (poll says they are gone).
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any, ClassVar

from minihub.config import Config
from minihub.errors import SpawnError
from minihub.setting import Setting
from minihub.spawner.base import UNKNOWN_EXIT, Endpoint, Launch, Spawner, Started, State


class DemoSpawner(Spawner):
    name = "demo"
    settings: ClassVar[list[Setting]] = [
        Setting(
            "demo",
            "run_as",
            str,
            "nobody",
            "Unix account every server of the demo spawner runs as (a root hub only).",
        ),
        Setting("demo", "root_dir", str, "/tmp", "Directory every demo server opens in."),
    ]

    def __init__(self, cfg: Config) -> None:
        self.run_as = str(cfg.get("demo.run_as"))
        self.root_dir = str(cfg.get("demo.root_dir"))
        self.log_dir = cfg.data_dir / "demo-logs"
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    async def start(self, launch: Launch) -> Started:
        if launch.protocol != "minihub":
            raise SpawnError("The demo spawner runs only minihub's own server.")
        port = await asyncio.to_thread(_free_port)
        launch.listen_on("127.0.0.1", port)
        config = {**launch.config, "notebook_dir": self.root_dir}
        proc, log = await asyncio.to_thread(self._popen, launch, config)
        self._procs[proc.pid] = proc
        return Started(Endpoint("127.0.0.1", port), {"pid": proc.pid, "log": str(log)})

    def _popen(
        self, launch: Launch, config: dict[str, Any]
    ) -> tuple[subprocess.Popen[bytes], Path]:
        as_user: dict[str, Any] = {}
        if os.geteuid() == 0:
            pw = pwd.getpwnam(self.run_as)
            as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        self.log_dir.mkdir(exist_ok=True)
        log = self.log_dir / (launch.key.replace("/", ".") + ".log")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.root_dir, **launch.env}
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                launch.cmd,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root_dir,
                env=env,
                start_new_session=True,
                **as_user,
            )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(config).encode() + b"\n")
        proc.stdin.close()
        return proc, log

    async def poll(self, state: State) -> int | None:
        proc = self._procs.get(int(state["pid"]))
        return proc.poll() if proc is not None else UNKNOWN_EXIT

    async def stop(self, state: State, timeout: float) -> None:
        proc = self._procs.pop(int(state["pid"]), None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 5)

    async def log_tail(self, state: State, lines: int = 20) -> str:
        path = Path(str(state.get("log", "")))
        text = await asyncio.to_thread(path.read_text, errors="replace") if path.is_file() else ""
        return "\n".join(text.splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
