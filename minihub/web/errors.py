"""One place that turns errors into responses: JSON under the API, a page elsewhere.

Also what keeps the log clean of clients' input (bounded, escaped lines; aiohttp's tracebacks
for malformed requests as one line). The middlewares using these are in minihub.middlewares.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..context import BASE_URL
from .render import render

# nginx's status for "the client closed the connection before the answer": never sent, only
# logged, so an aborted request is neither a 500 nor a traceback.
CLIENT_GONE = 499


def wants_json(request: web.Request) -> bool:
    path = request.path
    base = request.config_dict[BASE_URL]
    if path.startswith(base + "hub/api") or "/api/" in path[len(base) :]:
        return True
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


def error_response(
    request: web.Request,
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    log_tail: str = "",
) -> web.Response:
    if wants_json(request):
        body: dict[str, object] = {"status": status, "message": message}
        if log_tail:
            body["log_tail"] = log_tail
        resp = web.json_response(body, status=status, headers=headers)
    else:
        resp = render(
            request,
            "error.html",
            {"status": status, "message": message, "log_tail": log_tail},
            status=status,
        )
        resp.headers.update(headers or {})
    return resp


def client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


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
