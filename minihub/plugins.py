"""The registry of spawners and authenticators: Python entry points, minihub's own included.

minihub's built-ins (spawners "fork" and "local"; authenticators "pam", "native", "oauth")
are entry points of its own pyproject.toml in the groups below and are found exactly as a
third-party package's are, as JupyterHub finds its own in `jupyterhub.spawners`. A package
joins by declaring, in its pyproject.toml:

    [project.entry-points."minihub.spawners"]
    kube = "minihub_kube:KubeSpawner"

`[spawner] class = "kube"` then chooses it. Each class's `settings` (declared next to its
code) join the settings table in minihub.config, so a plugin's own section is validated,
offered as flags, written by --generate-config and documented like the hub's. How the
registry makes one: a spawner is `cls(cfg)`, an authenticator `cls(cfg, store)`.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

from .auth.base import Authenticator
from .errors import StartupError
from .spawner.base import Spawner

if TYPE_CHECKING:
    from .config import Config
    from .setting import Setting
    from .store import Store

log = logging.getLogger("minihub")


@dataclass(frozen=True)
class Group:
    """One kind of plugin: its entry-point group, the setting that chooses one, its base."""

    entry_points: str
    key: str  # e.g. "spawner.class"
    kind: str  # e.g. "spawner", for messages
    base: type  # what a registered class must subclass

    @property
    def label(self) -> str:
        section, _, name = self.key.rpartition(".")
        return f"[{section}] {name}"


SPAWNERS = Group("minihub.spawners", "spawner.class", "spawner", Spawner)
AUTHENTICATORS = Group(
    "minihub.authenticators", "auth.authenticator", "authenticator", Authenticator
)
GROUPS = (SPAWNERS, AUTHENTICATORS)


@functools.cache
def registered(group: Group) -> dict[str, EntryPoint]:
    """Name -> entry point, minihub's own first; a name registered twice keeps the first."""
    found: dict[str, EntryPoint] = {}
    for ep in sorted(entry_points(group=group.entry_points), key=_order):
        first = found.setdefault(ep.name, ep)
        if first.value != ep.value:
            log.warning(
                "%s %r is registered twice (%s and %s): %s counts",
                group.kind,
                ep.name,
                first.value,
                ep.value,
                first.value,
            )
    if not any(_builtin(ep) for ep in found.values()):
        raise StartupError(
            f"minihub's own {group.kind}s are not registered (entry points "
            f"{group.entry_points}): reinstall minihub (pip install -e . in a checkout)"
        )
    return found


def _builtin(ep: EntryPoint) -> bool:
    return ep.value.startswith("minihub.")


def _order(ep: EntryPoint) -> tuple[bool, str]:
    return (not _builtin(ep), ep.name)


def names(group: Group) -> list[str]:
    return list(registered(group))


def load(group: Group, name: str) -> type[Any]:
    """The class registered as `name`; StartupError saying why not (unknown, broken)."""
    ep = registered(group).get(name)
    if ep is None:
        raise StartupError(
            f"no {group.kind} named {name[:64]!r} is installed; installed: "
            f"{', '.join(names(group))} (entry points {group.entry_points})"
        )
    try:
        cls = ep.load()
    except Exception as e:  # noqa: BLE001 - a broken plugin is a start-up error, not a crash
        raise StartupError(
            f"{group.kind} {name!r} ({ep.value}) cannot be loaded: {type(e).__name__}: {e}"[:400]
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, group.base)):
        raise StartupError(
            f"{group.kind} {name!r} ({ep.value}) is not a subclass of "
            f"{group.base.__module__}.{group.base.__qualname__}"
        )
    return cls


def settings() -> list[Setting]:
    """Every registered class's own settings, minihub's classes first. A third-party plugin
    that does not load is left out with a warning (it stops start-up only when chosen);
    one of minihub's own is a broken installation and stops it at once."""
    out: list[Setting] = []
    for group in GROUPS:
        for name, ep in registered(group).items():
            try:
                out.extend(load(group, name).settings)
            except StartupError as e:
                if _builtin(ep):
                    raise
                log.warning("%s (its settings are unknown)", e)
    return out


def spawner_name(cfg: Config) -> str:
    """[spawner] class, where fork_server = false (the switch that came before it) turns the
    default "fork" into "local": the same servers, each exec'd instead of forked."""
    name = str(cfg.get("spawner.class"))
    return "local" if name == "fork" and not cfg.get("spawner.fork_server") else name


def make_spawner(cfg: Config) -> Spawner:
    name = spawner_name(cfg)
    if name != cfg.get("spawner.class"):
        log.info('[spawner] fork_server = false: servers start as with [spawner] class = "local"')
    cls: type[Spawner] = load(SPAWNERS, name)
    log.info("servers start with the %r spawner (%s)", name, registered(SPAWNERS)[name].value)
    return cls(cfg)  # type: ignore[call-arg]  # the registry's contract: cls(cfg)


def make_authenticator(cfg: Config, store: Store) -> Authenticator:
    name = str(cfg.get("auth.authenticator"))
    cls: type[Authenticator] = load(AUTHENTICATORS, name)
    log.debug(
        "logins go to the %r authenticator (%s)", name, registered(AUTHENTICATORS)[name].value
    )
    return cls(cfg, store)
