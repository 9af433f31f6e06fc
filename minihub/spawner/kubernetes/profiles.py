"""Profiles: named choices of image and resources (KubeSpawner's profile_list), offered as a
form on the spawn page and accepted as `user_options` by the REST API, and the per-user
overrides an admin sets. Both resolve to one dict of [kubernetes] settings for one spawn.

A profile, as KubeSpawner's: display_name, slug (else made from display_name), description,
default, kubespawner_override, and profile_options (name -> display_name and choices, each
choice with display_name, default and kubespawner_override); minihub adds `users` and
`groups`, the user and hub group names the profile is offered to (everyone when absent).
What is not about pods is shared with the Slurm spawner (minihub.spawner.profiles).
"""

from __future__ import annotations

from typing import Any

from ...config import Config
from ..profiles import Profiles, from_form, slug_of, value_problem

__all__ = [
    "check_override", "check_profiles", "form_html", "from_form", "offered", "resolve",
    "slug_of", "value_problem",
]  # fmt: skip


def check_override(override: Any) -> str | None:
    """An override changes [kubernetes] settings of the pod, each by its own rules."""
    from .settings import BY_NAME, OVERRIDABLE  # late: settings imports this module's check

    if not isinstance(override, dict):
        return "must be a table"
    for name, value in override.items():
        if name not in OVERRIDABLE:
            return f"cannot set {name!r} (known: the [kubernetes] pod settings)"
        bad = value_problem(BY_NAME[name], value)
        if bad:
            return f"{name}: {bad}"
    return None


PROFILES = Profiles("kubernetes.profile_list", "kubespawner_override", check_override)


def check_profiles(profiles: list[Any]) -> str | None:
    """What is wrong with a profile_list, for a start-up error; None when it is sound."""
    return PROFILES.check(profiles)


def offered(cfg: Config, user: str, groups: list[str]) -> list[dict[str, Any]]:
    return PROFILES.offered(cfg, user, groups)


def resolve(
    cfg: Config, user: str, options: dict[str, Any], groups: list[str]
) -> tuple[dict[str, Any], str]:
    """The [kubernetes] settings for one spawn of `user` with `options` (user_options), and
    the chosen profile's slug ("" without profiles). SpawnError 400 for a choice that is
    not offered to this user."""
    settings = cfg.section("kubernetes")
    chosen = PROFILES.choose(cfg, user, options, groups)
    settings.update(chosen.override)
    settings.update(cfg.get("kubernetes.user_overrides").get(user, {}))
    return settings, chosen.slug


def form_html(cfg: Config, user: str, groups: list[str]) -> str:
    """Radio buttons per profile, a select per profile option; "" without profiles."""
    return PROFILES.form_html(cfg, user, groups)
