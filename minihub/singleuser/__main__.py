"""`python -m minihub.singleuser`: read the launch config (stdin, or MINIHUB_LAUNCH_CONFIG in
a pod), serve until SIGTERM.

See minihub/singleuser/__init__.py for the contract with the hub.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import sys

from aiohttp import web

from ..kernels import zygote
from ..spawner.logpump import LogPump
from . import CONFIG_ENV, ServerConfig, contents, lean
from .app import make_app

log = logging.getLogger("minihub.singleuser")


async def serve(cfg: ServerConfig) -> None:
    runner = web.AppRunner(make_app(cfg), handle_signals=False, access_log=None, shutdown_timeout=5)
    await runner.setup()
    site: web.BaseSite
    if cfg.listen_fd is not None:
        sock = socket.socket(fileno=cfg.listen_fd)
        sock.setblocking(False)
        site = web.SockSite(runner, sock)
    else:
        site = web.TCPSite(runner, cfg.ip, cfg.port, ssl_context=_tls(cfg))
    await site.start()
    log.info("serving %s for %s from %s", cfg.base_url, cfg.user, cfg.notebook_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await runner.cleanup()


def _no_dumps() -> None:
    """Other processes of the same user (kernels, terminals) may not read this one's memory
    (ptrace, /proc/PID/mem): it will hold the secret and the proof. An exec'd server starts
    dumpable; one forked from the hub's fork server already is not."""
    import ctypes

    pr_set_dumpable = 4
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_dumpable, 0, 0, 0, 0)
    except (OSError, AttributeError) as e:
        log.warning("cannot make the server non-dumpable: %s", e)


def main() -> int:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _no_dumps()
    lean.install()
    _adopt_umask()
    # A pod has no stdin from the hub: its launch config comes in this variable, taken out
    # of the environment before the kernel zygote (and every kernel) could inherit it.
    line = os.environ.pop(CONFIG_ENV, "")
    # Before the kernel zygote is forked: it and every kernel write into the pump's pipe,
    # never into the hub's log fds themselves.
    pump = LogPump.take_over() if LogPump.wanted() else None
    # Now, while this process has no thread, event loop or zmq context a child could inherit,
    # and before it has read its secrets: kernels are forked from the zygote and run the
    # user's code, which must not find the secret or the proof in its own memory.
    zygote.fork_early()
    if pump is not None:
        pump.start()
    line = line or sys.stdin.readline()
    try:
        cfg = ServerConfig.from_json(line)
    except (ValueError, TypeError) as e:
        log.error("bad launch config on stdin: %s", e)
        return 2
    _stdin_to_devnull()  # kernels need nothing of the launch pipe
    if pump is not None:
        pump.cap(cfg.log)
    cfg.notebook_dir = os.path.abspath(cfg.notebook_dir or ".")
    if cfg.kernel_zygote_fd >= 0:
        if cfg.kernel_zygote:
            zygote.adopt(cfg.kernel_zygote_fd)
        else:
            os.close(cfg.kernel_zygote_fd)  # it exits on EOF
    if not cfg.kernel_zygote:
        zygote.discard_early()
    asyncio.run(serve(cfg))
    log.info("stopped")
    if pump is not None:
        sys.stderr.flush()
        pump.stop()
    return 0


def _tls(cfg: ServerConfig) -> ssl.SSLContext | None:
    """https with the certificate a spawner mounted (the Kubernetes spawner's ssl_secret)."""
    if not cfg.certfile:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cfg.certfile, cfg.keyfile or None)
    return ctx


def _stdin_to_devnull() -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)


def _adopt_umask() -> None:
    """A server forked from the hub's fork server imported `contents` (which notes the umask
    new files get) before it was given its own umask: note this process's. One thread yet,
    so reading the umask by setting it races with nothing."""
    mask = os.umask(0o077)
    os.umask(mask)
    contents.UMASK = mask


if __name__ == "__main__":
    sys.exit(main())
