"""A tiny service for tests/test_services_url.py, logging users in with JupyterHub's own
jupyterhub.services.auth.HubOAuth (started by the hub from [[services]] command).

/services/<name>/       HubOAuthenticated: who the user is, and which cookies arrived
/services/<name>/public no login: which cookies and headers arrived
/services/<name>/ws     a websocket echo
"""

from __future__ import annotations

import asyncio
import os
import secrets
from typing import Any
from urllib.parse import urlsplit

from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
from tornado import web, websocket


class WhoAmI(HubOAuthenticated, web.RequestHandler):  # type: ignore[misc]
    @web.authenticated
    def get(self) -> None:
        user: dict[str, Any] = self.get_current_user()
        self.write(
            {"user": user["name"], "cookies": sorted(self.request.cookies), "uri": self.request.uri}
        )


class Public(web.RequestHandler):
    def get(self) -> None:
        self.write(
            {
                "cookies": sorted(self.request.cookies),
                "uri": self.request.uri,
                "authorization": "Authorization" in self.request.headers,
            }
        )


class Echo(websocket.WebSocketHandler):
    def on_message(self, message: str | bytes) -> None:
        self.write_message(message, binary=isinstance(message, bytes))


async def main() -> None:
    prefix = os.environ["JUPYTERHUB_SERVICE_PREFIX"]
    app = web.Application(
        [
            (prefix, WhoAmI),
            (prefix + "oauth_callback", HubOAuthCallbackHandler),
            (prefix + "public", Public),
            (prefix + "ws", Echo),
        ],
        cookie_secret=secrets.token_bytes(32),
    )
    url = urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"])
    app.listen(url.port or 80, url.hostname or "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
