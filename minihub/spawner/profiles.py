"""Profiles, for any spawner that offers them: named choices of resources (KubeSpawner's
profile_list), shown as a form on the spawn page and accepted as `user_options` by the REST
API. A spawner says which setting holds the list and which key holds a profile's changes to
its settings (Kubernetes: kubespawner_override; Slurm: slurm_override), and checks those.

A profile: display_name, slug (else made from display_name), description, default, the
override, and profile_options (name -> display_name and choices, each choice with
display_name, default and the override); `users` and `groups` limit who is offered it
(everyone when neither is given).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..errors import SpawnError
from ..setting import Setting

_KEYS = {"display_name", "slug", "description", "default", "profile_options", "users", "groups"}


def slug_of(profile: dict[str, Any]) -> str:
    given = profile.get("slug")
    if isinstance(given, str) and given:
        return given
    return re.sub(r"[^a-z0-9]+", "-", str(profile.get("display_name", "")).lower()).strip("-")


def value_problem(setting: Setting, value: Any) -> str | None:
    """What is wrong with `value` for `setting` in an override (its type, then its check)."""
    types = setting.type if isinstance(setting.type, tuple) else (setting.type,)
    if isinstance(value, bool) != (bool in types) or not isinstance(value, types):
        return f"must be of type {' or '.join(t.__name__ for t in types)}, not {value!r}"[:200]
    return setting.check(value) if setting.check else None


@dataclass(frozen=True)
class Chosen:
    """One user's choice: the settings it changes, the profile's slug ("" without
    profiles), and the user_options keys it consumed."""

    override: dict[str, Any]
    slug: str
    keys: frozenset[str]


@dataclass(frozen=True)
class Profiles:
    setting: str  # "kubernetes.profile_list"
    override_key: str  # "kubespawner_override"
    check_override: Callable[[Any], str | None]  # what is wrong with an override, or None

    def check(self, profiles: list[Any]) -> str | None:
        """What is wrong with a profile list, for a start-up error; None when it is sound."""
        slugs: set[str] = set()
        for i, p in enumerate(profiles):
            where = f"profile {i + 1}"
            if not isinstance(p, dict) or not isinstance(p.get("display_name"), str):
                return f"{where}: needs a display_name"
            slug = slug_of(p)
            if not slug or slug in slugs:
                return f"{where}: slug {slug!r} is empty or used twice"
            slugs.add(slug)
            bad = self._check_profile(p)
            if bad:
                return f"{where} ({slug}): {bad}"
        return None

    def _check_profile(self, p: dict[str, Any]) -> str | None:
        unknown = set(p) - _KEYS - {self.override_key}
        if unknown:
            return f"unknown keys {sorted(unknown)}"
        for key in ("users", "groups"):  # a string would match by substring ("al" in "alice")
            names = p.get(key, [])
            if not isinstance(names, list) or not all(isinstance(u, str) for u in names):
                return f"{key} must be a list of names"
        bad = self.check_override(p.get(self.override_key, {}))
        if bad:
            return f"{self.override_key} {bad}"
        return self._check_options(p.get("profile_options", {}))

    def _check_options(self, options: Any) -> str | None:
        if not isinstance(options, dict):
            return "profile_options must be a table"
        for name, opt in options.items():
            choices = opt.get("choices") if isinstance(opt, dict) else None
            if not isinstance(choices, dict) or not choices:
                return f"profile option {name!r} needs choices"
            for key, choice in choices.items():
                if not isinstance(choice, dict):
                    return f"choice {name}.{key} must be a table"
                bad = self.check_override(choice.get(self.override_key, {}))
                if bad:
                    return f"choice {name}.{key}: {self.override_key} {bad}"
        return None

    def offered(self, cfg: Config, user: str, groups: list[str]) -> list[dict[str, Any]]:
        """The profiles `user` (in hub `groups`) may choose: those without `users` and
        `groups`, and those that name the user or one of their groups."""
        profiles: list[dict[str, Any]] = cfg.get(self.setting)
        return [p for p in profiles if _for(p, user, groups)]

    def choose(self, cfg: Config, user: str, options: dict[str, Any], groups: list[str]) -> Chosen:
        """What `user`'s options choose. SpawnError 400 for a profile or choice that is not
        offered to this user, 403 when profiles exist but none is offered to them."""
        profiles = self.offered(cfg, user, groups)
        if not profiles:
            if cfg.get(self.setting):
                raise SpawnError(
                    "No server profile is offered to you on this hub: ask an admin.", "", 403
                )
            return Chosen({}, "", frozenset())
        profile = _pick(profiles, options.get("profile"))
        slug = slug_of(profile)
        override = dict(profile.get(self.override_key, {}))
        for name, opt in profile.get("profile_options", {}).items():
            override.update(_option(slug, name, opt, options).get(self.override_key, {}))
        return Chosen(override, slug, frozenset({"profile", *profile.get("profile_options", {})}))

    # -- the spawn page's form (JupyterHub's options_form / options_from_form) ---------------
    def form_html(
        self,
        cfg: Config,
        user: str,
        groups: list[str],
        summary: Callable[[dict[str, Any]], str] = lambda p: "",
    ) -> str:
        """Radio buttons per profile (with `summary(override)` under each, e.g. its limits),
        a select per profile option; "" without profiles."""
        profiles = self.offered(cfg, user, groups)
        if not profiles:
            return ""
        default = slug_of(next((p for p in profiles if p.get("default")), profiles[0]))
        return "\n".join(
            _profile_html(p, slug_of(p) == default, summary(p.get(self.override_key, {})))
            for p in profiles
        )


def _for(profile: dict[str, Any], user: str, groups: list[str]) -> bool:
    if "users" not in profile and "groups" not in profile:
        return True
    return user in profile.get("users", []) or bool(set(groups) & set(profile.get("groups", [])))


def _pick(profiles: list[dict[str, Any]], wanted: Any) -> dict[str, Any]:
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
    if not isinstance(wanted, str) or wanted not in choices:
        raise SpawnError(
            f"Unknown choice {str(wanted)[:64]!r} for {name!r} of profile {slug!r}; "
            f"choose one of: {', '.join(choices)}.",
            "",
            400,
        )
    return choices[wanted]


def _profile_html(p: dict[str, Any], checked: bool, summary: str) -> str:
    slug = html.escape(slug_of(p))
    opts = "".join(
        _select_html(slug, name, opt) for name, opt in p.get("profile_options", {}).items()
    )
    limits = f' <span class="profile-limits">{html.escape(summary)}</span>' if summary else ""
    return (
        f'<label class="profile"><input type="radio" name="profile" value="{slug}"'
        f"{' checked' if checked else ''}> <b>{html.escape(p['display_name'])}</b>"
        f" <span>{html.escape(str(p.get('description', '')))}</span>{limits}</label>{opts}"
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
