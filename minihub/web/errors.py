"""One place that turns errors into responses: JSON under the API, a page elsewhere.

Also the request log (one bounded, escaped line per request, with no secrets) and the
security headers every hub response carries.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..context import BASE_URL, IDENTITY, REQUEST_ID
from ..errors import HubError, SpawnError
from .render import render

log = logging.getLogger("minihub.web")
access = logging.getLogger("minihub.access")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_ids = itertools.count(1)
# nginx's status for "the client closed the connection before the answer": never sent, only
# logged, so an aborted request is neither a 500 nor a traceback.
CLIENT_GONE = 499


def wants_json(request: web.Request) -> bool:
    path = request.path
    base = request.config_dict[BASE_URL]
    if path.startswith(base + "hub/api") or "/api/" in path[len(base):]:
        return True
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


def error_response(request: web.Request, status: int, message: str,
                   headers: dict[str, str] | None = None, log_tail: str = "") -> web.Response:
    if wants_json(request):
        body: dict[str, object] = {"status": status, "message": message}
        if log_tail:
            body["log_tail"] = log_tail
        resp = web.json_response(body, status=status, headers=headers)
    else:
        resp = render(request, "error.html", {"status": status, "message": message,
                                              "log_tail": log_tail}, status=status)
        resp.headers.update(headers or {})
    return resp


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except HubError as e:
        tail = e.log_tail if isinstance(e, SpawnError) else ""
        return error_response(request, e.status, e.message, e.headers, tail)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        keep = {k: v for k, v in e.headers.items() if k in ("Allow", "Retry-After")}
        return error_response(request, e.status, e.text if e.text and e.text != f"{e.status}: "
                              f"{e.reason}" else e.reason or "Error", keep)
    except Exception as e:
        if isinstance(e, ConnectionError) and client_gone(request):
            # Re-raising would make aiohttp log "Error handling request" with a traceback;
            # this answer cannot be delivered, aiohttp drops it quietly, and the access log
            # line (499) is the one trace it leaves.
            return web.Response(status=CLIENT_GONE)
        log.exception("unhandled error in %s %s", request.method, clean(request.path))
        return error_response(request, 500, "Internal error: the hub logged the details.")


def client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


@web.middleware
async def log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = f"{next(_ids):x}"
    request[REQUEST_ID] = rid
    start = time.perf_counter()
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as e:
        status = e.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_GONE  # the hub is stopping, or aiohttp gave up on the client
        raise
    finally:
        ms = (time.perf_counter() - start) * 1000
        ident = request.get(IDENTITY)
        user = ident.name if ident is not None else "-"
        level = logging.WARNING if 500 <= status < CLIENT_GONE else logging.INFO
        access.log(level, "%d %s %s %.1fms user=%s rid=%s", status, request.method[:10],
                   clean(request.path), ms, clean(str(user)), rid, extra={"status": status})


class _ClientProtocolErrors(logging.Filter):
    """aiohttp logs a malformed request (a control byte in a header, a broken request line)
    at ERROR with a traceback: any client can write that into the hub's log at will. It is
    the client's mistake, answered 400 by aiohttp: one line at info is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "bad HTTP request from %s: %s", (peer, clean(str(exc)))
            record.exc_info, record.exc_text = None, None
        return True


def quiet_client_protocol_errors() -> None:
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _ClientProtocolErrors) for f in server.filters):
        server.addFilter(_ClientProtocolErrors())


def clean(text: str, limit: int = 200) -> str:
    """Bounded and escaped for a log line: no newlines, no control characters."""
    out = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return out if len(out) <= limit else out[:limit] + "…"
