"""JupyterHub's JSON shapes for users, servers and tokens, built from the hub's state."""

from __future__ import annotations

from typing import Any

from .isotime import isoformat
from .servers import Server
from .store import Token, User


def iso(ts: float | None) -> str | None:
    """A stored time as JupyterHub shows it. A time no datetime can hold (a row written
    before expiry was bounded: 1e20, inf; NaN reads back as NULL) shows as None, "never",
    rather than failing the whole listing."""
    if not ts:
        return None
    try:
        return isoformat(ts)
    except (OverflowError, OSError, ValueError):
        return None


def server_model(base_url: str, user: User, srv: Server | None, name: str = "") -> dict[str, Any]:
    running = srv is not None and srv.status == "running"
    active = srv is not None and srv.status != "stopped"
    prefix = f"{base_url}user/{user.name}/" + (f"{name}/" if name else "")
    progress = f"{base_url}hub/api/users/{user.name}/" + (
        f"servers/{name}/progress" if name else "server/progress"
    )
    return {
        "name": name,
        "full_name": f"{user.name}/{name}",  # JupyterHub's, "" name included
        "ready": running,
        "stopped": not active,
        "pending": srv.pending if srv else None,
        "url": prefix,
        "progress_url": progress,
        "started": iso(srv.started) if srv and active else None,
        "last_activity": iso(srv.last_activity) if srv and active else None,
        "state": _public_state(srv.state) if running and srv else {},
        "user_options": dict(srv.user_options) if srv else {},
    }


def _public_state(state: dict[str, Any]) -> dict[str, Any]:
    """What admins see of the spawner's state (JupyterHub shows it): plain values only."""
    return {k: v for k, v in state.items() if isinstance(v, (str, int, float, bool))}


def user_model(
    base_url: str,
    user: User,
    servers: dict[str, Server],
    with_servers: bool = True,
    *,
    roles: list[str] | None = None,
    groups: list[str] | None = None,
) -> dict[str, Any]:
    """`servers`: the user's servers by name (Servers.of_user); `roles`, `groups`: theirs
    (minihub.access)."""
    roles = roles or ["user"]
    default = servers.get("")
    last = user.last_activity  # the latest of the user's and their active servers'
    for s in servers.values():
        if s.status != "stopped" and s.last_activity and not (last and last >= s.last_activity):
            last = s.last_activity
    model: dict[str, Any] = {
        "kind": "user",
        "name": user.name,
        "admin": "admin" in roles,
        "roles": roles,
        "groups": groups or [],
        "server": f"{base_url}user/{user.name}/"
        if default and default.status == "running"
        else None,
        "pending": default.pending if default else None,
        "created": iso(user.created),
        "last_activity": iso(last),
        "auth_state": None,
    }
    if with_servers:
        model["servers"] = {n: server_model(base_url, user, s, n) for n, s in servers.items()}
    return model


def token_model(
    user: User, tok: Token, held: list[str], secret: str | None = None
) -> dict[str, Any]:
    """JupyterHub's token model; `held`: what the token may do now (its scopes, or the
    "token" role's if it asked for none, capped by its owner's), as get_scopes_for."""
    model: dict[str, Any] = {
        "id": f"a{tok.id}",
        "kind": "api_token",
        "user": user.name,
        "note": tok.note,
        "scopes": held,
        "roles": [],
        "created": iso(tok.created),
        "expires_at": iso(tok.expires),
        "last_activity": iso(tok.last_activity),
        "oauth_client": "",
        "session_id": None,
    }
    if secret is not None:
        model["token"] = secret
    return model
