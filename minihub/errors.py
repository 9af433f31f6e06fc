"""Errors as values: a status and a message meant for a person.

Handlers raise these; `minihub.web.errors` renders them once, as JSON under the API and as a
page elsewhere. Anything else that escapes a handler becomes a 500 with no traceback.
"""

from __future__ import annotations


class StartupError(Exception):
    """A problem that stops start-up; printed as one line, no traceback."""


class HubError(Exception):
    status = 400

    def __init__(
        self, message: str, status: int | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.headers = headers or {}


class BadRequest(HubError):
    status = 400


class Forbidden(HubError):
    status = 403


class NotFound(HubError):
    status = 404


class Conflict(HubError):
    status = 409


class TooManyRequests(HubError):
    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, int(retry_after)))})
        self.retry_after = retry_after


class ServiceUnavailable(HubError):
    status = 503


class SpawnError(HubError):
    """A server failed to start; `message` is for the user, `log_tail` shows why.

    502 by default: the hub itself worked, the server it started (its upstream) did not; a
    refusal that is the request's fault says its own 4xx."""

    status = 502

    def __init__(self, message: str, log_tail: str = "", status: int = 502) -> None:
        super().__init__(message, status)
        self.log_tail = log_tail


class PortTaken(SpawnError):
    """The server's port was taken between its hand-out and its bind (by another process):
    the hub may start the server again on another."""
