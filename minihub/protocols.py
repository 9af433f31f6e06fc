"""The two kinds of user server the hub can run, and everything that differs between them.

`minihub` is minihub's own server (minihub.singleuser): its launch config holds its secret
and proof, it answers its status to the secret, reports its activity when asked, and the hub
checks XSRF for it. `jupyterhub-singleuser` is JupyterHub's, launched as JupyterHub's
LocalProcessSpawner does: the JUPYTERHUB_* environment with an API token that is also the
secret of its OAuth client, readiness when `{prefix}api` answers below 500, activity posted
to the hub, and its own cookie and XSRF checks. `[spawner] server` names one; nothing else
in the hub asks which.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import quote

from .access.roles import SERVER_SCOPES
from .auth import secrets as S
from .auth.identity import HUB_COOKIES, SESSION_COOKIE
from .config import Config
from .kernels.zygote import USER_ENV_VAR
from .singleuser import PROOF_HEADER, ServerConfig
from .store import Store, User

log = logging.getLogger("minihub.servers")


@dataclass
class Prepared:
    """What a protocol gives a server beyond its command: environment and launch config."""

    env: dict[str, str]
    config: dict[str, object]


class ServerProtocol:
    name: ClassVar[str] = ""
    ready_path: ClassVar[str] = "api/status"  # under the server's prefix
    answers_back: ClassVar[bool] = True  # sends the proof (see minihub.proxy.Upstream)
    reports_activity: ClassVar[bool] = True  # the hub asks it (GET api/status)
    # The hub's cookies that never reach the server, and whether an owner's API token in
    # Authorization does (a server that checks tokens with the hub itself needs it).
    strip_cookies: ClassVar[tuple[str, ...]] = HUB_COOKIES
    forwards_owner_token: ClassVar[bool] = False
    checks_own_xsrf: ClassVar[bool] = False  # True: the hub leaves /user/ XSRF to it

    def __init__(self, cfg: Config, store: Store) -> None:
        self.cfg, self.store = cfg, store
        # The scopes of the "server" role ([[roles]] may redefine it), set by the app
        self.server_role: list[str] = list(SERVER_SCOPES)

    def default_cmd(self) -> list[str]:
        return [server_python(self.cfg), "-m", "minihub.singleuser"]

    def cmd(self) -> list[str]:
        return list(self.cfg.get("spawner.cmd")) or self.default_cmd()

    def ready(self, status: int, headers: dict[str, str] | object, proof: str) -> bool:
        got = getattr(headers, "get", lambda *_: "")(PROOF_HEADER, "")
        return status == 200 and S.equal(str(got or ""), proof)

    def landing_path(self) -> str:
        """Where under the server's prefix the hub sends a browser."""
        return str(self.cfg.get("spawner.default_url"))

    async def prepare(
        self, user: User, server_name: str, prefix: str, secret: str, proof: str
    ) -> Prepared:
        sp = self.cfg.section("spawner")
        config = ServerConfig(
            secret=secret,
            proof=proof,
            base_url=prefix,
            user=user.name,
            server_name=server_name,
            kernel_idle_timeout=int(sp["kernel_idle_timeout"]),
            terminal_idle_timeout=int(sp["terminal_idle_timeout"]),
            kernel_zygote=bool(sp["kernel_fork"]),
            ws_max_message=int(sp["kernel_ws_max_message"]),
            ws_max_json=int(sp["kernel_ws_max_json"]),
            ws_max_buffers=int(sp["kernel_ws_max_buffers"]),
        )
        env = {**base_env(self.cfg), "MINIHUB_USER": user.name, "MINIHUB_BASE_URL": prefix}
        env.update(self.user_env_vars(env["PATH"]))
        # ipykernel's debugger (debugpy) otherwise prints "Debugger warning: ... frozen
        # modules" into the student's first cell output; [spawner] environment may undo it
        env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
        return Prepared({**env, **sp["environment"]}, config.to_dict())

    def user_env_vars(self, path: str) -> dict[str, str]:
        """minihub's server runs kernels in the user environment; its bin/ (python, pip)
        leads PATH for kernels and terminals too (docs/environments.md)."""
        env = str(self.cfg.get("spawner.user_env"))
        if not env:
            return {}
        return {USER_ENV_VAR: env, "PATH": f"{os.path.join(env, 'bin')}:{path}"}

    async def forget(self, user: User, server_name: str) -> None:
        """The server stopped: revoke what prepare() handed out."""


class MinihubServer(ServerProtocol):
    name = "minihub"


class JupyterhubSingleuser(ServerProtocol):
    name = "jupyterhub-singleuser"
    ready_path = "api"
    answers_back = False
    reports_activity = False  # it posts its activity to the hub itself
    strip_cookies = (SESSION_COOKIE,)  # the hub's _xsrf passes: it ignores cookies it did not sign
    forwards_owner_token = True
    checks_own_xsrf = True

    def default_cmd(self) -> list[str]:
        return ["jupyterhub-singleuser"]

    def user_env_vars(self, path: str) -> dict[str, str]:
        return {}  # its kernels are jupyter_server's business

    def ready(self, status: int, headers: dict[str, str] | object, proof: str) -> bool:
        return status < 500

    def landing_path(self) -> str:
        return jupyterhub_landing(self.cfg)

    async def prepare(
        self, user: User, server_name: str, prefix: str, secret: str, proof: str
    ) -> Prepared:
        client = await register_server(self.store, user, server_name, prefix, self.server_role)
        env = server_env(self.cfg, user, server_name, prefix, client)
        return Prepared({**base_env(self.cfg), **env, **self.cfg.get("spawner.environment")}, {})

    async def forget(self, user: User, server_name: str) -> None:
        for cid in client_ids(user.name, server_name):
            await self.store.delete_server_tokens(user.id, cid, not server_name)


PROTOCOLS: dict[str, type[ServerProtocol]] = {
    p.name: p for p in (MinihubServer, JupyterhubSingleuser)
}


def choose(cfg: Config, store: Store) -> ServerProtocol:
    """The protocol [spawner] server names; a configuration from before that setting, whose
    cmd runs jupyterhub-singleuser, keeps working (and the log says what to set)."""
    name = name_of(cfg)
    if name != cfg.get("spawner.server"):
        log.warning(
            "[spawner] cmd runs jupyterhub-singleuser: launching it as [spawner] "
            'server = "jupyterhub-singleuser" (set that to silence this line)'
        )
    return PROTOCOLS[name](cfg, store)


def name_of(cfg: Config) -> str:
    name = str(cfg.get("spawner.server"))
    cmd = list(cfg.get("spawner.cmd"))
    if name == "minihub" and cmd and _runs_jupyterhub_singleuser(cmd):
        return "jupyterhub-singleuser"
    return name


def _runs_jupyterhub_singleuser(cmd: list[str]) -> bool:
    return any(
        os.path.basename(a) == "jupyterhub-singleuser" or a == "jupyterhub.singleuser" for a in cmd
    )


def jupyterhub_landing(cfg: Config) -> str:
    """minihub's own default URL (/tree/) is a 404 on jupyterhub-singleuser with JupyterLab;
    its root goes to its own default."""
    url = str(cfg.get("spawner.default_url"))
    return "/" if url == "/tree/" else url


def server_python(cfg: Config) -> str:
    return str(cfg.get("spawner.python") or sys.executable)


def base_env(cfg: Config) -> dict[str, str]:
    python = server_python(cfg)
    return {
        "PATH": f"{os.path.dirname(python)}:/usr/local/bin:/usr/bin:/bin",
        "LANG": os.environ.get("LANG", "C.UTF-8"),
    }


# --- jupyterhub-singleuser's launch: its OAuth client, API token and environment ------------


@dataclass(frozen=True)
class ServerClient:
    """What a jupyterhub-singleuser server is told at launch."""

    client_id: str
    api_token: str
    redirect_uri: str
    access_scopes: list[str]


def client_id(user: str, server_name: str) -> str:
    """JupyterHub's names: jupyterhub-user-<name>, and -<server> for a named server."""
    return f"jupyterhub-user-{user}" + (f"-{server_name}" if server_name else "")


def client_ids(user: str, server_name: str) -> tuple[str, str]:
    """JupyterHub's name, and the one used when another user's server holds it: alice's
    "lab" and alice-lab's default server are both jupyterhub-user-alice-lab there."""
    plain = client_id(user, server_name)
    digest = hashlib.sha256(f"{user}/{server_name}".encode()).hexdigest()[:10]
    return plain, f"{plain}-{digest}"


async def server_client_id(store: Store, user: User, server_name: str) -> str:
    plain, own = client_ids(user.name, server_name)
    holder = await store.get_oauth_client(plain)
    return own if holder is not None and holder.user_id not in (None, user.id) else plain


def access_scopes(user: str, server_name: str) -> list[str]:
    return [f"access:servers!server={user}/{server_name}", f"access:servers!user={user}"]


def server_token_scopes(role: list[str] | tuple[str, ...], user: str, server: str) -> list[str]:
    """The server role's scopes for one server's token, as JupyterHub's User.spawn: "!server"
    and "!user" resolved to it, users:activity!user added if missing (activity needs it)."""
    fill = {"!server": f"!server={user}/{server}", "!user": f"!user={user}"}
    out = [next((s[: -len(k)] + v for k, v in fill.items() if s.endswith(k)), s) for s in role]
    if not {"users:activity", f"users:activity!user={user}", "inherit"} & set(out):
        log.warning('the [[roles]] "server" lacks users:activity!user: added (activity needs it)')
        out.append(f"users:activity!user={user}")
    return list(dict.fromkeys(out))


async def register_server(
    store: Store,
    user: User,
    server_name: str,
    prefix: str,
    role: list[str] | tuple[str, ...] = SERVER_SCOPES,
) -> ServerClient:
    """A fresh API token for this server of `user` (only its hash is kept) and its OAuth
    client. The token holds the "server" `role`'s scopes (by default: post activity, reach
    this server); it is also the client secret for the code exchange."""
    token = S.new_token()
    cid = await server_client_id(store, user, server_name)
    for old in client_ids(user.name, server_name):
        await store.delete_server_tokens(user.id, old, not server_name)
    scopes = access_scopes(user.name, server_name)
    await store.add_kind_token(
        user.id,
        S.hash_token(token),
        token[: S.PREFIX_LEN],
        f"Server at {prefix}",
        server_token_scopes(role, user.name, server_name),
        "server",
        cid,
    )
    client = ServerClient(cid, token, prefix + "oauth_callback", scopes)
    await store.save_oauth_client(
        cid,
        S.hash_token(token),
        client.redirect_uri,
        f"Server at {prefix}",
        user.id,
        # A token made for this server reaches this server, not the owner's others: the
        # server accepts !user too (a visitor's own token), but its client asks only !server.
        ["identify", scopes[0]],
    )
    return client


def hub_api_url(cfg: Config) -> str:
    """Where a server reaches the hub's API: [hub] connect_url, else the hub's own address."""
    connect = str(cfg.get("hub.connect_url")).rstrip("/")
    if connect:
        return f"{connect}{cfg.base_url}hub/api"
    if cfg.tls and cfg.get("hub.public_url"):
        # The certificate names the public host, so a TLS hub is reached by that name.
        return str(cfg.get("hub.public_url")).rstrip("/") + "/hub/api"
    ip = str(cfg.get("hub.ip"))
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(ip, ip)
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    scheme = "https" if cfg.tls else "http"
    return f"{scheme}://{host}:{cfg.get('hub.port')}{cfg.base_url}hub/api"


def server_env(
    cfg: Config, user: User, server_name: str, prefix: str, client: ServerClient
) -> dict[str, str]:
    """The environment JupyterHub's Spawner.get_env gives jupyterhub-singleuser (the
    spawner adds JUPYTERHUB_SERVICE_URL once it knows where the server listens)."""
    api = hub_api_url(cfg)
    public = str(cfg.get("hub.public_url")).rstrip("/")
    activity = f"{api}/users/{quote(user.name)}/activity"
    env = {
        "JUPYTERHUB_API_TOKEN": client.api_token,
        "JPY_API_TOKEN": client.api_token,
        "JUPYTERHUB_CLIENT_ID": client.client_id,
        "JUPYTERHUB_COOKIE_HOST_PREFIX_ENABLED": "0",
        "JUPYTERHUB_HOST": public,
        "JUPYTERHUB_OAUTH_CALLBACK_URL": client.redirect_uri,
        "JUPYTERHUB_OAUTH_SCOPES": json.dumps(client.access_scopes),
        "JUPYTERHUB_OAUTH_ACCESS_SCOPES": json.dumps(client.access_scopes),
        "JUPYTERHUB_OAUTH_CLIENT_ALLOWED_SCOPES": json.dumps([]),
        "JUPYTERHUB_USER": user.name,
        "JUPYTERHUB_SERVER_NAME": server_name,
        "JUPYTERHUB_API_URL": api,
        "JUPYTERHUB_ACTIVITY_URL": activity,
        "JUPYTERHUB_BASE_URL": cfg.base_url,
        "JUPYTERHUB_SERVICE_PREFIX": prefix,
        "JUPYTERHUB_PUBLIC_URL": f"{public}{prefix}" if public else "",
        "JUPYTERHUB_PUBLIC_HUB_URL": f"{public}{cfg.base_url}hub/" if public else "",
    }
    if cfg.get("hub.admin_access"):
        env["JUPYTERHUB_ADMIN_ACCESS"] = "1"
    landing = jupyterhub_landing(cfg)
    if landing != "/":
        env["JUPYTERHUB_DEFAULT_URL"] = landing
    return env
