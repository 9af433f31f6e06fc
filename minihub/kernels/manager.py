"""The kernels of one user server: start, find, stop and cull them; list kernelspecs.

Kernels run as the server's own user (the server already is that user), with the server's
environment, which never holds the per-server secret. They listen on unix sockets in a private
directory (transport.py), never on TCP. With a user environment (zygote.user_env), kernelspecs
come from it instead of the server's own venv (docs/environments.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import zmq.asyncio
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from jupyter_core.paths import jupyter_path

from ..errors import HubError, NotFound
from .kernel import Kernel
from .launch import IpcKernelManager, ZygoteProvisioner, fork_pipe_path
from .transport import RuntimeDir
from .zygote import Zygote, kernel_python, user_env

log = logging.getLogger("minihub.kernels")
NATIVE_KERNEL = "python3"


class KernelManager:
    """All kernels of this server, keyed by id."""

    def __init__(self, root_dir: str, idle_timeout: int = 0, zygote: bool = False) -> None:
        self.root_dir = root_dir
        # python3 kernels forked from a pre-imported process (zygote.py) instead of exec'd
        self.zygote = Zygote(root_dir, kernel_python()) if zygote else None
        self.idle_timeout = idle_timeout
        self.kernels: dict[str, Kernel] = {}
        self.specs = spec_manager(user_env())
        self.context = zmq.asyncio.Context()
        self.runtime = RuntimeDir()
        self.on_removed: list[Callable[[str], None]] = []
        self._culler: asyncio.Task[None] | None = None

    # --- kernelspecs -----------------------------------------------------------------------

    async def all_specs(self) -> dict[str, dict[str, Any]]:
        specs: dict[str, dict[str, Any]] = await asyncio.to_thread(self.specs.get_all_specs)
        for spec in specs.values():
            # The bridge refuses debug_request (see channels.py): offer no debugger.
            metadata = spec.get("spec", {}).get("metadata")
            if isinstance(metadata, dict) and metadata.get("debugger"):
                metadata["debugger"] = False
        return specs

    async def default_name(self) -> str:
        specs = await self.all_specs()
        if NATIVE_KERNEL in specs or not specs:
            return NATIVE_KERNEL
        return min(specs)

    # --- kernels ---------------------------------------------------------------------------

    def get(self, kernel_id: str) -> Kernel:
        kernel = self.kernels.get(kernel_id)
        if kernel is None:
            raise NotFound(f"Kernel does not exist: {kernel_id}")
        return kernel

    def models(self) -> list[dict[str, Any]]:
        return [k.model() for k in self.kernels.values()]

    async def start(self, name: str | None, path: str | None = None) -> Kernel:
        name = name or await self.default_name()
        try:
            await asyncio.to_thread(self.specs.get_kernel_spec, name)
        except NoSuchKernel:
            raise NotFound(f"No such kernel: {name}") from None
        kernel_id = str(uuid.uuid4())
        km = IpcKernelManager(
            kernel_name=name,
            kernel_spec_manager=self.specs,
            context=self.context,
            shutdown_wait_time=3.0,
            **self.runtime.kernel_args(kernel_id),
        )
        if self.zygote is not None and name == NATIVE_KERNEL:
            km.provisioner = ZygoteProvisioner(
                kernel_id=kernel_id, kernel_spec=km.kernel_spec, parent=km
            )
            km.provisioner.zygote = self.zygote
        kernel = Kernel(kernel_id, name, path or "", km, self.context)
        try:
            await kernel.start(cwd=self._cwd(path), env=self._env(path))
        except Exception as e:
            log.exception("kernel %s (%s) failed to start", kernel_id, name)
            km.cleanup_connection_file()
            km.cleanup_ipc_files()
            raise HubError(f"Kernel {name} failed to start: {e}", status=500) from None
        kernel.on_dead.append(self._forget_dead)
        self.kernels[kernel_id] = kernel
        log.info("kernel %s (%s) started", kernel_id, name)
        return kernel

    def _cwd(self, path: str | None) -> str:
        if not path:
            return self.root_dir
        rel = os.path.dirname(path.strip("/"))
        cwd = os.path.realpath(os.path.join(self.root_dir, rel))
        root = os.path.realpath(self.root_dir)
        inside = cwd == root or cwd.startswith(root + os.sep)
        return cwd if inside and os.path.isdir(cwd) else self.root_dir

    def _env(self, path: str | None) -> dict[str, str]:
        env = dict(os.environ)
        if path:
            env["JPY_SESSION_NAME"] = os.path.join(self.root_dir, path.strip("/"))
        return env

    async def shutdown(self, kernel_id: str, now: bool = False) -> None:
        kernel = self.get(kernel_id)
        self._remove(kernel_id)
        await _stop(kernel, now)
        log.info("kernel %s shut down", kernel_id)

    async def shutdown_all(self) -> None:
        ids = list(self.kernels)
        await asyncio.gather(*(self.shutdown(k) for k in ids), return_exceptions=True)

    def _forget_dead(self, kernel: Kernel) -> None:
        self._remove(kernel.id)
        asyncio.get_running_loop().create_task(_stop(kernel, now=True))

    def _remove(self, kernel_id: str) -> None:
        if self.kernels.pop(kernel_id, None) is not None:
            for hook in list(self.on_removed):
                hook(kernel_id)

    def last_activity(self) -> float | None:
        times = [k.last_activity for k in self.kernels.values()]
        return max(times) if times else None

    def connections(self) -> int:
        return sum(k.connections for k in self.kernels.values())

    # --- culling ---------------------------------------------------------------------------

    def start_zygote(self) -> None:
        """Start the zygote's imports now, so the first kernel need not wait for them."""
        if self.zygote is not None:
            self.zygote.start()

    def start_culler(self) -> None:
        if self.idle_timeout > 0 and self._culler is None:
            self._culler = asyncio.create_task(self._cull_loop())

    async def close(self) -> None:
        if self._culler is not None:
            self._culler.cancel()
        await self.shutdown_all()
        if self.zygote is not None:
            await self.zygote.close()
        self.context.destroy(linger=0)
        self.runtime.close()

    async def _cull_loop(self) -> None:
        every = max(1.0, min(60.0, self.idle_timeout / 2))
        while True:
            await asyncio.sleep(every)
            for kernel in list(self.kernels.values()):
                if self._cullable(kernel):
                    log.info(
                        "culling kernel %s (%s): idle for %d s",
                        kernel.id,
                        kernel.name,
                        int(time.time() - kernel.last_activity),
                    )
                    await self.shutdown(kernel.id)

    def _cullable(self, kernel: Kernel) -> bool:
        # As jupyter_server's defaults: never cull a busy kernel or one a client is watching.
        idle_for = time.time() - kernel.last_activity
        return (
            kernel.execution_state == "idle"
            and kernel.connections == 0
            and idle_for > self.idle_timeout
        )


def spec_manager(env: str) -> KernelSpecManager:
    """Kernelspecs from Jupyter's usual path (the user's ~/.local/share/jupyter first, then
    JUPYTER_PATH, then the system's), with the user environment's share/jupyter in place of
    the server's venv's: the hub's own ipykernel must not answer for python3."""
    if not env:
        return KernelSpecManager()
    ours = os.path.join(env, "share", "jupyter", "kernels")
    hubs = os.path.join(sys.prefix, "share", "jupyter", "kernels")
    dirs = [ours if d == hubs else d for d in jupyter_path("kernels")]
    if ours not in dirs:
        dirs.append(ours)
    return KernelSpecManager(kernel_dirs=dirs, ensure_native_kernel=False)


async def _stop(kernel: Kernel, now: bool) -> None:
    """Shut a kernel down; jupyter_client removes its file and sockets, we its fork pipe."""
    await kernel.shutdown(now=now)
    with contextlib.suppress(OSError):  # a killed kernel leaves it behind
        os.unlink(fork_pipe_path(kernel.km.ip))
