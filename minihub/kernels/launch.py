"""How ipykernel kernels are launched: with its fork pipe on a unix socket, not on TCP.

ipykernel binds a PULL socket on a random 127.0.0.1 port for the output of forked children;
launched through BOOT it binds it next to the kernel's other sockets, in the private dir.
"""

from __future__ import annotations

from jupyter_client.manager import AsyncKernelManager

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
