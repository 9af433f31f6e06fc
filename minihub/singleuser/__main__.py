"""`python -m minihub.singleuser`: read the launch config from stdin, serve until SIGTERM.

See minihub/singleuser/__init__.py for the contract with the hub.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys

from aiohttp import web

from ..kernels import zygote
from .app import make_app
from .http import ServerConfig

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
        site = web.TCPSite(runner, "127.0.0.1", cfg.port)
    await site.start()
    log.info("serving %s for %s from %s", cfg.base_url, cfg.user, cfg.notebook_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await runner.cleanup()


def main() -> int:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        cfg = ServerConfig.from_json(sys.stdin.readline())
    except (ValueError, TypeError) as e:
        log.error("bad launch config on stdin: %s", e)
        return 2
    cfg.notebook_dir = os.path.abspath(cfg.notebook_dir or ".")
    if cfg.kernel_zygote:
        # Now, while this process has no thread, event loop or zmq context a child could inherit.
        zygote.fork_early()
    asyncio.run(serve(cfg))
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
