"""Running the hub: pre-flight checks, one hub per data dir, listeners, TLS, signals.

SIGTERM/SIGINT stop accepting and let in-flight requests finish within a grace period;
users' servers keep running unless [hub] cleanup_servers. SIGHUP reloads the certificate.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import ssl
import stat
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import IO, Any, TypeVar

from aiohttp import web

from . import forkloop, protocols
from .app import make_app
from .config import Config
from .context import PARTS, SHUTDOWN
from .errors import StartupError
from .spawner import accounts
from .store import UserQuery

log = logging.getLogger("minihub")


def check_python_readable(python: str) -> None:
    """User servers run this interpreter as their users: every path to it must be open."""
    paths = {Path(python), Path(os.path.realpath(python)), Path(os.path.realpath(__file__)).parent}
    for target in paths:
        for p in [target, *target.parents]:
            try:
                mode = p.stat().st_mode
            except OSError:
                continue
            need = stat.S_IXOTH | (stat.S_IROTH if not stat.S_ISDIR(mode) or p == target else 0)
            if mode & need != need:
                raise StartupError(
                    f"{p} is not readable by other users, so user servers running {python} "
                    "would fail with PermissionError. Install minihub in a world-readable venv "
                    "made from /usr/bin/python3 (bash scripts/install puts it in /opt/minihub), "
                    "or set [spawner] python to such an interpreter."
                )


def lock_data_dir(data_dir: Path) -> IO[str]:
    try:
        data_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        f = open(data_dir / "minihub.pid", "a+")  # noqa: SIM115 (held for the lock)
    except OSError as e:
        raise StartupError(f"{data_dir}: cannot create the data dir: {e.strerror}") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "?"
        raise StartupError(
            f"another minihub (pid {pid}) is already running with data dir "
            f"{data_dir}; stop it first or use another --data-dir"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def tls_context(cfg: Config) -> ssl.SSLContext | None:
    if not cfg.tls:
        return None
    from . import tls

    return tls.make_context(cfg.get("hub.ssl_cert"), cfg.get("hub.ssl_key"))


T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, on uvloop when it is installed: the proxy's hot path spends much of its
    time in the event loop and socket transports, which uvloop does in C. Setting
    MINIHUB_EVENT_LOOP=asyncio keeps the standard loop."""
    if os.environ.get("MINIHUB_EVENT_LOOP", "").lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
    return asyncio.run(main)


def _lean_log_records() -> None:
    """The access log writes a line per request: skip the LogRecord fields the format never
    shows (source file and line, thread, process; the logging docs' "Optimization")."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def serve(cfg: Config) -> int:
    if os.geteuid() == 0 and protocols.name_of(cfg) == "minihub" and not cfg.get("spawner.cmd"):
        check_python_readable(cfg.get("spawner.python") or sys.executable)
    lock = lock_data_dir(cfg.data_dir)
    ctx = tls_context(cfg)
    _lean_log_records()
    try:
        run(_serve(cfg, ctx))
    finally:
        lock.close()
    return 0


async def _serve(cfg: Config, ctx: ssl.SSLContext | None) -> None:
    app = make_app(cfg)
    stop = app[SHUTDOWN] = asyncio.Event()
    grace = float(cfg.get("hub.shutdown_grace_seconds"))
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=grace,
        # aiohttp's default (3630 s) also holds a connection that sent half a request line
        # and stopped: thousands of them would pin the hub's memory and fds for an hour.
        keepalive_timeout=float(cfg.get("hub.idle_connection_timeout")),
    )
    await runner.setup()
    ip, port = cfg.get("hub.ip"), int(cfg.get("hub.port"))
    try:
        await web.TCPSite(runner, ip, port, ssl_context=ctx, reuse_address=True).start()
        redirect = await _redirect_listener(cfg)
    except OSError as e:
        await runner.cleanup()
        raise StartupError(f"cannot listen on {ip}:{port}: {e.strerror}") from None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ctx is not None:
        loop.add_signal_handler(signal.SIGHUP, _reload_tls, cfg, ctx)
    _announce(cfg)
    await _warn_open_homes(app)
    # Start-up objects (modules, templates, settings) live as long as the hub: frozen, the
    # collector stops re-scanning them in full collections, which paused every in-flight
    # request for up to ~25 ms under load (~3 ms frozen).
    # And what start-up freed goes back to the system (glibc's malloc_trim: ~1.4 MiB of the
    # hub's PSS at rest, measured), as in the processes that fork (forkloop.settle).
    forkloop.settle()
    await stop.wait()
    log.info("shutting down: finishing requests for up to %gs", grace)
    if redirect is not None:
        await redirect.cleanup()
    await runner.cleanup()
    log.info("stopped")


async def _redirect_listener(cfg: Config) -> web.AppRunner | None:
    rport = int(cfg.get("hub.redirect_port"))
    if not rport or not cfg.tls:
        return None
    from . import tls

    app = tls.redirect_app(
        int(cfg.get("hub.port")), cfg.base_url, acme_webroot=cfg.data_dir / "acme"
    )  # certbot --webroot renewals
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, cfg.get("hub.ip"), rport, reuse_address=True).start()
    return runner


def _reload_tls(cfg: Config, ctx: ssl.SSLContext) -> None:
    from . import tls

    tls.reload(ctx, cfg.get("hub.ssl_cert"), cfg.get("hub.ssl_key"))


# The homes checked at start-up: the most recently active users'. Each is an account lookup
# (a scan of /etc/passwd, or a directory query), so all of 10,000 users took seconds and left
# ~2.9 MiB in the hub for good (measured); a class's open homes show among the first ones.
OPEN_HOMES_CHECKED = 500


async def _warn_open_homes(app: web.Application) -> None:
    """Say once at start-up if hub users' homes let other users read their notebooks (Debian's
    useradd makes homes 0755); a shared class folder is not a home and is not counted."""
    if os.geteuid() != 0:
        return
    recent = UserQuery(order="last_activity", descending=True, limit=OPEN_HOMES_CHECKED)
    users, total = await app[PARTS].store.search_users(recent)
    found = await asyncio.to_thread(accounts.open_homes, [u.name for u in users])
    if found:
        _, home, mode = found[0]
        checked = f" of the {len(users)} most recently active" if total > len(users) else ""
        log.warning(
            "%d hub user home(s)%s can be read by other users, e.g. %s (mode %04o): "
            "chmod 700 them; accounts minihub creates get [users] home_mode "
            "(default 0o700)",
            len(found),
            checked,
            home,
            mode,
        )


def _announce(cfg: Config) -> None:
    scheme = "https" if cfg.tls else "http"
    host = cfg.get("hub.ip")
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "minihub is listening on %s://%s:%s%s", scheme, shown, cfg.get("hub.port"), cfg.base_url
    )
    log.info("data dir %s; authenticator %s", cfg.data_dir, cfg.get("auth.authenticator"))
    if cfg.get("hub.admin_access") and protocols.name_of(cfg) == "jupyterhub-singleuser":
        log.warning(
            "[hub] admin_access with jupyterhub-singleuser: users' own servers share "
            "the hub's origin, so a page a user serves can act as an admin who opens it"
        )
    me = (
        sys.argv[0]
        if os.path.basename(sys.argv[0]) == "minihub"
        else f"{sys.executable} -m minihub"
    )
    flags = f"-f {cfg.path} " if cfg.path else ""
    if cfg.get("auth.authenticator") == "native":
        log.info("first admin: %s %suser add NAME --admin  (password read from stdin)", me, flags)
    else:
        log.info(
            "first admin: %s %suser add NAME --admin  (NAME: an existing system "
            "account; it logs in with its system password)",
            me,
            flags,
        )
