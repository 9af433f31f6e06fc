"""Profiles: named choices of image and resources (KubeSpawner's profile_list), offered as a
form on the spawn page and accepted as `user_options` by the REST API, and the per-user
overrides an admin sets. Both resolve to one dict of [kubernetes] settings for one spawn.

A profile, as KubeSpawner's: display_name, slug (else made from display_name), description,
default, kubespawner_override, and profile_options (name -> display_name and choices, each
choice with display_name, default and kubespawner_override); minihub adds `users`, a list of
user names the profile is offered to (everyone when absent).
"""

from __future__ import annotations

import html
import re
from typing import Any

from ...config import Config
from ...errors import SpawnError
from ...setting import Setting


def slug_of(profile: dict[str, Any]) -> str:
    given = profile.get("slug")
    if isinstance(given, str) and given:
        return given
    return re.sub(r"[^a-z0-9]+", "-", str(profile.get("display_name", "")).lower()).strip("-")


def check_profiles(profiles: list[Any]) -> str | None:
    """What is wrong with a profile_list, for a start-up error; None when it is sound."""
    slugs: set[str] = set()
    for i, p in enumerate(profiles):
        where = f"profile {i + 1}"
        if not isinstance(p, dict) or not isinstance(p.get("display_name"), str):
            return f"{where}: needs a display_name"
        slug = slug_of(p)
        if not slug or slug in slugs:
            return f"{where}: slug {slug!r} is empty or used twice"
        slugs.add(slug)
        unknown = set(p) - {
            "display_name",
            "slug",
            "description",
            "default",
            "kubespawner_override",
            "profile_options",
            "users",
            "groups",
        }
        if unknown:
            return f"{where} ({slug}): unknown keys {sorted(unknown)}"
        for key in ("users", "groups"):  # a string would match by substring ("al" in "alice")
            names = p.get(key, [])
            if not isinstance(names, list) or not all(isinstance(u, str) for u in names):
                return f"{where} ({slug}): {key} must be a list of names"
        bad = check_override(p.get("kubespawner_override", {}))
        if bad:
            return f"{where} ({slug}): kubespawner_override {bad}"
        bad = _check_options(p.get("profile_options", {}))
        if bad:
            return f"{where} ({slug}): {bad}"
    return None


def _check_options(options: Any) -> str | None:
    if not isinstance(options, dict):
        return "profile_options must be a table"
    for name, opt in options.items():
        choices = opt.get("choices") if isinstance(opt, dict) else None
        if not isinstance(choices, dict) or not choices:
            return f"profile option {name!r} needs choices"
        for key, choice in choices.items():
            if not isinstance(choice, dict):
                return f"choice {name}.{key} must be a table"
            bad = check_override(choice.get("kubespawner_override", {}))
            if bad:
                return f"choice {name}.{key}: kubespawner_override {bad}"
    return None


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


def value_problem(setting: Setting, value: Any) -> str | None:
    types = setting.type if isinstance(setting.type, tuple) else (setting.type,)
    if isinstance(value, bool) != (bool in types) or not isinstance(value, types):
        return f"must be of type {' or '.join(t.__name__ for t in types)}, not {value!r}"[:200]
    return setting.check(value) if setting.check else None


def offered(cfg: Config, user: str, groups: list[str]) -> list[dict[str, Any]]:
    """The profiles `user` (in hub `groups`) may choose: those without `users` and
    `groups`, and those that name the user or one of their groups."""
    profiles: list[dict[str, Any]] = cfg.get("kubernetes.profile_list")
    return [p for p in profiles if _for(p, user, groups)]


def _for(profile: dict[str, Any], user: str, groups: list[str]) -> bool:
    if "users" not in profile and "groups" not in profile:
        return True
    return user in profile.get("users", []) or bool(set(groups) & set(profile.get("groups", [])))


def resolve(
    cfg: Config, user: str, options: dict[str, Any], groups: list[str]
) -> tuple[dict[str, Any], str]:
    """The [kubernetes] settings for one spawn of `user` with `options` (user_options), and
    the chosen profile's slug ("" without profiles). SpawnError 400 for a choice that is
    not offered to this user."""
    settings = cfg.section("kubernetes")
    profiles = offered(cfg, user, groups)
    slug = ""
    if profiles:
        profile = _choose(profiles, options.get("profile"))
        slug = slug_of(profile)
        settings.update(profile.get("kubespawner_override", {}))
        for name, opt in profile.get("profile_options", {}).items():
            settings.update(_option(slug, name, opt, options).get("kubespawner_override", {}))
    elif cfg.get("kubernetes.profile_list"):
        raise SpawnError("No server profile is offered to you on this hub: ask an admin.", "", 403)
    settings.update(cfg.get("kubernetes.user_overrides").get(user, {}))
    return settings, slug


def _choose(profiles: list[dict[str, Any]], wanted: Any) -> dict[str, Any]:
    if wanted in (None, ""):
        return next((p for p in profiles if p.get("default")), profiles[0])
    for p in profiles:
        if slug_of(p) == wanted:
            return p
    names = ", ".join(slug_of(p) for p in profiles)
    raise SpawnError(f"Unknown profile {str(wanted)[:64]!r}; choose one of: {names}.", "", 400)


def _option(slug: str, name: str, opt: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    choices: dict[str, dict[str, Any]] = opt["choices"]
    wanted = options.get(name)
    if wanted in (None, ""):
        return next((c for c in choices.values() if c.get("default")), next(iter(choices.values())))
    if wanted not in choices:
        raise SpawnError(
            f"Unknown choice {str(wanted)[:64]!r} for {name!r} of profile {slug!r}; "
            f"choose one of: {', '.join(choices)}.",
            "",
            400,
        )
    return choices[wanted]


# -- the spawn page's form (JupyterHub's options_form / options_from_form) -------------------


def form_html(cfg: Config, user: str, groups: list[str]) -> str:
    """Radio buttons per profile, a select per profile option; "" without profiles."""
    profiles = offered(cfg, user, groups)
    if not profiles:
        return ""
    default = slug_of(next((p for p in profiles if p.get("default")), profiles[0]))
    return "\n".join(_profile_html(p, slug_of(p) == default) for p in profiles)


def _profile_html(p: dict[str, Any], checked: bool) -> str:
    slug = html.escape(slug_of(p))
    opts = "".join(
        _select_html(slug, name, opt) for name, opt in p.get("profile_options", {}).items()
    )
    return (
        f'<label class="profile"><input type="radio" name="profile" value="{slug}"'
        f"{' checked' if checked else ''}> <b>{html.escape(p['display_name'])}</b>"
        f" <span>{html.escape(str(p.get('description', '')))}</span></label>{opts}"
    )


def _select_html(slug: str, name: str, opt: dict[str, Any]) -> str:
    field = html.escape(f"profile-option-{slug}--{name}")
    items = "".join(
        f'<option value="{html.escape(k)}"{" selected" if c.get("default") else ""}>'
        f"{html.escape(str(c.get('display_name', k)))}</option>"
        for k, c in opt["choices"].items()
    )
    label = html.escape(str(opt.get("display_name", name)))
    return f'<label class="profile-option">{label} <select name="{field}">{items}</select></label>'


def from_form(form: dict[str, str]) -> dict[str, Any]:
    """user_options from the form: {"profile": slug, option: choice, ...} as KubeSpawner's."""
    slug = form.get("profile", "")
    out: dict[str, Any] = {"profile": slug} if slug else {}
    prefix = f"profile-option-{slug}--"
    for key, value in form.items():
        if slug and key.startswith(prefix):
            out[key[len(prefix) :]] = value
    return out
