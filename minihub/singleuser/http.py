"""Shared bits of the user server's handlers: typed app state, JSON bodies and replies.

Errors leave handlers as minihub.errors exceptions; app.py renders them in jupyter_server's
shape, {"message": ..., "reason": ...}.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

from aiohttp import web

from ..errors import BadRequest
from ..kernels.channels import Bridge
from ..kernels.manager import KernelManager
from ..kernels.wire import DEFAULT_MAX_BUFFERS, DEFAULT_MAX_JSON, DEFAULT_MAX_MESSAGE
from . import strictjson
from .checkpoints import Checkpoints
from .contents import ContentsManager


@dataclass
class ServerConfig:
    """What the hub hands the server on stdin (see minihub.singleuser's launch contract)."""

    secret: str
    proof: str = ""  # answered back to the hub on every response (see minihub.proxy)
    base_url: str = "/"
    notebook_dir: str = "."
    user: str = ""
    listen_fd: int | None = None
    port: int = 0
    kernel_idle_timeout: int = 0
    mem_limit: int = 0
    shared_dirs: list[str] = field(default_factory=list)
    kernel_zygote: bool = True
    ws_max_message: int = DEFAULT_MAX_MESSAGE  # [spawner] kernel_ws_max_message
    ws_max_json: int = DEFAULT_MAX_JSON  # [spawner] kernel_ws_max_json
    ws_max_buffers: int = DEFAULT_MAX_BUFFERS  # [spawner] kernel_ws_max_buffers

    @classmethod
    def from_json(cls, line: str) -> ServerConfig:
        raw = json.loads(line)
        if not isinstance(raw, dict) or not isinstance(raw.get("secret"), str) or not raw["secret"]:
            raise ValueError("the launch config must be a JSON object with a non-empty secret")
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        cfg = cls(**known)
        cfg.base_url = "/" + cfg.base_url.strip("/") + "/" if cfg.base_url.strip("/") else "/"
        cfg.kernel_idle_timeout = int(cfg.kernel_idle_timeout or 0)
        cfg.mem_limit = int(cfg.mem_limit or 0)
        cfg.ws_max_message = int(cfg.ws_max_message)
        cfg.ws_max_json = int(cfg.ws_max_json)
        cfg.ws_max_buffers = int(cfg.ws_max_buffers)
        return cfg


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


def reply(data: Any, status: int = 200, location: str | None = None) -> web.Response:
    headers = {"Location": location} if location else None
    return web.json_response(data, status=status, headers=headers)


def api_url(request: web.Request, *parts: str) -> str:
    base = request.app[CONFIG].base_url
    return base + "/".join(quote(p.strip("/"), safe="/") for p in parts)
