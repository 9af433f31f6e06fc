"""How ipykernel kernels are launched: with its fork pipe on a unix socket, not on TCP.

ipykernel binds a PULL socket on a random 127.0.0.1 port for the output of forked children;
launched through BOOT it binds it next to the kernel's other sockets, in the private dir.
With a zygote (zygote.py), the same BOOT command runs in a child forked from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning.local_provisioner import LocalProvisioner

from .zygote import Zygote, forkable

# Runs in the kernel's own interpreter (which need not have minihub), as ipykernel_launcher
# does; if ipykernel's internals ever differ, the kernel starts unchanged (and the transport
# test, which allows no TCP listener, says so).
BOOT = """
import os, sys
if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]
pipe = sys.argv.pop(1)

def ipc_fork_pipe():
    import zmq
    from ipykernel import iostream
    cls = iostream.IOPubThread
    if not all(hasattr(cls, n) for n in ("_setup_pipe_in", "_setup_pipe_out", "_handle_pipe_msg")):
        return

    def setup_in(self):
        self._pipe_uuid = os.urandom(16)
        pull = self.socket.context.socket(zmq.PULL)
        pull.linger = 0
        try:
            pull.bind("ipc://" + pipe)
        except zmq.ZMQError:
            self._pipe_flag = False
            pull.close()
            return
        self._pipe_in = iostream.ZMQStream(pull, self.io_loop)
        self._pipe_in.on_recv(self._handle_pipe_msg)

    def setup_out(self):
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.linger = 3000
        push.connect("ipc://" + pipe)
        return ctx, push

    cls._setup_pipe_in = setup_in
    cls._setup_pipe_out = setup_out

try:
    ipc_fork_pipe()
except Exception as e:
    print("minihub: fork pipe left on TCP:", e, file=sys.stderr)
from ipykernel import kernelapp
kernelapp.launch_new_instance()
"""


def fork_pipe_path(ip: str) -> str:
    return f"{ip}-pipe"


def boot_argv(cmd: list[str], pipe: str) -> list[str]:
    """`python -m ipykernel_launcher ...` becomes `python -c BOOT <pipe> ...`; others unchanged."""
    if len(cmd) >= 3 and cmd[1:3] == ["-m", "ipykernel_launcher"]:
        return [cmd[0], "-c", BOOT, pipe, *cmd[3:]]
    return cmd


class IpcKernelManager(AsyncKernelManager):
    """jupyter_client's manager, launching ipykernel through BOOT when on the ipc transport."""

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        cmd: list[str] = super().format_kernel_cmd(extra_arguments)
        if self.transport != "ipc":
            return cmd
        return boot_argv(cmd, fork_pipe_path(self.ip))


class ZygoteProvisioner(LocalProvisioner):
    """LocalProvisioner whose BOOT kernels of the zygote's interpreter are forked from it.

    poll/wait/signals act on the forked pid (the zygote reports its exit status); any other
    command, or a zygote that cannot fork, is launched by LocalProvisioner as before.
    """

    zygote: Zygote | None = None
    forked_pid: int | None = None

    @property
    def has_process(self) -> bool:
        return self.forked_pid is not None or bool(super().has_process)

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
        env = dict(kwargs.get("env") or os.environ)
        if (
            self.zygote is not None
            and len(cmd) > 2
            and cmd[2] == BOOT
            and forkable(cmd, env, self.zygote.python)
        ):
            # the kernel exits if its zygote does (the kernel template takes this out: its
            # kernels outlive it, and their channel's close ends them instead)
            env["JPY_PARENT_PID"] = str(self.zygote.pid)
            cwd = str(kwargs.get("cwd") or os.getcwd())
            pid = await self.zygote.fork(cmd, env, cwd)
            if pid is not None:
                self.forked_pid = self.pid = self.pgid = pid
                self.cwd = cwd
                return self.connection_info
        return await super().launch_kernel(cmd, **kwargs)

    async def poll(self) -> int | None:
        if self.forked_pid is None or self.zygote is None:
            return await super().poll()
        status = self.zygote.status(self.forked_pid)
        if status is None and not self.zygote.running(self.forked_pid):
            # Dead as Popen.poll() would see it: at once, not only once the report has come.
            status = await self.zygote.exit_status(self.forked_pid)
        return status

    async def wait(self) -> int | None:
        if self.forked_pid is None or self.zygote is None:
            return await super().wait()
        while (status := await self.poll()) is None:
            await asyncio.sleep(0.02)
        self.zygote.forget(self.forked_pid)
        self.forked_pid = None
        return status

    async def send_signal(self, signum: int) -> None:
        pid = self.forked_pid
        if pid is None or self.zygote is None:
            await super().send_signal(signum)
            return
        if self.zygote.status(pid) is not None:
            return  # exited (its pid may be anyone's now)
        try:
            os.killpg(pid, signum)
        except OSError:
            os.kill(pid, signum)
        return

    async def kill(self, restart: bool = False) -> None:
        if self.forked_pid is None:
            await super().kill(restart)
            return
        with contextlib.suppress(ProcessLookupError):
            await self.send_signal(signal.SIGKILL)
        return

    async def terminate(self, restart: bool = False) -> None:
        if self.forked_pid is None:
            await super().terminate(restart)
            return
        with contextlib.suppress(ProcessLookupError):
            await self.send_signal(signal.SIGTERM)
        return
