"""The per-user notebook server: the Jupyter Server REST/websocket API, run as the user.

Launch contract with the hub (minihub.protocols builds the config, a spawner delivers it,
minihub.proxy talks to the server):
- Command: `<python> -m minihub.singleuser`, already running as the user, cwd = notebook dir.
- Launch config: a `ServerConfig` (below, the one definition both sides use) as one JSON
  line on stdin, then EOF; where a server has no stdin from the hub (a pod), the
  MINIHUB_LAUNCH_CONFIG variable holds that line (from a Secret), and the server takes it
  out of its environment at once. The secret is never put in the environment, so kernels and child
  processes do not inherit it.
- Every request must carry `X-Minihub-Secret: <secret>`, else 403. The hub's proxy adds it.
  With a proof in the launch config, every response to such a request carries
  `X-Minihub-Proof: <proof>`; the hub refuses answers without it (a process that took the
  port of a dead server does not have it) and strips it.
- Paths are served under base_url (e.g. /user/alice/), exactly as the browser sees them.
- Ready when GET {base_url}api/status answers 200.
- SIGTERM: shut every kernel down, then exit 0. Logs go to stderr (the hub keeps them in a
  file the user can read).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ..kernels.wire import DEFAULT_MAX_BUFFERS, DEFAULT_MAX_JSON, DEFAULT_MAX_MESSAGE

SECRET_HEADER = "X-Minihub-Secret"
CONFIG_ENV = "MINIHUB_LAUNCH_CONFIG"  # the launch config where a server has no stdin (a pod)
PROOF_HEADER = "X-Minihub-Proof"


@dataclass
class ServerConfig:
    """What the hub hands minihub's server at launch. Unknown keys are ignored, so a newer
    hub can add one before every server reads it."""

    secret: str
    proof: str = ""  # answered back to the hub on every response (see minihub.proxy)
    base_url: str = "/"
    notebook_dir: str = "."
    user: str = ""
    server_name: str = ""  # "" for the user's default server
    # An inherited, bound, listening TCP socket; None: bind `port` on `ip`.
    listen_fd: int | None = None
    port: int = 0
    ip: str = "127.0.0.1"
    certfile: str = ""  # serve https with this certificate (and keyfile) instead of http
    keyfile: str = ""
    kernel_idle_timeout: int = 0
    terminal_idle_timeout: int = 0  # [spawner] terminal_idle_timeout
    mem_limit: int = 0
    shared_dirs: list[str] = field(default_factory=list)  # where notebook-dir symlinks may lead
    kernel_zygote: bool = True  # fork python3 kernels from a pre-imported process
    kernel_zygote_fd: int = -1  # a zygote the hub forked for this server (kernels/template.py)
    ws_max_message: int = DEFAULT_MAX_MESSAGE  # [spawner] kernel_ws_max_message
    ws_max_json: int = DEFAULT_MAX_JSON  # [spawner] kernel_ws_max_json
    ws_max_buffers: int = DEFAULT_MAX_BUFFERS  # [spawner] kernel_ws_max_buffers
    # The log pump's rotation, set by local spawners: {"rotate_fd": N, "max_bytes": N}.
    log: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, line: str) -> ServerConfig:
        raw = json.loads(line)
        if not isinstance(raw, dict) or not isinstance(raw.get("secret"), str) or not raw["secret"]:
            raise ValueError("the launch config must be a JSON object with a non-empty secret")
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        cfg = cls(**known)
        cfg.base_url = "/" + cfg.base_url.strip("/") + "/" if cfg.base_url.strip("/") else "/"
        cfg.kernel_idle_timeout = int(cfg.kernel_idle_timeout or 0)
        cfg.terminal_idle_timeout = int(cfg.terminal_idle_timeout or 0)
        cfg.mem_limit = int(cfg.mem_limit or 0)
        cfg.ws_max_message = int(cfg.ws_max_message)
        cfg.ws_max_json = int(cfg.ws_max_json)
        cfg.ws_max_buffers = int(cfg.ws_max_buffers)
        return cfg
