"""Wiring of the per-user server: routes, the per-server secret check, errors, activity.

Every request must carry X-Minihub-Secret; errors leave as jupyter_server's JSON shape
{"message", "reason"} and never as a traceback.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import logging
import time
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import HubError
from ..isotime import isoformat
from ..kernels.channels import Bridge
from ..kernels.manager import KernelManager
from ..kernels.wire import Limits
from . import (
    PROOF_HEADER,
    SECRET_HEADER,
    ServerConfig,
    contents_api,
    files,
    gitpull,
    kernels_api,
    pages,
    sessions,
    terminals_api,
)
from .checkpoints import Checkpoints
from .contents import ContentsManager
from .http import (
    ACTIVITY,
    BRIDGE,
    CHECKPOINTS,
    CONFIG,
    CONTENTS,
    KERNELS,
    Activity,
    reply,
)

log = logging.getLogger("minihub.singleuser")
MAX_BODY = 256 << 20  # notebooks with many images are big; uploads are chunked at ~1 MiB


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = None
    return web.json_response({"message": message, "reason": reason}, status=status, headers=headers)


def secret_guard(secret: str) -> Any:
    expected = secret.encode("utf-8")

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get(SECRET_HEADER, "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, expected):
            return error_response(403, "Forbidden: this server only answers through the hub")
        request[_FROM_HUB] = True
        return await handler(request)

    return guard


_FROM_HUB = web.RequestKey("from_hub", bool)


def answer_back(proof: str) -> Any:
    """Put the proof on every response to a request that carried the secret (websocket
    handshakes included: they are prepared inside the handler), never on any other."""

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        if request.get(_FROM_HUB):
            response.headers[PROOF_HEADER] = proof

    return on_prepare


# What a user's request can make the filesystem refuse is that request's fault (4xx); a
# full disk is 507; any other OSError (EIO ...) stays a 500.
OS_ERROR_STATUS = {
    errno.ENOTDIR: 400,
    errno.EISDIR: 400,
    errno.ENAMETOOLONG: 400,
    errno.ELOOP: 400,
    errno.EINVAL: 400,
    errno.EXDEV: 400,
    errno.EMLINK: 400,
    errno.EROFS: 403,
    errno.EEXIST: 409,
    errno.ENOTEMPTY: 409,
    errno.EFBIG: 413,
    errno.ENOSPC: 507,
    errno.EDQUOT: 507,
}


def _bounded(text: str) -> str:
    """A user-supplied value for a log line: escaped, at most 200 characters."""
    return repr(text[:200])[1:-1]


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except HubError as e:
        return error_response(e.status, e.message, e.headers)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error_response(e.status, e.reason or HTTPStatus(e.status).phrase)
    except PermissionError as e:
        return error_response(403, f"Permission denied: {e.strerror or e}")
    except FileNotFoundError as e:
        return error_response(404, f"No such file or directory: {e.strerror or e}")
    except OSError as e:
        status = OS_ERROR_STATUS.get(e.errno or 0, 500)
        log.warning("%s %s: %s", request.method, _bounded(request.path), _bounded(str(e)))
        return error_response(status, f"Error accessing files: {e.strerror or e}"[:500])
    except RecursionError:
        # Checks on input keep nesting far below the stack; this is the net under them.
        return error_response(400, "The request is nested too deeply")
    except UnicodeError as e:
        return error_response(400, f"The request is not valid Unicode text: {e}"[:300])
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, _bounded(request.path))
        return error_response(500, "Unhandled error")


@web.middleware
async def activity(request: web.Request, handler: Handler) -> web.StreamResponse:
    # Polling the status must not count as use, or an idle server would never be culled.
    if not request.path.endswith("/api/status"):
        request.app[ACTIVITY].last = time.time()
    return await handler(request)


async def status(request: web.Request) -> web.Response:
    app = request.app
    kernels = app[KERNELS]
    terminal = app[terminals_api.TERMINALS].last_activity() or 0.0
    last = max(app[ACTIVITY].last, kernels.last_activity() or 0.0, terminal)
    return reply(
        {
            "started": isoformat(app[ACTIVITY].started),
            "last_activity": isoformat(last),
            "connections": kernels.connections(),
            "kernels": len(kernels.kernels),
        }
    )


async def me(request: web.Request) -> web.Response:
    user = request.app[CONFIG].user
    identity = {
        "username": user,
        "name": user,
        "display_name": user,
        "initials": None,
        "avatar_url": None,
        "color": None,
    }
    return reply({"identity": identity, "permissions": {}})


async def lifecycle(app: web.Application) -> AsyncIterator[None]:
    app[KERNELS].start_culler()
    app[KERNELS].start_zygote()
    yield


async def stop_kernels(app: web.Application) -> None:
    """On shutdown: close every websocket, then shut every kernel down."""
    log.info("shutting down %d kernel(s)", len(app[KERNELS].kernels))
    await app[BRIDGE].close()
    await app[KERNELS].close()


def make_app(cfg: ServerConfig) -> web.Application:
    app = web.Application(
        middlewares=[secret_guard(cfg.secret), errors, activity], client_max_size=MAX_BODY
    )
    kernels = KernelManager(cfg.notebook_dir, cfg.kernel_idle_timeout, cfg.kernel_zygote)
    contents = ContentsManager(cfg.notebook_dir, cfg.shared_dirs)
    app[CONFIG] = cfg
    app[KERNELS] = kernels
    limits = Limits(cfg.ws_max_message, cfg.ws_max_json, cfg.ws_max_buffers)
    app[BRIDGE] = Bridge(kernels, limits)
    app[CONTENTS] = contents
    app[CHECKPOINTS] = Checkpoints(contents)
    app[ACTIVITY] = Activity()
    if cfg.proof:
        app.on_response_prepare.append(answer_back(cfg.proof))
    base = cfg.base_url
    app.router.add_get(base + "api/status", status)
    app.router.add_get(base + "api", api_version)
    app.router.add_get(base + "api/me", me)
    kernels_api.setup(app, base)
    terminals_api.setup(app, base)
    sessions.setup(app, base, kernels)
    contents_api.setup(app, base)
    files.setup(app, base)
    gitpull.setup(app, base)  # nbgitpuller's course links
    pages.setup(app, base)
    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(stop_kernels)
    return app


async def api_version(request: web.Request) -> web.Response:
    return reply({"version": "2.14.0"})
