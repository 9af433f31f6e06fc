"""Shared bits of the user server's handlers: typed app state, JSON bodies and replies.

Errors leave handlers as minihub.errors exceptions; app.py renders them in jupyter_server's
shape, {"message": ..., "reason": ...}.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

from aiohttp import web

from ..errors import BadRequest
from ..kernels.channels import Bridge
from ..kernels.manager import KernelManager
from . import ServerConfig, strictjson
from .checkpoints import Checkpoints
from .contents import ContentsManager


@dataclass
class Activity:
    started: float = field(default_factory=time.time)
    last: float = field(default_factory=time.time)


CONFIG = web.AppKey("config", ServerConfig)
KERNELS = web.AppKey("kernels", KernelManager)
BRIDGE = web.AppKey("bridge", Bridge)
CONTENTS = web.AppKey("contents", ContentsManager)
CHECKPOINTS = web.AppKey("checkpoints", Checkpoints)
ACTIVITY = web.AppKey("activity", Activity)

T = TypeVar("T")


async def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Filesystem work goes to a thread so a big file never blocks the loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def json_body(request: web.Request) -> dict[str, Any] | None:
    if not request.body_exists:
        return None
    raw = await request.read()
    if not raw.strip():
        return None
    try:
        # A big notebook takes a while to parse and check: not on the loop.
        body = strictjson.loads(raw) if len(raw) < 1 << 16 else await run(strictjson.loads, raw)
    except strictjson.JSONInputError as e:
        raise BadRequest(f"Invalid JSON in body of request: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object")
    return body


def text_field(body: dict[str, Any], key: str) -> str:
    """An optional string field of a body: "" when absent or null, 400 when not a string."""
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"{key} must be a string")
    return value


def reply(data: Any, status: int = 200, location: str | None = None) -> web.Response:
    headers = {"Location": location} if location else None
    return web.json_response(data, status=status, headers=headers)


def api_url(request: web.Request, *parts: str) -> str:
    base = request.app[CONFIG].base_url
    return base + "/".join(quote(p.strip("/"), safe="/") for p in parts)
