"""A hub service as configured: one [[services]] table of minihub.toml, checked at start-up.

Only the schema, so that minihub.config can validate it; minihub.services runs services and
minihub.service_proxy proxies /services/<name>/ to one with a `url`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from . import scopes
from .errors import HubError, StartupError
from .tables import check_keys, no_dupes

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
KEYS = {
    "name": str,
    "api_token": str,
    "scopes": list,
    "command": list,
    "environment": dict,
    "cwd": str,
    "url": str,
    "display": bool,
    "info": dict,
    "oauth_no_confirm": bool,
    "oauth_client_id": str,
    "oauth_redirect_uri": str,
    "oauth_client_allowed_scopes": list,
}
MIN_TOKEN = 16
CLIENT_PREFIX = "service-"  # JupyterHub requires it; minihub.services finds its clients by it


@dataclass
class Service:
    name: str
    scopes: list[str]
    api_token: str = field(default="", repr=False)
    command: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    cwd: str = ""
    url: str = ""  # http(s)://host:port the hub proxies /services/<name>/ to
    display: bool = True  # listed on the home page (for those who may access it)
    info: dict[str, Any] = field(default_factory=dict)
    oauth_no_confirm: bool = False  # no consent page at login (minihub.oauth2)
    oauth_client_id: str = ""
    oauth_redirect_uri: str = ""  # "" = {base_url}services/<name>/oauth_callback
    oauth_client_allowed_scopes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.oauth_client_id = self.oauth_client_id or CLIENT_PREFIX + self.name

    @property
    def managed(self) -> bool:
        """Started by the hub (a command); else external: already running somewhere."""
        return bool(self.command)

    @property
    def has_oauth(self) -> bool:
        """Gets an OAuth client, as JupyterHub's oauth_available: a url or a redirect URI."""
        return bool(self.url or self.oauth_redirect_uri)

    def prefix(self, base_url: str) -> str:
        return f"{base_url}services/{self.name}/"

    def redirect_uri(self, base_url: str) -> str:
        return self.oauth_redirect_uri or self.prefix(base_url) + "oauth_callback"

    def access_scope(self) -> str:
        return f"access:services!service={self.name}"


def validate(
    entries: list[dict[str, Any]], where: str, custom: dict[str, tuple[str, ...]] | None = None
) -> list[Service]:
    """[[services]] tables -> Services; a StartupError names the entry and key at fault.
    `custom`: the [custom_scopes] a service's scopes may name."""
    out: list[Service] = []
    for i, entry in enumerate(entries):
        label = f"{where}: [[services]] #{i + 1}"
        out.append(_one(entry, label, custom or {}))
    no_dupes([s.name for s in out], where, "services")
    return out


def _one(entry: dict[str, Any], label: str, custom: dict[str, tuple[str, ...]]) -> Service:
    check_keys(entry, KEYS, label)
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise StartupError(f"{label}: name must be 1-64 of a-z, 0-9, '_', '-', '.'")
    label = f"{label} ({name})"
    token = entry.get("api_token", "")
    if token and len(token) < MIN_TOKEN:
        raise StartupError(f"{label}: api_token must be at least {MIN_TOKEN} characters")
    for key in ("scopes", "command", "oauth_client_allowed_scopes"):
        if not all(isinstance(x, str) for x in entry.get(key, [])):
            raise StartupError(f"{label}: {key} must be a list of strings")
    env = entry.get("environment", {})
    if not all(isinstance(v, str) for v in env.values()):
        raise StartupError(f"{label}: environment values must be strings")
    wanted = _scopes(entry, "scopes", label, custom)
    url = _url(entry.get("url", ""), label)
    client_id = entry.get("oauth_client_id", "")
    if client_id and not client_id.startswith(CLIENT_PREFIX):
        raise StartupError(f"{label}: oauth_client_id must start with {CLIENT_PREFIX!r}")
    return Service(
        name,
        wanted,
        token,
        list(entry.get("command", [])),
        dict(env),
        entry.get("cwd", ""),
        url,
        entry.get("display", True),
        dict(entry.get("info", {})),
        entry.get("oauth_no_confirm", False),
        client_id,
        entry.get("oauth_redirect_uri", ""),
        _scopes(entry, "oauth_client_allowed_scopes", label, custom),
    )


def _scopes(
    entry: dict[str, Any], key: str, label: str, custom: dict[str, tuple[str, ...]]
) -> list[str]:
    try:
        return scopes.validate(entry.get(key, []), custom)
    except HubError as e:
        raise StartupError(f"{label}: {key}: {e.message}") from None


def _url(url: str, label: str) -> str:
    """http(s)://host:port[/], nothing else: the proxy keeps the request's own path."""
    if not url:
        return ""
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError:
        raise StartupError(f"{label}: url {url!r} is not a URL") from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise StartupError(f"{label}: url must be http://host:port or https://host:port")
    if u.username or u.password or u.query or u.fragment or u.path not in ("", "/"):
        raise StartupError(
            f"{label}: url must be only scheme, host and port (the proxy keeps the path "
            f"/services/<name>/...), not {url!r}"
        )
    default = 443 if u.scheme == "https" else 80
    host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
    return f"{u.scheme}://{host}:{port or default}"
