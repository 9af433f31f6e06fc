"""Typed keys for what the hub keeps on its aiohttp app and requests.

`Parts` only holds references to the hub's parts; behaviour lives in the parts themselves.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .access import Access
from .auth.base import Authenticator
from .auth.identity import Identities, Identity
from .auth.throttle import Throttle
from .config import Config
from .hubsettings import HubSettings
from .metrics import Metrics
from .proxy import Proxy
from .servers import Servers
from .store import Store


@dataclass
class Parts:
    cfg: Config
    store: Store
    key: bytes
    identities: Identities
    authenticator: Authenticator
    throttle: Throttle
    servers: Servers
    proxy: Proxy
    metrics: Metrics
    access: Access
    settings: HubSettings  # what admins change while the hub runs


PARTS: web.AppKey[Parts] = web.AppKey("parts", Parts)
BASE_URL: web.AppKey[str] = web.AppKey("base_url", str)
# set by `minihub` (serve.py): setting it stops the hub as SIGTERM does (the admin page's
# shutdown); absent when the app runs inside another program (tests)
SHUTDOWN: web.AppKey[asyncio.Event] = web.AppKey("shutdown", asyncio.Event)
IDENTITY: web.RequestKey[Any] = web.RequestKey("identity", object)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
PAGE_CONTEXT: web.RequestKey[dict[str, Any]] = web.RequestKey("page_context", dict)


def parts(request: web.Request) -> Parts:
    return request.config_dict[PARTS]


def identity(request: web.Request) -> Identity | None:
    ident: Identity | None = request.get(IDENTITY)
    return ident
